#!/usr/bin/env python3
"""Build the LoRA reference files the Rust tests compare against (PEFT on the CPU).

The base is the small random GPT-2 of tests/data/gpt2_ref/model (V=97, P=32, C=24, L=2, NH=3) and
its tokens (B=2, T=17, labels with -100), both written by scripts/make_gpt2_reference.py and not
copied here. For each case below, `get_peft_model` wraps the base, then every lora_A and lora_B is
overwritten with seeded N(0, 0.3²) values: PEFT's own init has B = 0, which would make the adapter
a no-op and hide a missing transpose or scaling. Written to tests/data/lora_ref/<case>/:
  adapter/               save_pretrained: adapter_config.json + adapter_model.safetensors
  expected.safetensors   logits f32 [B, T, V], loss f32 [], and grad.<key> for every trainable
                         parameter under its key in adapter_model.safetensors, and
                         trainable_params i64 [2] = PEFT's (trainable, all) parameter counts
Cases: `lora` (c_attn, c_proj, c_fc; r=4, alpha=8, lora_dropout 0.1 which eval mode must ignore),
`rslora` (the same targets, r=2, alpha=6, use_rslora: scale alpha/sqrt(r)), `bias_lora_only`
(c_proj only, which matches attn.c_proj and mlp.c_proj; r=2, alpha=4, bias lora_only, so the two
c_proj biases train and are saved in the adapter file), `bias_all` (c_attn; r=2, alpha=2, bias
all: every bias of the model trains, LayerNorm's included, saved under its own name), `dora`
(c_attn, c_proj, c_fc; r=4, alpha=8, use_dora: every lora_magnitude_vector is also scaled by
seeded 1 + 0.2·N(0, 1) factors, so the magnitude is neither PEFT's init ‖W‖ nor ‖W + s·B·A‖).
Run from the repository root:  python3 scripts/make_lora_reference.py [CASE …]
(no CASE: every case; the README lists every case from its expected.safetensors either way).
Reruns give the same tensors bit for bit; only the order of target_modules in adapter_config.json
may change (PEFT stores them as a Python set, whose order depends on PYTHONHASHSEED).
"""
import os
import sys

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

BASE = os.path.join("tests", "data", "gpt2_ref", "model")
TOKENS = os.path.join("tests", "data", "gpt2_ref", "tokens.safetensors")
OUT = os.path.join("tests", "data", "lora_ref")
TARGETS = ["c_attn", "c_proj", "c_fc"]
CASES = {
    "lora": dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=TARGETS),
    "rslora": dict(r=2, lora_alpha=6, use_rslora=True, target_modules=TARGETS),
    "bias_lora_only": dict(r=2, lora_alpha=4, bias="lora_only", target_modules=["c_proj"]),
    "bias_all": dict(r=2, lora_alpha=2, bias="all", target_modules=["c_attn"]),
    "dora": dict(r=4, lora_alpha=8, use_dora=True, target_modules=TARGETS),
}


def make_case(name, options, seed):
    base = GPT2LMHeadModel.from_pretrained(BASE)
    config = LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, **options)
    model = get_peft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))
            elif "lora_magnitude_vector" in n:  # DoRA's m, initialised to ‖W‖ per output feature
                p.mul_(1.0 + 0.2 * torch.randn_like(p))
            elif p.requires_grad:  # the biases that bias="lora_only" trains
                p.add_(0.05 * torch.randn_like(p))
    model.eval()  # no dropout: the reference is eval-mode math
    out_dir = os.path.join(OUT, name)
    model.save_pretrained(os.path.join(out_dir, "adapter"))
    os.remove(os.path.join(out_dir, "adapter", "README.md"))  # PEFT's model card, not needed here

    tokens = load_file(TOKENS)
    out = model(input_ids=tokens["input_ids"], labels=tokens["labels"])
    out.loss.backward()
    expected = {
        "logits": out.logits.detach().float().contiguous(),  # (B, T, V)
        "loss": out.loss.detach().float().reshape(()).contiguous(),  # ()
    }
    # The file's keys: the parameter name with the adapter name (".default") removed.
    saved = load_file(os.path.join(out_dir, "adapter", "adapter_model.safetensors"))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = n.replace(".default", "")  # a wrapped layer's bias keeps ".base_layer."
        if key not in saved and key.endswith("lora_magnitude_vector.weight"):
            key = key[: -len(".weight")]  # PEFT saves DoRA's m without ".weight"
        assert key in saved, f"{key} is trained but not in the adapter file ({sorted(saved)})"
        expected["grad." + key] = p.grad.detach().float().contiguous()
    assert len(expected) - 2 == len(saved), "every saved tensor has a gradient"
    line = model.get_nb_trainable_parameters()
    expected["trainable_params"] = torch.tensor(list(line), dtype=torch.int64)  # [trainable, all]
    save_file(expected, os.path.join(out_dir, "expected.safetensors"), metadata={"format": "pt"})
    print(f"{name}: loss {out.loss.item():.6f}, {len(saved)} adapter tensors, "
          f"trainable {line[0]} of {line[1]}")
    return out.loss.item(), line


def main():
    chosen = sys.argv[1:] or list(CASES)
    for i, (name, options) in enumerate(CASES.items()):
        if name in chosen:
            make_case(name, options, seed=100 + i)
    lines = []
    for name, options in CASES.items():
        expected = load_file(os.path.join(OUT, name, "expected.safetensors"))
        loss, (trainable, total) = expected["loss"].item(), expected["trainable_params"].tolist()
        lines.append(f"- `{name}`: {options}; loss {loss:.6f}; trainable params {trainable} of {total}")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(f"""# LoRA reference files

Made by `python3 scripts/make_lora_reference.py` (run from the repository root) with
peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__},
Python {sys.version.split()[0]}, on the CPU. Base model and tokens: `tests/data/gpt2_ref`.
Every lora_A / lora_B was overwritten with seeded N(0, 0.3²) values after `get_peft_model`
(B ≠ 0, so the adapter term is not zero); the model is in eval mode (no dropout).

Each case directory holds `adapter/` (PEFT's `save_pretrained`) and `expected.safetensors`
(`logits`, `loss`, `grad.<key>` for every trainable parameter under its adapter-file key, and
`trainable_params` = PEFT's [trainable, all] parameter counts). Checked by `tests/gpu/lora.rs`.

{chr(10).join(lines)}
""")


if __name__ == "__main__":
    main()
