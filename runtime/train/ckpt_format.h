/* ckpt_format.h: the root attributes of a training checkpoint, shared by its writer (train_state.c) and its
 * readers (train_state.c, inspect.c). The datasets and the text attribute "config" are described in
 * docs/architecture.md, "Checkpoint layout". */
#ifndef RT_CKPT_FORMAT_H
#define RT_CKPT_FORMAT_H

/* The int64 attributes, in file order. */
enum {
    RT_CKPT_STEP,
    RT_CKPT_TOKENS,
    RT_CKPT_OPTIMIZER_STEPS,
    RT_CKPT_WORLD_SIZE,
    RT_CKPT_DP,
    RT_CKPT_SP,
    RT_CKPT_ZERO_STAGE,
    RT_CKPT_SEED,
    RT_CKPT_PARAMS,
    RT_CKPT_LOADER_EPOCH,
    RT_CKPT_LOADER_CURSOR,
    RT_CKPT_LOADER_SEED,
    RT_CKPT_LOADER_FIRST_WINDOW,
    RT_CKPT_LOADER_WINDOWS,
    RT_CKPT_N_INT_ATTRS
};
extern const char *const rt_ckpt_int_attr_keys[RT_CKPT_N_INT_ATTRS];

#endif
