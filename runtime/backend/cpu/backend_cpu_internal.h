/* backend_cpu_internal.h: CPU attention kernels and copy engine, defined outside backend_cpu.c, in the CPU table. */
#ifndef RT_BACKEND_CPU_INTERNAL_H
#define RT_BACKEND_CPU_INTERNAL_H

#include "runtime/backend/backend.h"

/* The instance argument every op takes; the CPU backend has no state, so its ops ignore it. */
#define CPU_BE const rt_backend *be __attribute__((unused))

size_t rt_cpu_attn_workspace_bytes(CPU_BE, size_t max_Tq, size_t max_Tk, const rt_attn_shape *shape);
void rt_cpu_attn_block_forward(CPU_BE, float *out, float *lse, const float *q, const float *k, const float *v,
                               const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq, size_t Tk,
                               const rt_attn_shape *shape, void *workspace, size_t workspace_bytes);
void rt_cpu_attn_delta(CPU_BE, float *delta, const float *out, const float *dout, size_t Tq,
                       const rt_attn_shape *shape);
void rt_cpu_attn_block_backward(CPU_BE, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *lse, const float *delta,
                                const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq,
                                size_t Tk, const rt_attn_shape *shape, void *workspace, size_t workspace_bytes);

/* Copy engine (backend_cpu_stream.c): one worker thread per stream; see backend.h for the contract. */
rt_stream *rt_cpu_stream_create(CPU_BE);
void rt_cpu_stream_destroy(CPU_BE, rt_stream *s);
void rt_cpu_copy_async(CPU_BE, rt_stream *s, void *dst, const void *src, size_t bytes);
rt_event *rt_cpu_event_create(CPU_BE);
void rt_cpu_event_destroy(CPU_BE, rt_event *e);
void rt_cpu_event_record(CPU_BE, rt_event *e, rt_stream *s);
void rt_cpu_event_synchronize(CPU_BE, rt_event *e);
void rt_cpu_stream_wait_event(CPU_BE, rt_stream *s, rt_event *e);
void rt_cpu_synchronize(CPU_BE);
int rt_cpu_event_query(CPU_BE, rt_event *e);
void *rt_cpu_host_alloc(CPU_BE, size_t bytes);
void rt_cpu_host_free(CPU_BE, void *ptr);

/* TEST HOOK: every asynchronous copy that starts from now on first sleeps us microseconds on its worker (0 = off),
 * so tests can make the copy engine deliberately slow and catch a buffer used before its copy completed. */
void rt_cpu_copy_engine_set_delay_us(unsigned us);

#endif
