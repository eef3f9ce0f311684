#!/usr/bin/env python3
"""Check that adapter directories glassgrad saved load in PEFT and give glassgrad's logits.

Make them with:  cargo run --release --example 07_prompt_prefix_ia3_bitfit -- /tmp/methods
(each of /tmp/methods/{prompt,prefix,ia3} holds adapter_config.json, adapter_model.safetensors
and logits.safetensors, the adapter's logits on the example's tokens), then, from the
repository root:
  python3 scripts/check_methods_in_peft.py /tmp/methods/prompt /tmp/methods/prefix /tmp/methods/ia3
(VeRA: example 06 and scripts/check_lora_in_peft.py.) The base is tests/data/gpt2_ref/model;
the tokens are the examples' (i·7 mod 97, B=2, T=17). Prompt tuning: PEFT returns Vt more
positions in front, which are dropped before comparing (ours are the real tokens' only).
"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel


def check(adapter_dir):
    base = GPT2LMHeadModel.from_pretrained("tests/data/gpt2_ref/model")
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    config = json.load(open(f"{adapter_dir}/adapter_config.json"))
    ids = torch.tensor([(i * 7) % 97 for i in range(2 * 17)]).reshape(2, 17)  # (B, T)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if config["peft_type"] == "PROMPT_TUNING":
        logits = logits[:, config["num_virtual_tokens"]:]  # (B, T, V)
    ours = load_file(f"{adapter_dir}/logits.safetensors")["logits"]
    diff = (ours - logits).abs().max().item()
    scale = logits.abs().max().item()
    print(f"PEFT loaded {adapter_dir} ({config['peft_type']}); max |ours - PEFT| = {diff:.2e} "
          f"(logits up to {scale:.2f})")
    # Two f32 forwards summed in different orders: 1e-5 of the logit scale.
    return diff <= 1e-5 * max(scale, 1.0)


def main():
    failed = [d for d in sys.argv[1:] if not check(d)]
    if failed:
        sys.exit(f"FAIL: the logits differ for {failed}")


if __name__ == "__main__":
    main()
