"""PyTorch CPU reference for `glassgrad bench train-step`: the same char-level GPT-2 (default L=4,
C=128, NH=4, T=128, B=16, V=65) trained with AdamW and clipping, timed per step after a warm-up.

    python3 scripts/torch_train_step.py [--threads 2] [--steps 10]
    python3 scripts/torch_train_step.py --n-layer 2 --n-embd 64 --seq-len 64   # the tour's model
    python3 scripts/torch_train_step.py --gpt2-small   # examples/07's figures: GPT-2 small shapes,
        random weights: forward B1 T128 (no grad), greedy generation of 32 tokens with the KV
        cache after an 8-token prompt, and (with peft installed) a LoRA step at B4 T128
"""
import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--n-layer", type=int, default=4)
parser.add_argument("--n-embd", type=int, default=128)
parser.add_argument("--n-head", type=int, default=4)
parser.add_argument("--seq-len", type=int, default=128)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--gpt2-small", action="store_true")
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)


def median_seconds(f, repeats=3):
    f()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


if args.gpt2_small:
    model = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 small's shapes, random weights
    ids = torch.tensor([[i * 7919 % 50257 for i in range(128)]])
    with torch.no_grad():
        s = median_seconds(lambda: model(input_ids=ids).logits)
    print(f"torch {torch.__version__} CPU, {args.threads} threads, GPT-2 small forward B1 T128: "
          f"{s * 1e3:.0f} ms, {128 / s:.0f} tokens/s")
    prompt = torch.tensor([[i * 131 % 50257 for i in range(8)]])
    gen = lambda: model.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                 use_cache=True, pad_token_id=50256)
    s = median_seconds(gen, repeats=1)
    print(f"generate (KV cache, greedy): 32 tokens in {s:.2f} s, {32 / s:.1f} tokens/s")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise SystemExit("peft not installed: no LoRA step")
    lora = get_peft_model(GPT2LMHeadModel(GPT2Config()), LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
    batch = torch.randint(0, 50257, (4, 128))

    def lora_step():
        lora(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    s = median_seconds(lora_step)
    print(f"LoRA (r 8, c_attn) step B4 T128: {s:.2f} s, {4 * 128 / s:.0f} tokens/s")
    raise SystemExit(0)
B, T = args.batch_size, args.seq_len
config = GPT2Config(vocab_size=65, n_positions=T, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(config)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
ids = torch.randint(0, 65, (B, T))


def step():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
times = []
for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
times.sort()
median = times[len(times) // 2]
print(f"torch {torch.__version__} CPU, {args.threads} threads, L{args.n_layer} C{args.n_embd} T{T} B{B}: "
      f"{median * 1e3:.1f} ms/step, {B * T / median:.0f} tokens/s")
