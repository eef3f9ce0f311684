#!/usr/bin/env python3
"""Build the AdaLoRA reference files the Rust tests compare against (PEFT on the CPU).

Base: the small random GPT-2 of tests/data/gpt2_ref/model (V=97, P=32, C=24, L=2, NH=3) and its
tokens (B=2, T=17), written by scripts/make_gpt2_reference.py. `get_peft_model` wraps c_attn,
c_proj (attention and MLP) and c_fc with AdaLoRA (init_r=4, target_r=2, lora_alpha=8,
orth_reg_weight=0.5, total_step=10, tinit=2, tfinal=2), then every lora_A, lora_E, lora_B is
overwritten with seeded N(0, 0.3²) values: PEFT's init has λ = lora_E = 0, which would make the
adapter a no-op. Written to tests/data/adalora_ref/:
  adapter/   save_pretrained before any masking (no rank_pattern, every triplet saved)
  trained/   save_pretrained after the 10 allocation steps below (rank_pattern, cut tensors);
             checked here to load back in PEFT with the same logits
  expected.safetensors:
    logits f32 [B, T, V], loss f32 [] (PEFT's: the task loss + the orthogonal regularizer),
    task_loss f32 [], grad.<key> for every lora_A/E/B under its adapter-file key,
    trainable_params i64 [2];
    the RankAllocator: for global_step t = 1..10, each parameter is moved by 0.05·N(0, 1) (a
    stand-in for the optimizer step, which also revives masked λ), its gradient set to seeded
    values with a per-triplet scale, then `update_and_allocate(t)` runs:
    alloc.<t>.value.<key>, alloc.<t>.grad.<key> (what the allocator saw), alloc.<t>.after.<E key>
    (λ after it masked), alloc.<t>.budget i64 [1] (its budget), and for t < 8 the allocator's
    alloc.<t>.ipt.<name> / alloc.<t>.unc.<name> (model-level names, as PEFT keys them: exp_avg_ipt, exp_avg_unc; reset at T − tfinal = 8);
    trained_logits f32 [B, T, V]: the model after step 10 (the trained/ adapter's logits).
Run from the repository root:  python3 scripts/make_adalora_reference.py
"""
import os
import sys

import peft
import torch
import transformers
from peft import AdaLoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

BASE = os.path.join("tests", "data", "gpt2_ref", "model")
TOKENS = os.path.join("tests", "data", "gpt2_ref", "tokens.safetensors")
OUT = os.path.join("tests", "data", "adalora_ref")
OPTIONS = dict(init_r=4, target_r=2, lora_alpha=8, orth_reg_weight=0.5, total_step=10, tinit=2,
               tfinal=2, deltaT=1, target_modules=["c_attn", "c_proj", "c_fc"])


def key(name):
    return name.replace(".default", "")


def adapter_params(model):
    return [(n, p) for n, p in model.named_parameters() if any(s in n for s in ("lora_A", "lora_E", "lora_B"))]


