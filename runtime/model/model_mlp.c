/*
 * model_mlp.c: the MLP branch of a layer, forward and backward, over token tiles (the tiled MLP of
 * DeepSpeed ALST).
 *
 *   fc = norm2 @ fc_w^T + fc_b      act = gelu(fc) (gpt2) or swiglu(fc) (llama)      out = act @ fcproj_w^T + fcproj_b
 *
 * Every step acts on each token alone, so the N tokens of a micro-batch can go through in tiles of
 * c->mlp_tile rows: the (tile, FC) and (tile, F) intermediates then exist for one tile at a time, in
 * acts->fc / acts->act (forward) and c->d_fc / c->d_act (backward), which are allocated tile-sized. At long
 * sequence lengths these are the largest per-token activations of a layer (FC + F floats against C), which
 * is why they are worth not holding for all N tokens.
 *
 * Invariant: after the forward, acts->fc and acts->act hold the rows of its LAST tile. When the micro-batch
 * fits in one tile (untiled: mlp_tile = the model's token capacity, or a batch no larger than a tile) that
 * is the whole batch, and backward uses them as they are: exactly the op sequence of the untiled MLP, so
 * its results are bit for bit those of the code before tiling. With several tiles, backward recomputes each
 * tile's fc and act from norm2 (kept by the layer) right before the tile's gradients: one more fc matmul and
 * activation per tile is the price of not storing N x (FC + F) floats per layer.
 *
 * Tiling changes only the order in which the weight and bias gradients add up their tokens (matmul_backward
 * accumulates tile after tile), so tiled and untiled agree to fp32 rounding, not bitwise. At a fixed tile
 * size keep, recompute and offload still agree bitwise: they run the same ops on the same inputs.
 */
#include "layer.h"

/* fc and act of the n tokens at norm2_rows, into the tile scratch of a. */
static void fc_act_forward(const rt_layer_ctx *c, const rt_layer_params *p, const rt_layer_acts *a,
                           const float *norm2_rows, size_t n) {
    const rt_backend *be = c->backend;
    const rt_model_shape *s = c->shape;
    const size_t C = (size_t)s->d_model, F = (size_t)s->d_ff, FC = rt_fc_width(s);
    rt_be_matmul_forward(be, a->fc, norm2_rows, p->fc_w, p->fc_b, n, (int)C, (int)FC);
    if (s->family == RT_FAMILY_GPT2)
        rt_be_gelu_forward(be, a->act, a->fc, n * F);
    else
        rt_be_swiglu_forward(be, a->act, a->fc, n, (int)F);
}

static size_t tile_rows(const rt_layer_ctx *c, size_t N, size_t t0) {
    return N - t0 < c->mlp_tile ? N - t0 : c->mlp_tile;
}

void rt_mlp_forward(const rt_layer_ctx *c, const rt_layer_params *p, const rt_layer_acts *a, float *out, size_t N) {
    const rt_backend *be = c->backend;
    const size_t C = (size_t)c->shape->d_model, F = (size_t)c->shape->d_ff;
    for (size_t t0 = 0; t0 < N; t0 += c->mlp_tile) {
        const size_t n = tile_rows(c, N, t0);
        fc_act_forward(c, p, a, a->norm2 + t0 * C, n);
        rt_be_matmul_forward(be, out + t0 * C, a->act, p->fcproj_w, p->fcproj_b, n, (int)F, (int)C);
        rt_layer_progress(c);
    }
}

void rt_mlp_backward(const rt_layer_ctx *c, const rt_layer_params *p, const rt_layer_params *g, const rt_layer_acts *a,
                     const float *d_out, float *d_norm, size_t N) {
    const rt_backend *be = c->backend;
    const rt_model_shape *s = c->shape;
    const size_t C = (size_t)s->d_model, F = (size_t)s->d_ff, FC = rt_fc_width(s);
    const int recompute = N > c->mlp_tile; /* else the forward's one tile is still in a (see the invariant) */
    for (size_t t0 = 0; t0 < N; t0 += c->mlp_tile) {
        const size_t n = tile_rows(c, N, t0);
        const float *norm2_rows = a->norm2 + t0 * C;
        if (recompute) fc_act_forward(c, p, a, norm2_rows, n);
        rt_be_memset_zero(be, c->d_act, n * F * sizeof(float));
        rt_be_matmul_backward(be, c->d_act, g->fcproj_w, g->fcproj_b, d_out + t0 * C, a->act, p->fcproj_w, n, (int)F,
                              (int)C);
        rt_be_memset_zero(be, c->d_fc, n * FC * sizeof(float));
        if (s->family == RT_FAMILY_GPT2)
            rt_be_gelu_backward(be, c->d_fc, a->fc, c->d_act, n * F);
        else
            rt_be_swiglu_backward(be, c->d_fc, c->d_act, a->fc, n, (int)F);
        rt_layer_progress(c);
        rt_be_memset_zero(be, d_norm + t0 * C, n * C * sizeof(float));
        rt_be_matmul_backward(be, d_norm + t0 * C, g->fc_w, g->fc_b, c->d_fc, norm2_rows, p->fc_w, n, (int)C, (int)FC);
        rt_layer_progress(c);
    }
}
