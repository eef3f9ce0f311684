#!/usr/bin/env python3
"""Build the QLoRA reference files the Rust tests compare against (bitsandbytes + PEFT on the CPU).

The base is the small random GPT-2 of tests/data/gpt2_ref/model (V=97, P=32, C=24, L=2, NH=3) and
its tokens (B=2, T=17), both written by scripts/make_gpt2_reference.py and not copied here.
For each 4-bit case, every block's c_attn, attn.c_proj, c_fc and mlp.c_proj (transformers' Conv1D,
weight [in, out]) is replaced by a real `bitsandbytes.nn.Linear4bit` holding the TRANSPOSED weight
[out, in] (nn.Linear layout, as transformers' bitsandbytes integration does for Conv1D), quantized
by bitsandbytes' own CPU path (blocksize 64, compute dtype f32). The forward is bitsandbytes' own
(it dequantizes and runs the f32 linear). Written to tests/data/qlora_ref/<case>/:
  model/                 config.json + model.safetensors: the model's state_dict as bitsandbytes
                         saves it (each quantized weight as Linear4bit state: `….weight` u8 packed,
                         `.absmax`, `.quant_map`, [`.nested_absmax`, `.nested_quant_map`],
                         `.quant_state.bitsandbytes__<fmt>`; the rest f32; lm_head.weight left out
                         as it is tied to wte)
  expected.safetensors   logits f32 [B, T, V], loss f32 []
Cases: `nf4`, `nf4_dq` (double quantization), `fp4`; and `lora_nf4_dq`: PEFT's LoRA (c_attn,
c_proj, c_fc; r=4, alpha=8) on the `nf4_dq` base, lora_A / lora_B overwritten with seeded
N(0, 0.3²) values (B ≠ 0), eval mode; its directory holds adapter/ (save_pretrained) and
expected.safetensors with logits, loss, grad.<key> per adapter tensor, and trainable_params i64 [2]
= PEFT's get_nb_trainable_parameters() (which counts a Params4bit as 2 × its packed bytes).
Run from the repository root:  python3 scripts/make_qlora_reference.py
"""
import json
import os
import shutil
import sys

import bitsandbytes as bnb
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

BASE = os.path.join("tests", "data", "gpt2_ref", "model")
TOKENS = os.path.join("tests", "data", "gpt2_ref", "tokens.safetensors")
OUT = os.path.join("tests", "data", "qlora_ref")
BASES = {"nf4": ("nf4", False), "nf4_dq": ("nf4", True), "fp4": ("fp4", True)}


def quantized_base(quant_type, double_quant):
    model = GPT2LMHeadModel.from_pretrained(BASE)
    for block in model.transformer.h:
        for parent, attr in [(block.attn, "c_attn"), (block.attn, "c_proj"),
                             (block.mlp, "c_fc"), (block.mlp, "c_proj")]:
            conv = getattr(parent, attr)
            w = conv.weight.data.t().contiguous()  # Conv1D [in, out] -> nn.Linear [out, in]
            lin = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=True, compute_dtype=torch.float32,
                                    compress_statistics=double_quant, quant_type=quant_type,
                                    quant_storage=torch.uint8)
            lin.weight = bnb.nn.Params4bit(w, requires_grad=False, blocksize=64,
                                           compress_statistics=double_quant, quant_type=quant_type)
            lin.bias = torch.nn.Parameter(conv.bias.data.clone())
            lin = lin.to("cpu")  # quantizes (bitsandbytes' CPU path)
            assert lin.weight.bnb_quantized
            setattr(parent, attr, lin)
    model.eval()
    return model


def run(model):
    tokens = load_file(TOKENS)
    out = model(input_ids=tokens["input_ids"], labels=tokens["labels"])
    return out, {
        "logits": out.logits.detach().float().contiguous(),  # (B, T, V)
        "loss": out.loss.detach().float().reshape(()).contiguous(),  # ()
    }


def save_model(model, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(os.path.join(BASE, "config.json"), os.path.join(out_dir, "config.json"))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}  # tied to wte
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


def make_base(name):
    quant_type, dq = BASES[name]
    model = quantized_base(quant_type, dq)
    out_dir = os.path.join(OUT, name)
    save_model(model, os.path.join(out_dir, "model"))
    with torch.no_grad():
        out, expected = run(model)
    save_file(expected, os.path.join(out_dir, "expected.safetensors"), metadata={"format": "pt"})
    return f"- `{name}`: {quant_type}, double quant {dq}; loss {out.loss.item():.6f}"


def make_lora():
    model = quantized_base("nf4", True)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                        target_modules=["c_attn", "c_proj", "c_fc"])
    model = get_peft_model(model, config)
    torch.manual_seed(300)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.3 * torch.randn_like(p))
    model.eval()
    out_dir = os.path.join(OUT, "lora_nf4_dq")
    model.save_pretrained(os.path.join(out_dir, "adapter"))
    os.remove(os.path.join(out_dir, "adapter", "README.md"))
    out, expected = run(model)
    out.loss.backward()
    saved = load_file(os.path.join(out_dir, "adapter", "adapter_model.safetensors"))
    for n, p in model.named_parameters():
        if p.requires_grad:
            key = n.replace(".default", "")
            assert key in saved, key
            expected["grad." + key] = p.grad.detach().float().contiguous()
    assert len(expected) - 2 == len(saved)
    line = model.get_nb_trainable_parameters()
    expected["trainable_params"] = torch.tensor(list(line), dtype=torch.int64)
    save_file(expected, os.path.join(out_dir, "expected.safetensors"), metadata={"format": "pt"})
    return (f"- `lora_nf4_dq`: LoRA r=4 alpha=8 on c_attn, c_proj, c_fc of the `nf4_dq` base; "
            f"loss {out.loss.item():.6f}; trainable params {line[0]} of {line[1]}")


def main():
    lines = [make_base(name) for name in BASES] + [make_lora()]
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(f"""# QLoRA reference files

Made by `python3 scripts/make_qlora_reference.py` (run from the repository root) with
bitsandbytes {bnb.__version__}, peft {peft.__version__}, torch {torch.__version__},
transformers {transformers.__version__}, Python {sys.version.split()[0]}, on the CPU.
Base model and tokens: `tests/data/gpt2_ref`. The projections are real `bnb.nn.Linear4bit`
layers holding the transposed Conv1D weight [out, in], blocksize 64; eval mode. Checked by
`tests/gpu/qlora.rs`.

{chr(10).join(lines)}
""")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
