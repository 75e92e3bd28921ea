/* metrics.c: the metrics.jsonl line of a step, and the file that holds them. */
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *text;
    size_t cap, used; /* used >= cap: did not fit */
} json_line;

static void json_append(json_line *line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void json_append(json_line *line, const char *fmt, ...) {
    if (line->used >= line->cap) return;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(line->text + line->used, line->cap - line->used, fmt, args);
    va_end(args);
    line->used = n < 0 ? line->cap : line->used + (size_t)n;
}

/* `"key": value` with printf's %.<precision><style>; JSON has no inf or nan, so a non-finite value is written
 * as null with the reason beside it: "loss": null, "loss_nonfinite": "nan" (or "inf", "-inf"). */
static void json_real(json_line *line, const char *key, double value, char style, int precision) {
    const char *sep = line->used > 1 ? ", " : "";
    if (isfinite(value))
        json_append(line, style == 'f' ? "%s\"%s\": %.*f" : "%s\"%s\": %.*g", sep, key, precision, value);
    else
        json_append(line, "%s\"%s\": null, \"%s_nonfinite\": \"%s\"", sep, key, key,
                    isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf"));
}

static void json_count(json_line *line, const char *key, size_t value) {
    json_append(line, "%s\"%s\": %zu", line->used > 1 ? ", " : "", key, value);
}

size_t rt_metrics_json_line(const rt_step_metrics *s, char *out, size_t cap) {
    json_line line = {.text = out, .cap = cap, .used = 0};
    json_append(&line, "{\"step\": %d", s->step);
    json_real(&line, "loss", s->loss, 'g', 9);
    json_real(&line, "grad_norm", s->grad_norm, 'g', 9);
    json_real(&line, "lr", s->lr, 'g', 9);
    json_real(&line, "tokens_per_s", s->tokens_per_s, 'f', 1);
    json_real(&line, "step_s", s->step_s, 'f', 6);
    json_count(&line, "peak_device_bytes", s->peak_device_bytes);
    json_count(&line, "offloaded_bytes", s->offloaded_bytes);
    json_real(&line, "comm_exposed_s", s->comm_exposed_s, 'f', 6);
    json_real(&line, "prefetch_wait_s", s->prefetch_wait_s, 'f', 6);
    json_count(&line, "offload_host_bytes", s->offload_host_bytes);
    json_count(&line, "optimizer_bytes", s->optimizer_bytes);
    if (s->documents_on) {
        json_real(&line, "documents", s->documents, 'f', 0);
        json_real(&line, "mean_document_len", s->mean_document_len, 'f', 1);
        json_real(&line, "attn_masked_share", s->attn_masked_share, 'f', 4);
        json_real(&line, "attn_work_imbalance", s->attn_work_imbalance, 'f', 4);
    }
    if (s->validated) json_real(&line, "val_loss", s->val_loss, 'g', 9);
    json_append(&line, "}\n");
    return line.used;
}

int rt_metrics_create(rt_metrics_file *f, const char *path, rt_error *err) {
    snprintf(f->path, sizeof f->path, "%s", path);
    f->good_bytes = 0;
    f->fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f->fd >= 0) return 0;
    if (errno == EEXIST) return 1;
    return rt_fail(err, "%s: cannot create: %s", f->path, strerror(errno));
}

/* The length of text's prefix that holds whole lines of steps < first_step (text ends with a NUL). */
static size_t keep_before(const char *text, size_t len, int first_step) {
    size_t kept = 0;
    while (kept < len) {
        const char *newline = memchr(text + kept, '\n', len - kept);
        if (!newline) break; /* a cut-short last line */
        int step;
        if (sscanf(text + kept, "{\"step\": %d", &step) != 1 || step >= first_step) break;
        kept = (size_t)(newline - text) + 1;
    }
    return kept;
}

int rt_metrics_reopen(rt_metrics_file *f, const char *path, int first_step, rt_error *err) {
    snprintf(f->path, sizeof f->path, "%s", path);
    f->fd = open(f->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f->fd < 0) return rt_fail(err, "%s: cannot open: %s", f->path, strerror(errno));
    off_t size = lseek(f->fd, 0, SEEK_END);
    char *text = size > 0 ? malloc((size_t)size + 1) : NULL;
    if (size > 0 && !text) rt_fatal("out of host memory reading %s", f->path);
    ssize_t got = size > 0 ? pread(f->fd, text, (size_t)size, 0) : 0;
    int rc = 0;
    if (got != (ssize_t)size) {
        rc = rt_fail(err, "%s: cannot read: %s", f->path, got < 0 ? strerror(errno) : "short read");
    } else {
        f->good_bytes = size > 0 ? (off_t)keep_before(text, (size_t)size, first_step) : 0;
        if (ftruncate(f->fd, f->good_bytes) != 0 || lseek(f->fd, f->good_bytes, SEEK_SET) < 0)
            rc = rt_fail(err, "%s: cannot cut to the lines before step %d: %s", f->path, first_step, strerror(errno));
    }
    free(text);
    if (rc) {
        close(f->fd);
        f->fd = -1;
    }
    return rc;
}

int rt_metrics_append(rt_metrics_file *f, const rt_step_metrics *s, rt_error *err) {
    char text[1024];
    size_t used = rt_metrics_json_line(s, text, sizeof text);
    if (used >= sizeof text) rt_fatal("metrics line of step %d longer than %zu bytes", s->step, used);
    rt_error inner;
    if (rt_write_all(f->fd, text, used, f->path, &inner) == 0) {
        f->good_bytes += (off_t)used;
        return 0;
    }
    int cut = ftruncate(f->fd, f->good_bytes) == 0; /* no half line left at the end */
    return rt_fail(err, "%s%s", inner.msg, cut ? "" : " (the file's last line may be cut short)");
}

int rt_metrics_close(rt_metrics_file *f, rt_error *err) {
    if (f->fd < 0) return 0;
    int rc = rt_sync_close(f->fd, f->path, 0, err);
    f->fd = -1;
    return rc;
}
