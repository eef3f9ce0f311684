#!/usr/bin/env python3
"""Check that an adapter directory glassgrad saved loads in PEFT and gives glassgrad's logits.

Make one with:  cargo run --release --example 04_lora_from_scratch -- /tmp/lora_adapter
(it writes adapter_config.json, adapter_model.safetensors and logits.safetensors, the adapter's
logits on the example's tokens), then, from the repository root:
  python3 scripts/check_lora_in_peft.py /tmp/lora_adapter
The base is tests/data/gpt2_ref/model; the tokens are the example's (i·7 mod 97, B=2, T=17).
"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel


def main():
    adapter_dir = sys.argv[1]
    base = GPT2LMHeadModel.from_pretrained("tests/data/gpt2_ref/model")
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ids = torch.tensor([(i * 7) % 97 for i in range(2 * 17)]).reshape(2, 17)  # (B, T)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (B, T, V)
    ours = load_file(f"{adapter_dir}/logits.safetensors")["logits"]
    diff = (ours - logits).abs().max().item()
    scale = logits.abs().max().item()
    print(f"PEFT loaded {adapter_dir}; max |ours - PEFT| = {diff:.2e} (logits up to {scale:.2f})")
    model.print_trainable_parameters()
    # Two f32 forwards summed in different orders: 1e-5 of the logit scale.
    if diff > 1e-5 * max(scale, 1.0):
        sys.exit("FAIL: the logits differ")


if __name__ == "__main__":
    main()
