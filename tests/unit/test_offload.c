/* test_offload.c: the CPU copy engine (streams, events, slow-copy hook) and the activation offloader. */
/*
 * Data is checked bitwise: every layer input is filled with a pattern that
 * is a hash of (step, layer, word), and a restored input must equal its
 * pattern word for word. Buffers are written the moment they are handed out
 * and scribbled over when released, so a slot reused before its copy
 * completed, or a restore that did not really copy, shows up as a mismatch.
 * The slow-copy hook (rt_cpu_copy_engine_set_delay_us) makes every
 * asynchronous copy sleep first, so the races the rules prevent would
 * actually happen if the rules were broken. Misuse is a fatal error: those
 * cases run in a forked child whose exit status and message are checked.
 */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "offload/offload.h"
#include "runtime/backend/cpu/backend_cpu_internal.h"
#include "runtime/backend/registry.h"
#include "tests/support/expect_fatal.h"
#include "tests/support/testing.h"

#define WORDS 1024 /* uint32 words per layer input */
#define BYTES ((size_t)WORDS * sizeof(uint32_t))

/* ----------------------------------------------------------------------------
 * helpers
 */

static uint32_t pattern_word(int step, int layer, size_t i) {
    uint64_t x = ((uint64_t)(uint32_t)step << 40) ^ ((uint64_t)(uint32_t)layer << 20) ^ i;
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return (uint32_t)(x ^ (x >> 31));
}

static void fill_pattern(void *buf, int step, int layer) {
    uint32_t *words = buf;
    for (size_t i = 0; i < WORDS; i++)
        words[i] = pattern_word(step, layer, i);
}

/* 1 when buf holds exactly the pattern of (step, layer). */
static int has_pattern(const void *buf, int step, int layer) {
    const uint32_t *words = buf;
    for (size_t i = 0; i < WORDS; i++)
        if (words[i] != pattern_word(step, layer, i)) return 0;
    return 1;
}

/* The CPU backend with host_alloc / host_free counted, so the tests see every host allocation. */
static rt_backend counted_backend;
static struct {
    int allocs;
    size_t live_bytes;
    void *ptrs[16];
    size_t sizes[16];
} host_count;

static void *counted_host_alloc(const rt_backend *be, size_t bytes) {
    (void)be;
    void *ptr = rt_be_host_alloc(rt_backend_cpu(), bytes);
    for (int i = 0; i < 16; i++) {
        if (host_count.ptrs[i]) continue;
        host_count.ptrs[i] = ptr;
        host_count.sizes[i] = bytes;
        host_count.allocs++;
        host_count.live_bytes += bytes;
        return ptr;
    }
    rt_fatal("test: more than 16 live host allocations");
}

static void counted_host_free(const rt_backend *be, void *ptr) {
    (void)be;
    for (int i = 0; i < 16; i++) {
        if (host_count.ptrs[i] != ptr) continue;
        host_count.live_bytes -= host_count.sizes[i];
        host_count.ptrs[i] = NULL;
        break;
    }
    rt_be_host_free(rt_backend_cpu(), ptr);
}

/* Copies in flight on one watched stream (the offloader's device -> host stream): each copy queued there gets an
 * event of its own, and at every queueing the copies not yet complete are counted. */
#define WATCH_EVENTS 64
static struct {
    rt_stream *stream;
    rt_event *done[WATCH_EVENTS];
    int n_copies;
    int max_in_flight;
} d2h_watch;

static void watched_copy_async(const rt_backend *be, rt_stream *s, void *dst, const void *src, size_t bytes) {
    (void)be;
    const rt_backend *cpu = rt_backend_cpu();
    if (s == d2h_watch.stream) {
        int in_flight = 1;
        for (int i = 0; i < WATCH_EVENTS; i++)
            in_flight += d2h_watch.done[i] && !rt_be_event_query(cpu, d2h_watch.done[i]);
        if (in_flight > d2h_watch.max_in_flight) d2h_watch.max_in_flight = in_flight;
        rt_be_copy_async(cpu, s, dst, src, bytes);
        rt_event **e = &d2h_watch.done[d2h_watch.n_copies++ % WATCH_EVENTS];
        if (!*e) *e = rt_be_event_create(cpu);
        rt_be_event_record(cpu, *e, s);
    } else {
        rt_be_copy_async(cpu, s, dst, src, bytes);
    }
}

