/* runtime/model_layers.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
