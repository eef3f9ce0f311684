#!/usr/bin/env python3
"""Build the reference files for several LoRA adapters on one base (PEFT on the CPU): mixed
batches (`forward(..., adapter_names=[...])`) and `add_weighted_adapter` (linear, cat, svd).

The base and tokens are tests/data/gpt2_ref (B=2, T=17), as for scripts/make_lora_reference.py.
Three adapters are added to one PeftModel, each lora_A / lora_B overwritten with seeded
N(0, 0.3²) values (PEFT's init has B = 0, which would hide every mistake):
  a: r=4, alpha=8, c_attn + c_proj        b: r=4, alpha=4, c_attn + c_fc
  c: r=2, alpha=6, c_attn
Combined adapters (add_weighted_adapter), each then saved on its own:
  linear: [a, b] weights [0.7, -0.4]   (equal ranks; √|w·s|-weighted A and B, sign on A)
  cat:    [a, c] weights [0.5, 0.8]    (ranks 4 + 2 = 6; rows w·s·A, B side by side)
  svd:    [a, b] weights [0.7, 0.5]    (Σ w·ΔW truncated to rank max(r) = 4 by SVD)
Written to tests/data/combine_ref/:
  a/, b/, c/, linear/, cat/, svd/   save_pretrained of each adapter (adapter_config.json +
                                    adapter_model.safetensors)
  expected.safetensors              logits f32 [B, T, V] with each adapter active
                                    (`logits.<name>`), with no adapter (`logits.__base__`), and for
                                    the mixed batches `logits.mixed.b,__base__` and `logits.mixed.a,b`
                                    (row i uses the i-th name)
Run from the repository root:  python3 scripts/make_combine_reference.py
"""
import os
import shutil
import sys
import tempfile

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

BASE = os.path.join("tests", "data", "gpt2_ref", "model")
TOKENS = os.path.join("tests", "data", "gpt2_ref", "tokens.safetensors")
OUT = os.path.join("tests", "data", "combine_ref")
ADAPTERS = {
    "a": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"]),
    "b": dict(r=4, lora_alpha=4, target_modules=["c_attn", "c_fc"]),
    "c": dict(r=2, lora_alpha=6, target_modules=["c_attn"]),
}
COMBINED = {
    "linear": (["a", "b"], [0.7, -0.4]),
    "cat": (["a", "c"], [0.5, 0.8]),
    "svd": (["a", "b"], [0.7, 0.5]),
}
MIXED = [["b", "__base__"], ["a", "b"]]


def config(options):
    return LoraConfig(task_type="CAUSAL_LM", fan_in_fan_out=True, **options)


def save(model, name):
    """save_pretrained of one adapter into OUT/<name>/ (PEFT puts a non-default one in a subdir)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[name])
        src = os.path.join(tmp, name) if name != "default" else tmp
        dst = os.path.join(OUT, name)
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))


def main():
    os.makedirs(OUT, exist_ok=True)
    base = GPT2LMHeadModel.from_pretrained(BASE)
    names = list(ADAPTERS)
    model = get_peft_model(base, config(ADAPTERS[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config(ADAPTERS[name]))
    torch.manual_seed(200)
    with torch.no_grad():
        for n, p in sorted(model.named_parameters()):
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))
    for name, (adapters, weights) in COMBINED.items():
        model.add_weighted_adapter(adapters, weights, name, combination_type=name)
    model.eval()
    for name in names + list(COMBINED):
        save(model, name)

    tokens = load_file(TOKENS)
    expected = {}
    with torch.no_grad():
        for name in names + list(COMBINED):
            model.set_adapter(name)
            expected[f"logits.{name}"] = model(input_ids=tokens["input_ids"]).logits.contiguous()
        with model.disable_adapter():
            expected["logits.__base__"] = model(input_ids=tokens["input_ids"]).logits.contiguous()
        for rows in MIXED:
            out = model(input_ids=tokens["input_ids"], adapter_names=rows).logits
            expected["logits.mixed." + ",".join(rows)] = out.contiguous()
    save_file(expected, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(f"""# Several adapters on one base: reference files

Made by `python3 scripts/make_combine_reference.py` (run from the repository root) with
peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__},
Python {sys.version.split()[0]}, on the CPU. Base model and tokens: `tests/data/gpt2_ref`.
See the script's docstring for the adapters, the combinations and the expected logits.
Checked by `tests/gpu/multi.rs` and `tests/gpu/cli.rs`.
""")
    print("wrote", sorted(expected))


if __name__ == "__main__":
    main()
