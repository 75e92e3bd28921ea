"""The transformers side of the Hugging Face tests: tiny models made by transformers itself, and the
references ringtrain is compared with (PyTorch, fp32, eager attention)."""
import torch
import transformers

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

VOCAB, HIDDEN, LAYERS, HEADS, MAXPOS, FFN = 300, 64, 2, 4, 64, 96


def llama_config(kv_heads=2, tied=False, head_dim=None, vocab=VOCAB):
    # theta and eps away from both libraries' defaults, so a key that is not read shows in the loss
    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, head_dim=head_dim, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=kv_heads, max_position_embeddings=MAXPOS,
        rms_norm_eps=3e-5, initializer_range=0.2, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})


def gpt2_config():
    return transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAXPOS,
                                   initializer_range=0.2, bos_token_id=0, eos_token_id=1)


def make_model(config, seed):
    """A randomly initialised model; norm gains and biases drawn too (transformers sets them to 1 and 0), so a
    swapped or dropped one changes the output."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    return model.eval()


def save(model, directory, dtype=torch.float32, max_shard_size=None):
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(directory, **kwargs)
    model.float()


def load(directory):
    """fp32, eager attention, dropout off; bf16 files widen exactly."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    # transformers fills a missing tensor with random values and only warns: here that is a failure
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not problems, f"{directory}: transformers did not load it cleanly: {problems}"
    return model.eval()


def reference_step(model, tokens):
    """Mean cross-entropy of every target of one window and the gradient's global L2 norm (a tied parameter is
    one Parameter object, so it counts once)."""
    model.zero_grad()
    ids = torch.as_tensor(tokens, dtype=torch.long)[None]
    logits = model(ids[:, :-1]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return float(loss.detach()), float(norm)


def window_loss(model, tokens):
    with torch.no_grad():
        ids = torch.as_tensor(tokens, dtype=torch.long)[None]
        logits = model(ids[:, :-1]).logits[0]
        return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


def greedy(model, prompt, n):
    """Greedy continuation and the logits that chose each token, (n, vocab)."""
    with torch.no_grad():
        out = model.generate(torch.as_tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    return out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits).float().numpy()