static void watch_d2h(rt_stream *stream) {
    d2h_watch.stream = stream;
    d2h_watch.n_copies = 0;
    d2h_watch.max_in_flight = 0;
}

static void unwatch_d2h(void) {
    for (int i = 0; i < WATCH_EVENTS; i++) {
        if (d2h_watch.done[i]) rt_be_event_destroy(rt_backend_cpu(), d2h_watch.done[i]);
        d2h_watch.done[i] = NULL;
    }
    d2h_watch.stream = NULL;
}

static const rt_backend *test_backend(void) {
    counted_backend = *rt_backend_cpu();
    counted_backend.copy_engine.host_alloc = counted_host_alloc;
    counted_backend.copy_engine.host_free = counted_host_free;
    counted_backend.copy_engine.copy_async = watched_copy_async;
    return &counted_backend;
}

/*
 * One training pass as the model runs it (offload.h): forward with every input saved right after it is written,
 * then backward L-1..0 with a prefetch one layer ahead. `prefetch` = 0 leaves the copies to restore. Returns the
 * number of inputs found with a wrong pattern, in forward (a buffer overwritten under a layer still reading it)
 * or in backward (a restored input that is not the one saved).
 */
static int training_pass(rt_offloader *off, int L, int step, int prefetch) {
    static uint32_t final_hidden[WORDS];
    int bad = 0;
    uint32_t *x = (uint32_t *)rt_offload_input_buffer(off, 0);
    fill_pattern(x, step, 0); /* the embedding */
    rt_offload_save(off, 0, BYTES);
    for (int l = 0; l < L; l++) {
        uint32_t *y = l + 1 < L ? (uint32_t *)rt_offload_input_buffer(off, l + 1) : final_hidden;
        if (y == x) bad++;
        /* layer l: reads its input while that input's copy may still run, writes the next one */
        bad += !has_pattern(x, step, l);
        fill_pattern(y, step, l + 1);
        if (l + 1 < L) rt_offload_save(off, l + 1, BYTES);
        x = y;
    }
    for (int l = L - 1; l >= 0; l--) {
        if (prefetch && l > 0) rt_offload_prefetch(off, l - 1);
        uint32_t *in = (uint32_t *)rt_offload_restore(off, l);
        bad += !has_pattern(in, step, l);
        fill_pattern(final_hidden, step, 1000 + l); /* the recompute's output goes elsewhere */
        memset(in, 0xA5, BYTES);                    /* done with it: a slot that is not refilled cannot pass */
        rt_offload_release(off, l);
    }
    rt_offload_end_pass(off);
    return bad;
}

/* ----------------------------------------------------------------------------
 * copy engine
 */

static void test_event_never_recorded_is_complete(void) {
    const rt_backend *be = rt_backend_cpu();
    rt_event *e = rt_be_event_create(be);
    CU_ASSERT_EQUAL(rt_be_event_query(be, e), 1);
    rt_be_event_synchronize(be, e); /* returns at once */
    rt_be_event_destroy(be, e);
}

/* A chain of copies through intermediate buffers only gives the source at the end if they ran in order. */
static void test_copies_run_in_order(void) {
    const rt_backend *be = rt_backend_cpu();
    rt_cpu_copy_engine_set_delay_us(5000);
    rt_stream *s = rt_be_stream_create(be);
    rt_event *e = rt_be_event_create(be);
    uint32_t src[WORDS], hop[4][WORDS];
    fill_pattern(src, 1, 1);
    memset(hop, 0, sizeof hop);
    rt_be_copy_async(be, s, hop[0], src, BYTES);
    for (int i = 1; i < 4; i++)
        rt_be_copy_async(be, s, hop[i], hop[i - 1], BYTES);
    rt_be_event_record(be, e, s);
    CU_ASSERT_EQUAL(rt_be_event_query(be, e), 0); /* 4 copies of 5 ms each were just queued */
    rt_be_event_synchronize(be, e);
    CU_ASSERT_EQUAL(rt_be_event_query(be, e), 1);
    for (int i = 0; i < 4; i++)
        CU_ASSERT(has_pattern(hop[i], 1, 1));
    rt_cpu_copy_engine_set_delay_us(0);
    rt_be_event_destroy(be, e);
    rt_be_stream_destroy(be, s);
}

