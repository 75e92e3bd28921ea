/* tokens_validate.h: checking a part of a token file (one rank's share), so a job reads each file once. */
#ifndef RT_TOKENS_VALIDATE_H
#define RT_TOKENS_VALIDATE_H

#include <stddef.h>

#include "tokens.h"

/* Checks that the tokens [first, first+count) (clipped to the file) are below the file's vocab_size; the
 * error names the file, the first bad offset and its value, as rt_tokens_validate does. */
int rt_tokens_validate_range(const rt_token_file *tf, size_t first, size_t count, rt_error *err);

/* Share `part` of `parts` (0 <= part < parts) of n items: [*first, *first + *count), the first n % parts
 * shares one item longer. The shares tile [0, n) in order. */
void rt_tokens_share(size_t n, int part, int parts, size_t *first, size_t *count);

#endif
