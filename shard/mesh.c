/* shard/mesh.c: PLACEHOLDER */
typedef int rt_placeholder_unit;
