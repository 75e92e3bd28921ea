/* runtime/model_io.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
