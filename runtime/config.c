/* runtime/config.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
