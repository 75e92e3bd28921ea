/* backend_cpu_stream.c: the CPU copy engine: streams as worker threads with FIFO job queues, completion events. */
/*
 * A stream is one worker thread that pops jobs from a FIFO queue (a singly
 * linked list under the stream's mutex) and runs them one at a time, so jobs
 * of a stream complete in the order they were queued. A job is a copy
 * (memcpy, after the test-hook delay), an event marker, or a wait for an
 * event (stream_wait_event: the worker blocks until the event reaches the
 * generation it had when the wait was queued).
 *
 * An event counts generations: event_record bumps recorded_gen and queues a
 * marker carrying it; the worker, on reaching the marker, raises
 * completed_gen to it and wakes waiters. The event is complete when
 * completed_gen >= recorded_gen, i.e. when the marker of its latest record
 * ran, hence when every job queued on that stream before the record ran too.
 * A never-recorded event (0 >= 0) is complete, as on CUDA.
 *
 * Jobs are recycled: a finished job goes onto the stream's free list (under
 * the same mutex) and the next copy or record takes it from there, so after
 * the first step a stream allocates nothing (the offloader queues the same
 * number of jobs every step).
 *
 * Lifetime: pending_markers counts markers queued but not yet run;
 * event_destroy waits for it to reach 0, so a worker never touches a freed
 * event. stream_destroy lets the worker drain its queue before joining it.
 *
 * Memory ordering: a copy's writes happen before the worker takes the event
 * mutex to mark completion, and the host observes completion under the same
 * mutex, so data copied is visible to the host thread once event_query
 * returned 1 or event_synchronize returned.
 *
 * On the CPU every compute op runs synchronously on the calling thread, so
 * "a copy starts after the ops issued before it" (backend.h) holds by
 * construction, an event recorded on the compute stream (s == NULL) is
 * complete at once, and the compute stream waits for an event by blocking
 * the calling thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_cpu_internal.h"
#include "runtime/core/common.h"

typedef enum { JOB_COPY, JOB_MARKER, JOB_WAIT } job_kind;

typedef struct copy_job {
    job_kind kind;
    void *dst;          /* JOB_COPY */
    const void *src;    /* JOB_COPY */
    size_t bytes;       /* JOB_COPY */
    rt_event *event;    /* JOB_MARKER, JOB_WAIT */
    uint64_t event_gen; /* JOB_MARKER: the generation this marker completes; JOB_WAIT: the one it waits for */
    struct copy_job *next;
} copy_job;

struct rt_stream {
    pthread_mutex_t lock;
    pthread_cond_t work_ready; /* signalled when a job is queued or stopping is set */
    copy_job *head, *tail;     /* FIFO; head runs next */
    copy_job *free_jobs;       /* finished jobs, for reuse */
    int stopping;
    pthread_t worker;
};

struct rt_event {
    pthread_mutex_t lock;
    pthread_cond_t completed; /* broadcast when completed_gen moves */
    uint64_t recorded_gen;
    uint64_t completed_gen;
    int pending_markers; /* markers and waits queued on some stream and not yet run */
};

/* Test hook: microseconds every copy sleeps before it runs. */
static atomic_uint copy_delay_us;

void rt_cpu_copy_engine_set_delay_us(unsigned us) { atomic_store(&copy_delay_us, us); }

static void sleep_us(unsigned us) {
    struct timespec left = {.tv_sec = us / 1000000u, .tv_nsec = (long)(us % 1000000u) * 1000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

static void check_pthread(int rc, const char *what) {
    if (rc != 0) rt_fatal("copy engine: %s failed: %s", what, strerror(rc));
}

static void run_marker(rt_event *e, uint64_t gen) {
    pthread_mutex_lock(&e->lock);
    if (gen > e->completed_gen) e->completed_gen = gen;
    e->pending_markers--;
    pthread_cond_broadcast(&e->completed);
    pthread_mutex_unlock(&e->lock);
}

static void run_wait(rt_event *e, uint64_t gen) {
    pthread_mutex_lock(&e->lock);
    while (e->completed_gen < gen)
        pthread_cond_wait(&e->completed, &e->lock);
    e->pending_markers--;
    pthread_cond_broadcast(&e->completed);
    pthread_mutex_unlock(&e->lock);
}

static void *stream_worker(void *arg) {
    rt_stream *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->head && !s->stopping)
            pthread_cond_wait(&s->work_ready, &s->lock);
        copy_job *job = s->head;
        if (!job) { /* stopping and drained */
            pthread_mutex_unlock(&s->lock);
            return NULL;
        }
        s->head = job->next;
        if (!s->head) s->tail = NULL;
        pthread_mutex_unlock(&s->lock);

        if (job->kind == JOB_COPY) {
            unsigned delay = atomic_load(&copy_delay_us);
            if (delay) sleep_us(delay);
            if (job->bytes && job->dst != job->src) memcpy(job->dst, job->src, job->bytes);
        } else if (job->kind == JOB_MARKER) {
            run_marker(job->event, job->event_gen);
        } else {
            run_wait(job->event, job->event_gen);
        }
        pthread_mutex_lock(&s->lock);
        job->next = s->free_jobs;
        s->free_jobs = job;
        pthread_mutex_unlock(&s->lock);
    }
}

