/* h5_shape.c: see h5_shape.h. */
#include "h5_shape.h"

#include <stdio.h>

const char *rt_h5_format_shape(int ndim, const hsize_t *dims, char out[128]) {
    size_t used = (size_t)snprintf(out, 128, "(");
    for (int d = 0; d < ndim && used < 128; d++)
        used += (size_t)snprintf(out + used, 128 - used, "%s%llu", d ? ", " : "", (unsigned long long)dims[d]);
    if (used < 128) snprintf(out + used, 128 - used, ")");
    return out;
}
