/* runtime/sample.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
