/* memory.c: device memory accounting and the host buffer pool. */
#include "memory.h"

#include <stdlib.h>
#include <string.h>

struct rt_allocation {
    void *ptr;
    size_t bytes;
    struct rt_allocation *next;
};

void rt_device_memory_init(rt_device_memory *mem, const rt_backend *backend, size_t limit) {
    memset(mem, 0, sizeof *mem);
    mem->backend = backend;
    mem->limit = limit;
    /* What the backend reserved when it opened (the cuBLAS workspace) is part of the footprint. */
    mem->in_use = mem->peak = backend->reserved_bytes;
}

void rt_device_memory_destroy(rt_device_memory *mem) {
    struct rt_allocation *a = mem->live;
    while (a) {
        struct rt_allocation *next = a->next;
        rt_be_device_free(mem->backend, a->ptr);
        free(a);
        a = next;
    }
    mem->live = NULL;
    mem->in_use = mem->backend->reserved_bytes;
    mem->n_live = 0;
}

void *rt_device_alloc(rt_device_memory *mem, size_t bytes, const char *what, rt_error *err) {
    char asked[32], used[32], limit[32];
    if (mem->limit && (bytes > mem->limit || mem->in_use > mem->limit - bytes)) {
        rt_fail(err,
                "device memory limit exceeded: allocating %s for %s with %s already in use "
                "(device.memory_limit = %s); lower train.batch_size or train.seq_len, or raise the limit",
                rt_format_bytes(bytes, asked), what, rt_format_bytes(mem->in_use, used),
                rt_format_bytes(mem->limit, limit));
        return NULL;
    }
    void *ptr = rt_be_device_alloc(mem->backend, bytes ? bytes : 1);
    if (!ptr) {
        rt_fail(err, "the device has no memory left allocating %s for %s (%s in use)", rt_format_bytes(bytes, asked),
                what, rt_format_bytes(mem->in_use, used));
        return NULL;
    }
    rt_be_memset_zero(mem->backend, ptr, bytes);
    struct rt_allocation *a = malloc_check(sizeof *a);
    a->ptr = ptr;
    a->bytes = bytes;
    a->next = mem->live;
    mem->live = a;
    mem->in_use += bytes;
    mem->n_live++;
    if (mem->in_use > mem->peak) mem->peak = mem->in_use;
    return ptr;
}

void *rt_device_alloc_or_die(rt_device_memory *mem, size_t bytes, const char *what) {
    rt_error err;
    void *ptr = rt_device_alloc(mem, bytes, what, &err);
    if (!ptr) rt_fatal("%s", err.msg);
    return ptr;
}

void rt_device_free(rt_device_memory *mem, void *ptr) {
    if (!ptr) return;
    for (struct rt_allocation **link = &mem->live; *link; link = &(*link)->next) {
        struct rt_allocation *a = *link;
        if (a->ptr != ptr) continue;
        *link = a->next;
        mem->in_use -= a->bytes;
        mem->n_live--;
        rt_be_device_free(mem->backend, ptr);
        free(a);
        return;
    }
    rt_fatal("rt_device_free: %p was not allocated by this arena", ptr);
}

void rt_device_memory_reset_peak(rt_device_memory *mem) { mem->peak = mem->in_use; }

void rt_host_pool_init(rt_host_pool *pool, int n_slots, size_t slot_bytes) {
    memset(pool, 0, sizeof *pool);
    pool->n_slots = n_slots;
    pool->slot_bytes = slot_bytes;
    pool->total_bytes = (size_t)n_slots * slot_bytes;
    pool->base = malloc_check(pool->total_bytes);
    pool->in_use = calloc_check((size_t)n_slots, sizeof *pool->in_use);
}

void rt_host_pool_destroy(rt_host_pool *pool) {
    free(pool->base);
    free(pool->in_use);
    memset(pool, 0, sizeof *pool);
}

int rt_host_pool_acquire(rt_host_pool *pool) {
    for (int slot = 0; slot < pool->n_slots; slot++) {
        if (!pool->in_use[slot]) {
            pool->in_use[slot] = 1;
            return slot;
        }
    }
    return -1;
}

void *rt_host_pool_slot(rt_host_pool *pool, int slot) { return pool->base + (size_t)slot * pool->slot_bytes; }

void rt_host_pool_release(rt_host_pool *pool, int slot) { pool->in_use[slot] = 0; }
