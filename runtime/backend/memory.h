/* memory.h: the accounted device memory arena (peak, limit) and a reusable host buffer pool. */
#ifndef RT_MEMORY_H
#define RT_MEMORY_H

#include <stddef.h>

#include "backend.h"
#include "runtime/core/common.h"

/*
 * Every device allocation of a run goes through one rt_device_memory, so its
 * peak is the run's peak device footprint: that is how offloading and
 * sharding prove what they save. An allocation that would pass the limit is
 * refused with an error naming what it was for, how much was asked and how
 * much is in use. Allocations are few and long-lived (parameters, gradients,
 * activation buffers sized once per run), so each one is a plain
 * device_alloc recorded in a small table; no suballocator is needed yet.
 */
typedef struct {
    const rt_backend *backend;
    size_t limit; /* bytes; 0 = unlimited */
    size_t in_use;
    size_t peak;
    size_t n_live;
    struct rt_allocation *live; /* singly linked list of live allocations */
} rt_device_memory;

void rt_device_memory_init(rt_device_memory *mem, const rt_backend *backend, size_t limit);
/* Frees everything still allocated. */
void rt_device_memory_destroy(rt_device_memory *mem);
/* Zeroed memory, or NULL with err set ("device memory limit ... for 'what' ..."). */
void *rt_device_alloc(rt_device_memory *mem, size_t bytes, const char *what, rt_error *err);
/* As rt_device_alloc, but a refusal ends the job with that message. */
void *rt_device_alloc_or_die(rt_device_memory *mem, size_t bytes, const char *what);
void rt_device_free(rt_device_memory *mem, void *ptr);
/* Restart peak tracking from what is in use now (per-step peaks). */
void rt_device_memory_reset_peak(rt_device_memory *mem);

/*
 * Host pool: n_slots buffers of slot_bytes each, allocated once (pinned on
 * CUDA later) and handed out again every step, so host memory is flat
 * across steps. acquire returns -1 when every slot is taken.
 */
typedef struct {
    size_t slot_bytes;
    int n_slots;
    unsigned char *base;
    int *in_use;
    size_t total_bytes;
} rt_host_pool;

void rt_host_pool_init(rt_host_pool *pool, int n_slots, size_t slot_bytes);
void rt_host_pool_destroy(rt_host_pool *pool);
int rt_host_pool_acquire(rt_host_pool *pool);
void *rt_host_pool_slot(rt_host_pool *pool, int slot);
void rt_host_pool_release(rt_host_pool *pool, int slot);

#endif
