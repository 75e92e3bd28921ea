/* shard/dtensor.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