/* Several copies into one destination: the last one queued wins; an event recorded between two copies
 * completes after the first and the destination then holds the first's data or later. */
static void test_event_completes_after_prior_copies(void) {
    const rt_backend *be = rt_backend_cpu();
    rt_cpu_copy_engine_set_delay_us(500);
    rt_stream *s = rt_be_stream_create(be);
    enum { N_COPIES = 64 };
    static uint32_t srcs[N_COPIES][WORDS], dsts[N_COPIES][WORDS], shared_dst[WORDS];
    rt_event *events[N_COPIES];
    for (int i = 0; i < N_COPIES; i++) {
        fill_pattern(srcs[i], 2, i);
        memset(dsts[i], 0, BYTES);
        events[i] = rt_be_event_create(be);
    }
    for (int i = 0; i < N_COPIES; i++) {
        rt_be_copy_async(be, s, dsts[i], srcs[i], BYTES);
        rt_be_copy_async(be, s, shared_dst, srcs[i], BYTES);
        rt_be_event_record(be, events[i], s);
    }
    int bad = 0;
    for (int i = 0; i < N_COPIES; i++) {
        if (i % 7 == 0)
            rt_be_event_synchronize(be, events[i]);
        else
            while (!rt_be_event_query(be, events[i])) {
            }
        /* event i complete: copies 0..i are done, whatever came later */
        for (int j = 0; j <= i; j++)
            bad += !has_pattern(dsts[j], 2, j);
        for (int j = 0; j < i; j++)
            bad += !rt_be_event_query(be, events[j]);
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(has_pattern(shared_dst, 2, N_COPIES - 1));
    rt_cpu_copy_engine_set_delay_us(0);
    for (int i = 0; i < N_COPIES; i++)
        rt_be_event_destroy(be, events[i]);
    rt_be_stream_destroy(be, s);
}

/* Thousands of small copies with no delay, one event re-recorded over and over, two streams at once. */
static void test_many_queued_copies(void) {
    const rt_backend *be = rt_backend_cpu();
    rt_stream *streams[2] = {rt_be_stream_create(be), rt_be_stream_create(be)};
    rt_event *e = rt_be_event_create(be);
    enum { N_CHUNKS = 4096 };
    uint32_t *src = malloc_check(N_CHUNKS * sizeof(uint32_t) * 16);
    uint32_t *dst = calloc_check(N_CHUNKS * 16, sizeof(uint32_t));
    for (size_t i = 0; i < (size_t)N_CHUNKS * 16; i++)
        src[i] = pattern_word(3, 0, i);
    for (int c = 0; c < N_CHUNKS; c++) {
        rt_be_copy_async(be, streams[c % 2], dst + (size_t)c * 16, src + (size_t)c * 16, 16 * sizeof(uint32_t));
        if (c % 100 == 99) rt_be_event_record(be, e, streams[c % 2]);
    }
    rt_event *done[2] = {rt_be_event_create(be), rt_be_event_create(be)};
    for (int k = 0; k < 2; k++) {
        rt_be_event_record(be, done[k], streams[k]);
        rt_be_event_synchronize(be, done[k]);
    }
    CU_ASSERT_EQUAL(memcmp(src, dst, (size_t)N_CHUNKS * 16 * sizeof(uint32_t)), 0);
    CU_ASSERT_EQUAL(rt_be_event_query(be, e), 1);
    for (int k = 0; k < 2; k++) {
        rt_be_event_destroy(be, done[k]);
        rt_be_stream_destroy(be, streams[k]);
    }
    rt_be_event_destroy(be, e);
    free(src);
    free(dst);
}

/* Destroying a stream runs what it queued; destroying an event whose record is pending waits for it. */
static void test_destroy_drains(void) {
    const rt_backend *be = rt_backend_cpu();
    rt_cpu_copy_engine_set_delay_us(3000);
    rt_stream *s = rt_be_stream_create(be);
    rt_event *e = rt_be_event_create(be);
    uint32_t src[WORDS], dst[WORDS];
    fill_pattern(src, 4, 0);
    memset(dst, 0, sizeof dst);
    rt_be_copy_async(be, s, dst, src, BYTES);
    rt_be_event_record(be, e, s);
    rt_be_event_destroy(be, e); /* marker still queued behind a 3 ms copy */
    rt_be_copy_async(be, s, dst, src, BYTES);
    rt_be_stream_destroy(be, s);
    CU_ASSERT(has_pattern(dst, 4, 0));
    rt_cpu_copy_engine_set_delay_us(0);
}

/* ----------------------------------------------------------------------------
 * offloader
 */

/* Every restored input equals what was saved, bitwise, for L = 2, 4, 8, max_inflight 1, 2, 4, fast and slow. */
static void test_round_trip(void) {
    static const int layer_counts[] = {2, 4, 8}, inflights[] = {1, 2, 4};
    static const unsigned delays_us[] = {0, 300};
    for (int d = 0; d < 2; d++) {
        rt_cpu_copy_engine_set_delay_us(delays_us[d]);
        for (int a = 0; a < 3; a++) {
            for (int b = 0; b < 3; b++) {
                int L = layer_counts[a], inflight = inflights[b];
                const rt_backend *be = test_backend();
                rt_device_memory mem;
                rt_device_memory_init(&mem, be, 0);
                rt_offloader off;
                rt_error err;
                CU_ASSERT_EQUAL_FATAL(rt_offloader_init(&off, be, &mem, L, BYTES, inflight, &err), 0);
                watch_d2h(off.d2h_stream);
                int bad = 0;
                for (int step = 0; step < 3; step++) {
                    bad += training_pass(&off, L, step, step != 2); /* the last step restores without prefetch */
                    rt_offload_stats stats;
                    rt_offload_take_stats(&off, &stats);
                    CU_ASSERT_EQUAL(stats.offloaded_bytes, (size_t)(L - 1) * BYTES);
                    CU_ASSERT_EQUAL(stats.restored_bytes, (size_t)(L - 1) * BYTES);
                    CU_ASSERT_EQUAL(stats.passes, 1);
                }
                if (bad)
                    fprintf(stderr, "\n  L=%d max_inflight=%d delay=%uus: %d inputs wrong\n", L, inflight, delays_us[d],
                            bad);
                CU_ASSERT_EQUAL(bad, 0);
                CU_ASSERT(d2h_watch.max_in_flight <= inflight);
                unwatch_d2h();
                rt_offloader_free(&off);
                CU_ASSERT_EQUAL(mem.in_use, 0);
                rt_device_memory_destroy(&mem);
            }
        }
    }
    rt_cpu_copy_engine_set_delay_us(0);
}

/* The stress case: max_inflight = 1 and a copy engine slower than the "compute"; then max_inflight = 2, where the
 * copies must really overlap (the bound is reached, not merely respected). */
static void test_stress_slow_engine(void) {
    rt_cpu_copy_engine_set_delay_us(2000);
    for (int inflight = 1; inflight <= 2; inflight++) {
        const rt_backend *be = test_backend();
        rt_device_memory mem;
        rt_device_memory_init(&mem, be, 0);
        rt_offloader off;
        rt_error err;
        CU_ASSERT_EQUAL_FATAL(rt_offloader_init(&off, be, &mem, 8, BYTES, inflight, &err), 0);
        watch_d2h(off.d2h_stream);
        int bad = 0;
        for (int step = 0; step < 4; step++)
            bad += training_pass(&off, 8, step, 1);
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(d2h_watch.n_copies, 4 * 7);
        CU_ASSERT_EQUAL(d2h_watch.max_in_flight, inflight);
        unwatch_d2h();
        rt_offload_stats stats;
        rt_offload_take_stats(&off, &stats);
        CU_ASSERT(stats.offload_wait_s > 0.0);  /* the forward had to wait for copies */
        CU_ASSERT(stats.prefetch_wait_s > 0.0); /* and the backward for its inputs */
        rt_offloader_free(&off);
        rt_device_memory_destroy(&mem);
    }
    rt_cpu_copy_engine_set_delay_us(0);
}

/* A buffer is never handed out again before its copy completed: with a slow engine, the buffer of the next
 * input is written at once, and the earlier inputs still come back with their own patterns. */
static void test_no_reuse_before_copy_completes(void) {
    rt_cpu_copy_engine_set_delay_us(20000);
    for (int inflight = 1; inflight <= 2; inflight++) {
        rt_device_memory mem;
        rt_device_memory_init(&mem, rt_backend_cpu(), 0);
        rt_offloader off;
        rt_error err;
        CU_ASSERT_EQUAL_FATAL(rt_offloader_init(&off, rt_backend_cpu(), &mem, 4, BYTES, inflight, &err), 0);
        uint32_t *buf[4];
        buf[0] = (uint32_t *)rt_offload_input_buffer(&off, 0);
        fill_pattern(buf[0], 7, 0);
        rt_offload_save(&off, 0, BYTES); /* a 20 ms copy starts */
        double t0 = rt_now_s();
        buf[1] = (uint32_t *)rt_offload_input_buffer(&off, 1);
        fill_pattern(buf[1], 7, 1);
        rt_offload_save(&off, 1, BYTES);
        buf[2] = (uint32_t *)rt_offload_input_buffer(&off, 2);
        fill_pattern(buf[2], 7, 2); /* immediately, over whatever slot came back */
        double waited = rt_now_s() - t0;
        CU_ASSERT(buf[1] != buf[0]);
        CU_ASSERT(buf[2] != buf[1]);
        if (inflight == 1) {
            /* two slots: the slot of input 0 came back, and only once its copy was done */
            CU_ASSERT(buf[2] == buf[0]);
            CU_ASSERT(waited > 0.010);
        } else {
            /* input 0's copy still runs: its slot is not handed out, a third one is */
            CU_ASSERT(buf[2] != buf[0]);
        }
        rt_offload_save(&off, 2, BYTES);
        buf[3] = (uint32_t *)rt_offload_input_buffer(&off, 3);
        fill_pattern(buf[3], 7, 3);
        rt_offload_save(&off, 3, BYTES);
        for (int l = 3; l >= 0; l--) {
            if (l > 0) rt_offload_prefetch(&off, l - 1);
            uint32_t *in = (uint32_t *)rt_offload_restore(&off, l);
            CU_ASSERT(has_pattern(in, 7, l));
            memset(in, 0, BYTES);
            rt_offload_release(&off, l);
        }
        rt_offload_end_pass(&off);
        rt_offloader_free(&off);
        rt_device_memory_destroy(&mem);
    }
    rt_cpu_copy_engine_set_delay_us(0);
}

/* Device bytes (arena peak) do not depend on L; host bytes are (L-1) inputs; over 20 steps neither grows after
 * the first, and host memory is allocated once. */
static void test_memory_flat(void) {
    const rt_backend *be = test_backend();
    static const int layer_counts[] = {2, 4, 8};
    size_t peak_for_L[3];
    for (int a = 0; a < 3; a++) {
        int L = layer_counts[a];
        memset(&host_count, 0, sizeof host_count);
        rt_device_memory mem;
        rt_device_memory_init(&mem, be, 0);
        rt_offloader off;
        rt_error err;
        CU_ASSERT_EQUAL_FATAL(rt_offloader_init(&off, be, &mem, L, BYTES, 2, &err), 0);
        size_t peak_after_first = 0, host_after_first = 0;
        int bad = 0;
        for (int step = 0; step < 20; step++) {
            rt_device_memory_reset_peak(&mem);
            bad += training_pass(&off, L, step, 1);
            rt_offload_stats stats;
            rt_offload_take_stats(&off, &stats);
            CU_ASSERT_EQUAL(stats.host_pool_bytes, (size_t)(L - 1) * BYTES);
            CU_ASSERT_EQUAL(stats.device_slot_bytes, mem.in_use);
            CU_ASSERT_EQUAL(stats.offloaded_bytes, (size_t)(L - 1) * BYTES);
            if (step == 0) {
                peak_after_first = mem.peak;
                host_after_first = host_count.live_bytes;
            }
            CU_ASSERT_EQUAL(mem.peak, peak_after_first);
            CU_ASSERT_EQUAL(host_count.live_bytes, host_after_first);
        }
        CU_ASSERT_EQUAL(bad, 0);
        CU_ASSERT_EQUAL(host_count.allocs, 1);
        CU_ASSERT_EQUAL(host_after_first, (size_t)(L - 1) * BYTES);
        CU_ASSERT_EQUAL(mem.n_live, 1);
        peak_for_L[a] = peak_after_first;
        rt_offloader_free(&off);
        CU_ASSERT_EQUAL(mem.in_use, 0);
        CU_ASSERT_EQUAL(host_count.live_bytes, 0);
        rt_device_memory_destroy(&mem);
    }
    CU_ASSERT_EQUAL(peak_for_L[0], peak_for_L[1]);
    CU_ASSERT_EQUAL(peak_for_L[1], peak_for_L[2]);
    CU_ASSERT_EQUAL(peak_for_L[0], 3 * BYTES); /* max_inflight + 1 slots */
}

/* A forward-only pass (evaluation) saves nothing and reports 0 offloaded bytes; training passes around it work. */
static void test_forward_only_pass(void) {
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    rt_offloader off;
    rt_error err;
    CU_ASSERT_EQUAL_FATAL(rt_offloader_init(&off, rt_backend_cpu(), &mem, 6, BYTES, 1, &err), 0);
    CU_ASSERT_EQUAL(training_pass(&off, 6, 0, 1), 0);
    rt_offload_stats stats;
    rt_offload_take_stats(&off, &stats);
    int bad = 0;
    uint32_t *x = (uint32_t *)rt_offload_input_buffer(&off, 0);
    fill_pattern(x, 9, 0);
    for (int l = 0; l + 1 < 6; l++) {
        uint32_t *y = (uint32_t *)rt_offload_input_buffer(&off, l + 1);
        bad += !has_pattern(x, 9, l) || y == x;
        fill_pattern(y, 9, l + 1);
        x = y;
    }
    rt_offload_end_pass(&off);
    rt_offload_take_stats(&off, &stats);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(stats.offloaded_bytes, 0);
    CU_ASSERT_EQUAL(stats.passes, 1);
    CU_ASSERT_EQUAL(training_pass(&off, 6, 1, 1), 0);
    rt_offloader_free(&off);
    rt_device_memory_destroy(&mem);
}

/* Bad arguments and a device memory limit are errors (values), not crashes. */
static void test_init_errors(void) {
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 2 * BYTES);
    rt_offloader off;
    rt_error err;
    CU_ASSERT_EQUAL(rt_offloader_init(&off, rt_backend_cpu(), &mem, 1, BYTES, 2, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "at least 2 layers"));
    CU_ASSERT_EQUAL(rt_offloader_init(&off, rt_backend_cpu(), &mem, 4, BYTES, 0, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "max_inflight"));
    CU_ASSERT_EQUAL(rt_offloader_init(&off, rt_backend_cpu(), &mem, 4, BYTES, 2, &err), -1); /* 3 slots > limit */
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "offload device slots"));
    CU_ASSERT_EQUAL(mem.in_use, 0);
    rt_offloader_free(&off); /* harmless after a failed init */
    CU_ASSERT_EQUAL(rt_offloader_init(&off, rt_backend_cpu(), &mem, 4, BYTES, 1, &err), 0); /* 2 slots fit */
    rt_offloader_free(&off);
    rt_device_memory_destroy(&mem);
}

