/* runtime/backend_cpu_stream.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
