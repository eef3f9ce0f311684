"""GPT-2 token ids from transformers' GPT2TokenizerFast, for tests/io/text.rs (gpt2_bpe_*).

The Hub's "gpt2" files cannot be downloaded on the machines this runs on, so the tokenizer is
built from OpenAI's original GPT-2 vocabulary files, encoder.json (= the Hub's vocab.json) and
vocab.bpe (= merges.txt), as shipped inside the tiktoken-rs crate's assets. transformers' BPE
(Hugging Face tokenizers) is an implementation independent of tiktoken-rs's, which glassgrad uses.

Run: python3 scripts/make_bpe_reference.py ~/.cargo/registry/src/*/tiktoken-rs-0.12.1/assets
Writes tests/data/bpe_ref/gpt2_ids.json: [{"text": ..., "ids": [...]}, ...].
"""

import json
import sys
from pathlib import Path

from transformers import GPT2TokenizerFast

assets = Path(sys.argv[1])
# transformers 5 takes the vocabulary and merges themselves (4.x took file names).
vocab = json.loads((assets / "encoder.json").read_text(encoding="utf-8"))
merges = [
    tuple(line.split(" "))
    for line in (assets / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    if line
]
tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
assert len(tok) == 50257, len(tok)

TEXTS = [
    "Hello world",
    " the",
    "  two leading spaces, and   three inside",
    "trailing spaces   ",
    "line one\nline two\n\nafter a blank line\r\nwindows line",
    "\ttab\tseparated\t",
    "digits 0 7 42 1234 98765 3.14159 1,000,000 2026-12-07",
    "Unicode: café naïve Zürich — “quotes” … 日本語のテキスト 한국어 Ελληνικά",
    "emoji 😀👍🏽 and 🇫🇷 flags",
    "I'm can't won't they're we've he'd you'll",
    "<|endoftext|> is text here, not the special token",
    "def f(x):\n    return x**2  # code\n",
    "",
]

# glassgrad encodes "<|endoftext|>" inside a text as plain text (tiktoken's encode_ordinary);
# transformers maps it to the special id 50256 unless split_special_tokens=True, which is what
# "ids" uses. "ids_default" keeps transformers' default where the two differ.
records = []
for t in TEXTS:
    r = {"text": t, "ids": tok(t, split_special_tokens=True)["input_ids"]}
    default = tok(t)["input_ids"]
    if default != r["ids"]:
        r["ids_default"] = default
    records.append(r)
for r in records:
    assert tok.decode(r["ids"]) == r["text"], r
out = Path(__file__).resolve().parent.parent / "tests/data/bpe_ref/gpt2_ids.json"
out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")
print(f"wrote {out}: {len(records)} strings, {sum(len(r['ids']) for r in records)} ids")
