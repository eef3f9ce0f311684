#!/usr/bin/env python3
"""Build the GPT-2 reference files the Rust tests compare against (llm.c's "debug state").

A tiny random GPT2LMHeadModel at deliberately odd sizes (V=97, P=32, C=24, L=2, NH=3, so HS=8), no
dropout, fixed seed. Written to tests/data/gpt2_ref/:
  model/                 save_pretrained (config.json + model.safetensors), exactly as transformers writes it
  model_bare/            the same weights as a bare GPT2Model checkpoint (keys without `transformer.`,
                         plus the old `attn.bias` / `attn.masked_bias` buffers), like the public "gpt2"
  tokens.safetensors     input_ids i64 [B=2, T=17], labels i64 [2, 17] with a few -100
  expected.safetensors   logits f32 [2, 17, 97], loss f32 [], grad.<name> for every parameter under its
                         transformers name in the stored (Conv1D [in, out]) layout; the tied wte's
                         gradient includes the LM head's contribution (torch adds it by itself)
  README.md              how they were made, with the torch/transformers versions

The default init (std 0.02, LayerNorm 1/0) makes logits nearly uniform and hides bugs, so every
parameter is perturbed afterwards: weights ~ N(0, 0.2²), biases ~ N(0, 0.1²), LayerNorm weights
1 + N(0, 0.1²). Run from the repository root:  python3 scripts/make_gpt2_reference.py
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join("tests", "data", "gpt2_ref")
SEED = 1234
B, T = 2, 17


def main():
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside this vocabulary
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.eval()  # no dropout anyway (all pdrop 0); eval() makes it explicit

    model_dir = os.path.join(OUT, "model")
    model.save_pretrained(model_dir, safe_serialization=True)

    # Tokens: random ids, labels equal to them except a few ignored positions (-100).
    input_ids = torch.randint(0, config.vocab_size, (B, T), dtype=torch.int64)  # (B, T)
    labels = input_ids.clone()  # (B, T)
    labels[0, 0] = -100
    labels[0, 5] = -100
    labels[1, 9] = -100
    labels[1, 16] = -100
    save_file({"input_ids": input_ids.contiguous(), "labels": labels.contiguous()},
              os.path.join(OUT, "tokens.safetensors"), metadata={"format": "pt"})

    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    expected = {
        "logits": out.logits.detach().float().contiguous(),  # (B, T, V)
        "loss": out.loss.detach().float().reshape(()).contiguous(),  # ()
    }
    for name, p in model.named_parameters():  # tied lm_head is not listed separately
        expected["grad." + name] = p.grad.detach().float().contiguous()
    save_file(expected, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})

    # The bare GPT2Model checkpoint: keys without `transformer.`, plus the buffers old checkpoints carry.
    bare = {k: v.detach().clone().contiguous() for k, v in model.transformer.state_dict().items()}
    P = config.n_positions
    for i in range(config.n_layer):
        bare[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).reshape(1, 1, P, P).contiguous()
        bare[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    bare_dir = os.path.join(OUT, "model_bare")
    os.makedirs(bare_dir, exist_ok=True)
    save_file(bare, os.path.join(bare_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(bare_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(f"""# GPT-2 reference files

Made by `python3 scripts/make_gpt2_reference.py` (run from the repository root) with
torch {torch.__version__}, transformers {transformers.__version__}, Python {sys.version.split()[0]}, on the CPU,
seed {SEED}.

- `model/`: a random `GPT2LMHeadModel` (vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=3,
  all dropout 0), every parameter perturbed away from the default init (weights N(0, 0.2²), biases
  N(0, 0.1²), LayerNorm weights 1 + N(0, 0.1²)), written by `save_pretrained` (safetensors).
- `model_bare/`: the same weights as a bare `GPT2Model` checkpoint: keys without `transformer.`, plus
  `h.{{i}}.attn.bias` (causal mask [1, 1, 32, 32]) and `h.{{i}}.attn.masked_bias` buffers to be ignored.
- `tokens.safetensors`: `input_ids` i64 [{B}, {T}], `labels` i64 [{B}, {T}] (-100 at [0,0], [0,5], [1,9], [1,16]).
- `expected.safetensors`: `logits` f32 [{B}, {T}, 97], `loss` f32 [] (= {out.loss.item():.6f}), and
  `grad.<name>` for every parameter (stored Conv1D [in, out] layout; `grad.transformer.wte.weight`
  includes the tied LM head's contribution).
""")
    print(f"loss {out.loss.item():.6f}; wrote {OUT}")


if __name__ == "__main__":
    main()
