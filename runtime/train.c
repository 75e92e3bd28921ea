/* runtime/train.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