def main():
    torch.manual_seed(7)
    base = GPT2LMHeadModel.from_pretrained(BASE)
    model = get_peft_model(base, AdaLoraConfig(task_type="CAUSAL_LM", **OPTIONS))
    with torch.no_grad():
        for n, p in adapter_params(model):
            p.copy_(0.3 * torch.randn_like(p))
    model.eval()  # dropout is 0 anyway; the reference is eval-mode math
    model.save_pretrained(os.path.join(OUT, "adapter"))
    os.remove(os.path.join(OUT, "adapter", "README.md"))

    tokens = load_file(TOKENS)
    out = model(input_ids=tokens["input_ids"], labels=tokens["labels"])
    out.loss.backward()
    logits = out.logits.detach()
    task_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens["labels"][:, 1:].reshape(-1), ignore_index=-100)
    expected = {
        "logits": logits.float().contiguous(),  # (B, T, V)
        "loss": out.loss.detach().float().reshape(()).contiguous(),
        "task_loss": task_loss.float().reshape(()).contiguous(),
    }
    saved = load_file(os.path.join(OUT, "adapter", "adapter_model.safetensors"))
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert key(n) in saved, f"{key(n)} trains but is not saved"
            expected["grad." + key(n)] = p.grad.detach().float().contiguous()
    assert len(saved) == len(expected) - 3
    expected["trainable_params"] = torch.tensor(list(model.get_nb_trainable_parameters()), dtype=torch.int64)

    # The RankAllocator over 10 steps, fed seeded weights and gradients.
    gen = torch.Generator().manual_seed(11)
    for t in range(1, 11):
        with torch.no_grad():
            for n, p in adapter_params(model):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
                g = torch.randn(p.shape, generator=gen)
                r = p.shape[1] if "lora_B" in n else p.shape[0]
                scale = torch.rand(r, generator=gen) * 2  # a per-triplet scale: no near ties
                g = g * (scale.view(1, -1) if "lora_B" in n else scale.view(-1, 1))
                p.grad = g.contiguous()
                expected[f"alloc.{t}.value.{key(n)}"] = p.detach().clone().contiguous()
                expected[f"alloc.{t}.grad.{key(n)}"] = g.clone().contiguous()
        config = model.peft_config["default"]
        before = config.rank_pattern
        model.base_model.update_and_allocate(t)
        allocator = model.base_model.rankallocator
        for n in allocator.exp_avg_ipt:  # empty from step 8 on (reset at T - tfinal)
            expected[f"alloc.{t}.ipt.{key(n)}"] = allocator.exp_avg_ipt[n].clone().contiguous()
            expected[f"alloc.{t}.unc.{key(n)}"] = allocator.exp_avg_unc[n].clone().contiguous()
        budget = model.base_model.rankallocator.budget_schedule(t)[0]
        expected[f"alloc.{t}.budget"] = torch.tensor([budget], dtype=torch.int64)
        for n, p in adapter_params(model):
            if "lora_E" in n:
                expected[f"alloc.{t}.after.{key(n)}"] = p.detach().clone().contiguous()
        kept = {k: sum(v) for k, v in (config.rank_pattern or {}).items()}
        print(f"step {t}: budget {budget}, kept {sum(kept.values()) if kept else '-'}"
              f"{' (pattern changed)' if config.rank_pattern is not before else ''}")
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        trained_logits = model(input_ids=tokens["input_ids"]).logits
    expected["trained_logits"] = trained_logits.float().contiguous()
    model.save_pretrained(os.path.join(OUT, "trained"))
    os.remove(os.path.join(OUT, "trained", "README.md"))
    save_file(expected, os.path.join(OUT, "expected.safetensors"), metadata={"format": "pt"})

    # The trained directory loads back in PEFT (cut to the rank pattern) with the same logits.
    again = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE), os.path.join(OUT, "trained"))
    again.eval()
    with torch.no_grad():
        got = again(input_ids=tokens["input_ids"]).logits
    diff = (got - trained_logits).abs().max().item()
    assert diff < 1e-5, diff
    shapes = {k: list(v.shape) for k, v in load_file(os.path.join(OUT, "trained", "adapter_model.safetensors")).items()}
    print(f"loss {out.loss.item():.6f} (task {task_loss.item():.6f}); trained/ reloads in PEFT, "
          f"max logit diff {diff:.2e}; shapes {shapes}")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(f"""# AdaLoRA reference files

Made by `python3 scripts/make_adalora_reference.py` (run from the repository root) with
peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__},
Python {sys.version.split()[0]}, on the CPU. Base model and tokens: `tests/data/gpt2_ref`.
Config: {OPTIONS}. Every lora_A / lora_E / lora_B overwritten with seeded N(0, 0.3²) values.
`adapter/` is saved before masking, `trained/` after 10 RankAllocator steps (it reloads in PEFT
with the same logits, checked by the script). `expected.safetensors`: see the script's header.
Loss {out.loss.item():.6f} (task loss {task_loss.item():.6f}). Checked by `tests/gpu/adalora.rs`.
""")


if __name__ == "__main__":
    main()
