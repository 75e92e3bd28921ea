/* trainer_internal.h: the trainer's state, shared by the step (train.c) and its checkpoints (train_state.c). */
#ifndef RT_TRAINER_INTERNAL_H
#define RT_TRAINER_INTERNAL_H

#include <signal.h>
#include <stdint.h>

#include "io/loader.h"
#include "io/tokens.h"
#include "seqpar/seqpar.h"
#include "shard/mesh.h"
#include "shard/optimizer.h"
#include "shard/zero_hooks.h"
#include "train.h"

/* One micro-batch's host arrays. */
typedef struct {
    int32_t *inputs, *targets;
    int64_t *pos;
    int64_t *doc_pos, *doc_first; /* packed documents only (data.document_separator), else NULL */
    /* the balanced document layout over sp > 1 ranks (parallel.document_layout), else NULL: per sequence */
    seqpar_window_layout *layouts;
    rt_span *pieces;  /* (sequences * sp * max_pieces) */
    size_t *n_pieces; /* (sequences * sp) */
} host_batch;

struct rt_trainer {
    rt_config cfg;
    rt_comm *world;
    rt_mesh mesh;
    int mesh_ready;
    /* Device planes (comm_device.h) of the world (ZeRO's reductions and gathers) and of the sp group (the
     * ring); the mesh's communicators stay the host plane. */
    rt_comm *dev_world, *dev_sp;
    int dp_rank;
    rt_span spans[2];
    size_t local_len, local_seqs;
    const rt_backend *backend;
    int owns_backend; /* opened by rt_trainer_init from device.kind (closed at free), not given to init_on */
    rt_device_memory mem;
    seqpar_ctx seqpar;
    rt_model model;
    int model_ready;
    rt_optimizer opt;
    /* ZeRO stages 2-3 keep the model's gradients (and at stage 3 its parameters), hooked into it. */
    rt_zero_hooks zero;
    rt_token_file train_tokens, val_tokens;
    int has_train_file, has_val_file;
    rt_loader train_loader, val_loader;
    int has_train_loader, has_val;
    host_batch *micro;     /* (grad_accum) */
    host_batch *loading;   /* the micro-batch the loader fills (its split callback writes the layouts there) */
    size_t *layout_starts; /* (seq_len) scratch: a window's document starts */
    void *layout_scratch;  /* seqpar_doc_layout's */
    int next_step;
    int64_t tokens_seen; /* training tokens of the steps done (the batch size may change on resume) */
    const volatile sig_atomic_t *stop_flag; /* polled between layers when set (rt_trainer_stop_on) */
    float *preclip_probe; /* (Ψ) when a test asked for each step's reduced gradient before clipping */
};

#endif
