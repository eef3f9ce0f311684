"""PyTorch CPU reference for `glassgrad bench train-step`: the same char-level GPT-2 (default L=4,
C=128, NH=4, T=128, B=16, V=65) trained with AdamW and clipping, timed per step after a warm-up.

    python3 scripts/torch_train_step.py [--threads 2] [--steps 10]
    python3 scripts/torch_train_step.py --n-layer 2 --n-embd 64 --seq-len 64   # the tour's model
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
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
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
