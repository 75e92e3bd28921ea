/*
 * tokens_validate.c: range checks of token files.
 *
 * The trainer checks every token at start-up so a corrupt file fails before
 * any work, but each rank checks only its share (rt_tokens_share over the
 * world): the job reads every file once in all, not once per rank. Shares
 * tile the file in rank order, so the lowest failing rank holds the file's
 * first bad token and its message is the one a single rank would print.
 */
#include "tokens_validate.h"

void rt_tokens_share(size_t n, int part, int parts, size_t *first, size_t *count) {
    const size_t p = (size_t)part, base = n / (size_t)parts, longer = n % (size_t)parts;
    *first = p * base + (p < longer ? p : longer); /* <= n: no overflow */
    *count = base + (p < longer);
}

int rt_tokens_validate_range(const rt_token_file *tf, size_t first, size_t count, rt_error *err) {
    if (first > tf->n_tokens) first = tf->n_tokens;
    if (count > tf->n_tokens - first) count = tf->n_tokens - first;
    const uint32_t vocab = (uint32_t)tf->vocab_size;
    const size_t end = first + count;
    size_t first_bad = end;
#pragma omp parallel for schedule(static) reduction(min : first_bad)
    for (size_t i = first; i < end; i++)
        if (rt_tokens_get(tf, i) >= vocab && i < first_bad) first_bad = i;
    if (first_bad < end)
        return rt_fail(err, "%s: token %zu has id %u, not below the file's vocab_size %d", tf->path, first_bad,
                       rt_tokens_get(tf, first_bad), tf->vocab_size);
    return 0;
}
