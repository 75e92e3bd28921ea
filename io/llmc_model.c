/* io/llmc_model.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