/* ----------------------------------------------------------------------------
 * misuse is fatal: each case runs in a forked child
 */

/* In the child: a fresh 4-layer offloader (max_inflight 1) for the misuse. */
static void run_offloader_misuse(void *arg) {
    void (*misuse)(rt_offloader * off) = *(void (**)(rt_offloader *))arg;
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    rt_offloader off;
    rt_error err;
    if (rt_offloader_init(&off, rt_backend_cpu(), &mem, 4, BYTES, 1, &err) != 0) _exit(3);
    misuse(&off);
}

/* Runs misuse(off) on a fresh 4-layer offloader (max_inflight 1) in a child; expects exit 1 and `message`. */
static void expect_fatal(void (*misuse)(rt_offloader *off), const char *message) {
    test_expect_fatal(run_offloader_misuse, &misuse, 0, message);
}

static void forward(rt_offloader *off, int skip_save_of) {
    for (int l = 0; l < 4; l++) {
        fill_pattern(rt_offload_input_buffer(off, l), 0, l);
        if (l != skip_save_of) rt_offload_save(off, l, BYTES);
    }
}

static void misuse_restore_unsaved(rt_offloader *off) {
    forward(off, 1);
    rt_offload_restore(off, 3);
}
static void misuse_save_out_of_order(rt_offloader *off) {
    rt_offload_input_buffer(off, 0);
    rt_offload_input_buffer(off, 1);
    rt_offload_save(off, 0, BYTES);
}
static void misuse_save_twice(rt_offloader *off) {
    rt_offload_input_buffer(off, 0);
    rt_offload_save(off, 0, BYTES);
    rt_offload_save(off, 0, BYTES);
}
static void misuse_input_out_of_order(rt_offloader *off) {
    rt_offload_input_buffer(off, 0);
    rt_offload_input_buffer(off, 2);
}
static void misuse_restore_out_of_order(rt_offloader *off) {
    forward(off, -1);
    rt_offload_restore(off, 2);
}
static void misuse_release_unrestored(rt_offloader *off) {
    forward(off, -1);
    rt_offload_prefetch(off, 2);
    rt_offload_release(off, 2);
}
static void misuse_prefetch_too_far(rt_offloader *off) {
    forward(off, -1);
    rt_offload_restore(off, 3); /* holds one of the 2 slots */
    rt_offload_prefetch(off, 2);
    rt_offload_prefetch(off, 1);
}
static void misuse_end_pass_unreleased(rt_offloader *off) {
    forward(off, -1);
    for (int l = 3; l >= 0; l--) {
        rt_offload_restore(off, l);
        if (l != 1) rt_offload_release(off, l);
    }
    rt_offload_end_pass(off);
}
static void misuse_pass_not_ended(rt_offloader *off) {
    forward(off, -1);
    for (int l = 3; l >= 0; l--) {
        rt_offload_restore(off, l);
        rt_offload_release(off, l);
    }
    rt_offload_input_buffer(off, 0);
}
static void misuse_save_too_many_bytes(rt_offloader *off) {
    rt_offload_input_buffer(off, 0);
    rt_offload_save(off, 0, BYTES + 4);
}

