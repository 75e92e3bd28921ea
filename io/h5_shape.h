/* h5_shape.h: HDF5 dataset shapes as text for error messages, shared by the io readers. */
#ifndef RT_H5_SHAPE_H
#define RT_H5_SHAPE_H

#include <hdf5.h>

/* "(d0, d1, ...)" into out (cut at 128 bytes); returns out. */
const char *rt_h5_format_shape(int ndim, const hsize_t *dims, char out[128]);

#endif
