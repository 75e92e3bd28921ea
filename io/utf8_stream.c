/* utf8_stream.c: see utf8_stream.h. The byte ranges are Table 3-7 of the Unicode standard (well-formed UTF-8):
 * no overlong forms, no surrogates, nothing above U+10FFFF. */
#include "utf8_stream.h"

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* The length of the character a lead byte starts, or 0 where no character starts with it. */
static int sequence_length(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

/* Whether `b` may follow the lead byte as the character's second byte; later bytes are 80..BF always. */
static int second_byte_ok(unsigned char lead, unsigned char b) {
    unsigned char lo = 0x80, hi = 0xBF;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
    return b >= lo && b <= hi;
}

void rt_utf8_write(rt_utf8_stream *s, const void *bytes, size_t len, FILE *out) {
    const unsigned char *p = bytes;
    for (size_t i = 0; i < len; i++) {
        const unsigned char b = p[i];
        if (s->n_pending > 0) {
            const unsigned char lead = s->pending[0];
            const int ok = s->n_pending == 1 ? second_byte_ok(lead, b) : (b >= 0x80 && b <= 0xBF);
            if (ok) {
                s->pending[s->n_pending++] = b;
                if (s->n_pending == sequence_length(lead)) {
                    fwrite(s->pending, 1, (size_t)s->n_pending, out);
                    s->n_pending = 0;
                }
                continue;
            }
            /* the prefix so far is one maximal ill-formed subpart; b starts afresh */
            fwrite(replacement, 1, sizeof replacement, out);
            s->n_pending = 0;
        }
        const int n = sequence_length(b);
        if (n == 1)
            fputc(b, out);
        else if (n == 0)
            fwrite(replacement, 1, sizeof replacement, out);
        else
            s->pending[s->n_pending++] = b;
    }
}

void rt_utf8_finish(rt_utf8_stream *s, FILE *out) {
    if (s->n_pending > 0) fwrite(replacement, 1, sizeof replacement, out);
    s->n_pending = 0;
}