static void test_misuse_is_fatal(void) {
    expect_fatal(misuse_restore_unsaved, "input 1 was never saved");
    expect_fatal(misuse_save_out_of_order, "only the input just handed out");
    expect_fatal(misuse_save_twice, "only the input just handed out");
    expect_fatal(misuse_input_out_of_order, "out of order, expected layer 1");
    expect_fatal(misuse_restore_out_of_order, "out of order, expected input 3");
    expect_fatal(misuse_release_unrestored, "not restored");
    expect_fatal(misuse_prefetch_too_far, "all 2 device slots are held");
    expect_fatal(misuse_end_pass_unreleased, "input 1 is restored, not released");
    expect_fatal(misuse_pass_not_ended, "call end_pass");
    expect_fatal(misuse_save_too_many_bytes, "exceed");
}

int main(void) {
    test_case cases[] = {
        {"event never recorded is complete", test_event_never_recorded_is_complete},
        {"copies on a stream run in order (slow engine)", test_copies_run_in_order},
        {"an event completes after the copies before it (slow engine)", test_event_completes_after_prior_copies},
        {"many queued copies on two streams", test_many_queued_copies},
        {"destroying a stream or event drains it", test_destroy_drains},
        {"round trip: L 2/4/8, max_inflight 1/2/4, fast and slow", test_round_trip},
        {"stress: slow engine, max_inflight 1 and 2", test_stress_slow_engine},
        {"no slot reuse before its copy completes", test_no_reuse_before_copy_completes},
        {"device bytes constant in L, host and device flat over 20 steps", test_memory_flat},
        {"forward-only pass", test_forward_only_pass},
        {"init errors are values", test_init_errors},
        {"misuse is fatal", test_misuse_is_fatal},
    };
    return test_run_suite("test_offload", cases, (int)(sizeof cases / sizeof cases[0]));
}