static copy_job *stream_take_job(rt_stream *s) {
    pthread_mutex_lock(&s->lock);
    copy_job *job = s->free_jobs;
    if (job) s->free_jobs = job->next;
    pthread_mutex_unlock(&s->lock);
    if (!job) job = malloc_check(sizeof *job);
    memset(job, 0, sizeof *job);
    return job;
}

static void stream_push(rt_stream *s, copy_job *job) {
    job->next = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->stopping) rt_fatal("copy engine: work queued on a stream being destroyed");
    if (s->tail)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    pthread_cond_signal(&s->work_ready);
    pthread_mutex_unlock(&s->lock);
}

rt_stream *rt_cpu_stream_create(CPU_BE) {
    rt_stream *s = calloc_check(1, sizeof *s);
    check_pthread(pthread_mutex_init(&s->lock, NULL), "pthread_mutex_init");
    check_pthread(pthread_cond_init(&s->work_ready, NULL), "pthread_cond_init");
    check_pthread(pthread_create(&s->worker, NULL, stream_worker, s), "pthread_create (stream worker)");
    return s;
}

void rt_cpu_stream_destroy(CPU_BE, rt_stream *s) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_signal(&s->work_ready);
    pthread_mutex_unlock(&s->lock);
    check_pthread(pthread_join(s->worker, NULL), "pthread_join (stream worker)");
    while (s->free_jobs) {
        copy_job *next = s->free_jobs->next;
        free(s->free_jobs);
        s->free_jobs = next;
    }
    pthread_cond_destroy(&s->work_ready);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void rt_cpu_copy_async(CPU_BE, rt_stream *s, void *dst, const void *src, size_t bytes) {
    copy_job *job = stream_take_job(s);
    job->kind = JOB_COPY;
    job->dst = dst;
    job->src = src;
    job->bytes = bytes;
    stream_push(s, job);
}

rt_event *rt_cpu_event_create(CPU_BE) {
    rt_event *e = calloc_check(1, sizeof *e);
    check_pthread(pthread_mutex_init(&e->lock, NULL), "pthread_mutex_init");
    check_pthread(pthread_cond_init(&e->completed, NULL), "pthread_cond_init");
    return e;
}

void rt_cpu_event_destroy(CPU_BE, rt_event *e) {
    if (!e) return;
    pthread_mutex_lock(&e->lock);
    while (e->pending_markers > 0)
        pthread_cond_wait(&e->completed, &e->lock);
    pthread_mutex_unlock(&e->lock);
    pthread_cond_destroy(&e->completed);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

void rt_cpu_event_record(CPU_BE, rt_event *e, rt_stream *s) {
    if (!s) { /* the compute stream: its ops are done */
        pthread_mutex_lock(&e->lock);
        e->completed_gen = ++e->recorded_gen;
        pthread_cond_broadcast(&e->completed);
        pthread_mutex_unlock(&e->lock);
        return;
    }
    copy_job *job = stream_take_job(s);
    job->kind = JOB_MARKER;
    job->event = e;
    pthread_mutex_lock(&e->lock);
    job->event_gen = ++e->recorded_gen;
    e->pending_markers++;
    pthread_mutex_unlock(&e->lock);
    stream_push(s, job);
}

void rt_cpu_event_synchronize(CPU_BE, rt_event *e) {
    pthread_mutex_lock(&e->lock);
    while (e->completed_gen < e->recorded_gen)
        pthread_cond_wait(&e->completed, &e->lock);
    pthread_mutex_unlock(&e->lock);
}

void rt_cpu_stream_wait_event(CPU_BE, rt_stream *s, rt_event *e) {
    if (!s) {
        rt_cpu_event_synchronize(be, e);
        return;
    }
    copy_job *job = stream_take_job(s);
    job->kind = JOB_WAIT;
    job->event = e;
    pthread_mutex_lock(&e->lock);
    job->event_gen = e->recorded_gen;
    e->pending_markers++;
    pthread_mutex_unlock(&e->lock);
    stream_push(s, job);
}

void rt_cpu_synchronize(CPU_BE) {}

int rt_cpu_event_query(CPU_BE, rt_event *e) {
    pthread_mutex_lock(&e->lock);
    int done = e->completed_gen >= e->recorded_gen;
    pthread_mutex_unlock(&e->lock);
    return done;
}

void *rt_cpu_host_alloc(CPU_BE, size_t bytes) {
    void *ptr = NULL;
    if (posix_memalign(&ptr, 64, bytes ? bytes : 64) != 0) return NULL;
    return ptr;
}

void rt_cpu_host_free(CPU_BE, void *ptr) { free(ptr); }
