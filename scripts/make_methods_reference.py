#!/usr/bin/env python3
"""Build the reference files of IA3, VeRA, prompt tuning and prefix tuning (PEFT on the CPU).

The base is the small random GPT-2 of tests/data/gpt2_ref/model (V=97, P=32, C=24, L=2, NH=3) and
its tokens (B=2, T=17, labels with -100), written by scripts/make_gpt2_reference.py. For each case,
`get_peft_model` wraps the base, then every trainable tensor is overwritten with seeded non-trivial
values (PEFT's own init is a no-op for IA3 (l = 1) and VeRA (lambda_b = 0), and would hide a
missing term). Written to tests/data/<method>_ref/<case>/:
  adapter/               save_pretrained: adapter_config.json + adapter_model.safetensors
  expected.safetensors   logits f32 [B, T, V] (the real tokens' positions only), loss f32 [],
                         grad.<key> for every trainable parameter (its adapter-file key, or for
                         prefix tuning's reparameterization MLP its module name without
                         ".default"), trainable_params i64 [2] = PEFT's (trainable, all)
  projection.safetensors (prefix_projection only) the MLP's weights under those names, since
                         PEFT's file holds only the table the MLP computes
Loss: transformers' rule on the real tokens' logits: logits[:, :-1] predict labels[:, 1:], -100
ignored. For prompt tuning that is not PEFT's own loss, which also scores the first real token
from the last virtual position (PEFT pads the labels with Vt × -100 and keeps Vt more logits);
interfaces.md returns the real positions' logits only, so the loss is theirs.
Run from the repository root:  python3 scripts/make_methods_reference.py
"""
import os
import sys

import peft
import torch
import torch.nn.functional as F
import transformers
from peft import (IA3Config, PrefixTuningConfig, PromptTuningConfig, VeraConfig,
                  get_peft_model)
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

BASE = os.path.join("tests", "data", "gpt2_ref", "model")
TOKENS = os.path.join("tests", "data", "gpt2_ref", "tokens.safetensors")

CASES = {
    ("ia3", "ia3"): IA3Config(task_type="CAUSAL_LM", fan_in_fan_out=True,
                              target_modules=["c_attn", "c_fc", "mlp.c_proj"],
                              feedforward_modules=["mlp.c_proj"]),
    ("vera", "vera"): VeraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, r=4,
                                 target_modules=["c_attn", "c_proj", "c_fc"],
                                 projection_prng_key=7),
    ("prompt", "prompt"): PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    ("prefix", "prefix"): PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    ("prefix", "prefix_projection"): PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=True,
        encoder_hidden_size=16),
}


def perturb(model, name, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "ia3_l" in n:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))  # l = 1 would be the base
            elif "vera_lambda" in n:
                p.copy_(0.5 * torch.randn_like(p))  # lambda_b = 0 would be the base
            elif name == "prefix_projection":
                p.copy_(0.5 * torch.randn_like(p))
            else:  # prompt / prefix tables: activations-sized values
                p.copy_(0.5 * torch.randn_like(p))


def real_logits_and_loss(model, method, vt, tokens):
    ids, labels = tokens["input_ids"], tokens["labels"]
    out = model(input_ids=ids)
    logits = out.logits
    if method == "prompt":
        logits = logits[:, vt:]  # PEFT keeps the Vt virtual positions in front
    v = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1),
                           ignore_index=-100)
    return logits, loss


def make_case(method, name, config, seed):
    base = GPT2LMHeadModel.from_pretrained(BASE)
    model = get_peft_model(base, config)
    perturb(model, name, seed)
    model.eval()
    out_dir = os.path.join("tests", "data", f"{method}_ref", name)
    model.save_pretrained(os.path.join(out_dir, "adapter"))
    os.remove(os.path.join(out_dir, "adapter", "README.md"))

    tokens = load_file(TOKENS)
    vt = getattr(config, "num_virtual_tokens", 0) or 0
    logits, loss = real_logits_and_loss(model, method, vt, tokens)
    loss.backward()
    expected = {
        "logits": logits.detach().float().contiguous(),  # (B, T, V)
        "loss": loss.detach().float().reshape(()).contiguous(),  # ()
    }
    saved = load_file(os.path.join(out_dir, "adapter", "adapter_model.safetensors"))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = n.replace(".default", "")
        if key == "prompt_encoder.embedding.weight" and name != "prefix_projection":
            key = "prompt_embeddings"  # the table is the file's one tensor
        elif key not in saved and name != "prefix_projection":
            key = "base_model.model." + key.removeprefix("base_model.model.")
            assert key in saved, f"{key} trains but is not saved ({sorted(saved)})"
        expected["grad." + key] = p.grad.detach().float().contiguous()
    if name == "prefix_projection":
        # PEFT saves only the table; the MLP's own weights, to rebuild the training-time model.
        mlp = {n.replace(".default", ""): p.detach().contiguous()
               for n, p in model.named_parameters() if p.requires_grad}
        save_file(mlp, os.path.join(out_dir, "projection.safetensors"), metadata={"format": "pt"})
    line = model.get_nb_trainable_parameters()
    expected["trainable_params"] = torch.tensor(list(line), dtype=torch.int64)
    save_file(expected, os.path.join(out_dir, "expected.safetensors"), metadata={"format": "pt"})

    # The file PEFT saved gives the same logits when PEFT loads it (prefix_projection: the saved
    # table replaces the MLP, as PEFT does in inference mode).
    again = peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE),
                                           os.path.join(out_dir, "adapter"))
    again.eval()
    with torch.no_grad():
        logits2, _ = real_logits_and_loss(again, method, vt, tokens)
    diff = (logits2 - logits.detach()).abs().max().item()
    assert diff < 1e-5, f"{name}: reloaded logits differ by {diff}"
    print(f"{method}/{name}: loss {loss.item():.6f}, saved {sorted((k, tuple(v.shape)) for k, v in saved.items())[:3]}…, "
          f"trainable {line[0]} of {line[1]}")
    return f"- `{name}`: loss {loss.item():.6f}; trainable params {line[0]} of {line[1]}"


def main():
    lines = {}
    for i, ((method, name), config) in enumerate(CASES.items()):
        lines.setdefault(method, []).append(make_case(method, name, config, seed=200 + i))
    for method, ls in lines.items():
        with open(os.path.join("tests", "data", f"{method}_ref", "README.md"), "w") as f:
            f.write(f"""# {method} reference files

Made by `python3 scripts/make_methods_reference.py` (run from the repository root) with
peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__},
Python {sys.version.split()[0]}, on the CPU. Base model and tokens: `tests/data/gpt2_ref`.
Every trainable tensor was overwritten with seeded non-trivial values after `get_peft_model`
(see the script's header); eval mode. `logits` are the real tokens' positions, `loss` is
transformers' rule on them. Each case directory holds `adapter/` (PEFT's `save_pretrained`) and
`expected.safetensors`.

{chr(10).join(ls)}
""")


if __name__ == "__main__":
    main()
