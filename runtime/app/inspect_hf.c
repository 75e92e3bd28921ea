/* inspect_hf.c: `ringtrain inspect DIR` for a Hugging Face directory: what model.init_from = DIR would load. */
#include <math.h>
#include <stdlib.h>

#include "inspect.h"
#include "runtime/model/hf_model.h"

int rt_inspect_hf(const char *dir, FILE *out, rt_error *err) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    if (rt_config_from_hf(&cfg, dir, err)) return -1;
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    rt_view_table table;
    rt_param_table_build(&shape, &table, NULL);
    float *host = malloc_check(table.total * sizeof(float));
    int rc = rt_hf_read_params(&shape, &table, dir, host, err);
    if (rc == 0) {
        fprintf(out, "%s: Hugging Face %s directory, every tensor read (finite, shapes as config.json says)\n", dir,
                shape.family == RT_FAMILY_LLAMA ? "LlamaForCausalLM" : "GPT2LMHeadModel");
        fprintf(out,
                "model: %s, %d layers, d_model %d, %d heads (%d kv) of %d, d_ff %d, vocab %d (padded %d), "
                "max_seq_len %d, %s head, %zu parameters\n",
                rt_family_name(shape.family), shape.n_layers, shape.d_model, shape.n_heads, shape.n_kv_heads,
                shape.head_dim, shape.d_ff, shape.vocab_size, shape.padded_vocab, shape.max_seq_len,
                rt_shape_tied(&shape) ? "tied" : "untied", table.total);
        fprintf(out, "tensors as ringtrain holds them (name, shape, L2 norm):\n");
        for (int i = 0; i < table.count; i++) {
            const rt_named_view *v = &table.views[i];
            double sum_sq = 0.0;
            for (size_t j = 0; j < v->numel; j++)
                sum_sq += (double)host[v->offset + j] * host[v->offset + j];
            char dims[64];
            if (v->ndim == 2)
                snprintf(dims, sizeof dims, "(%zu, %zu)", v->shape[0], v->shape[1]);
            else
                snprintf(dims, sizeof dims, "(%zu)", v->shape[0]);
            fprintf(out, "  %-28s  %-14s  norm %.9g\n", v->name, dims, sqrt(sum_sq));
        }
    }
    free(host);
    rt_view_table_free(&table);
    return rc;
}
