/* utf8_stream.h: bytes out as valid UTF-8, token by token. A character a tokenizer splits over several
 * tokens is written once its last byte arrives; a byte sequence that can never become a character is written
 * as U+FFFD, one per maximal ill-formed subpart (the Unicode substitution practice, which Python's
 * errors="replace" and Rust's from_utf8_lossy follow too). */
#ifndef RT_UTF8_STREAM_H
#define RT_UTF8_STREAM_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    unsigned char pending[4]; /* a well-formed prefix of one character, its lead byte first */
    int n_pending;
} rt_utf8_stream;

/* Writes what of `bytes` completes characters; keeps an unfinished character for the next call. */
void rt_utf8_write(rt_utf8_stream *s, const void *bytes, size_t len, FILE *out);
/* Ends the stream: an unfinished character becomes U+FFFD. */
void rt_utf8_finish(rt_utf8_stream *s, FILE *out);

#endif
