"""Reference vectors for glassgrad's NF4/FP4 quantization, made with bitsandbytes' own CPU path.

    pip install torch bitsandbytes safetensors
    python scripts/make_nf4_reference.py            # writes tests/data/nf4_ref/*.safetensors

Checked with bitsandbytes 0.50.2, torch 2.15 (CPU). bitsandbytes' CPU `quantize_4bit` is its
"default" torch kernel (bucketize against the f32 midpoints); the nested 8-bit absmax goes through
its C++ `quantize_blockwise` CPU kernel (a 65536-entry lookup table). tests/quant.rs compares our
codes, absmax and nested statistics with these byte for byte.

Keys in cases.safetensors, for case k and each config `{fmt}.b{blocksize}.{plain|dq}`:
  c{k}.input                          f32, the tensor to quantize (2-D, row-major)
  c{k}.{cfg}.weight                   u8 [ceil(n/2)], packed codes (first element high nibble)
  c{k}.{cfg}.absmax                   f32 [blocks] (plain) or u8 [blocks] (dq)
  c{k}.{cfg}.nested_absmax, .offset   f32 (dq only)
  c{k}.{cfg}.dequant                  f32, dequantize_4bit's output through bitsandbytes' torch
                                      kernel (small cases, blocksize 64/128; see dequantize_reference)
plus nf4_code, fp4_code, dynamic_map (the 256-entry nested map), and in linear4bit.safetensors
one QuantState.as_dict(packed=True) per format (the keys Linear4bit saves, under `weight.`).
"""
import os
import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "nf4_ref")
g = torch.Generator().manual_seed(16)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def ties():
    # values exactly on the NF4 and FP4 thresholds (midpoints) and one ulp either side, in
    # blocks whose absmax is exactly 1.0 (so w/absmax == w); negative and positive zero too
    rows = []
    for t in ("nf4", "fp4"):
        code = F.get_4bit_type(t, device="cpu")
        s = torch.sort(code).values
        mid = (s[:-1] + s[1:]) / 2
        up = torch.nextafter(mid, torch.tensor(2.0))
        dn = torch.nextafter(mid, torch.tensor(-2.0))
        vals = torch.cat([torch.tensor([1.0, -1.0, 0.0, -0.0]), mid, up, dn, code, -code])
        vals = torch.cat([vals, torch.zeros(128 - vals.numel())])
        rows.append(vals)
    return torch.stack(rows)  # (2, 128)


def rounding_witnesses():
    # Values whose code depends on HOW bitsandbytes scales: w * (1/absmax) (full blocks) and
    # w / absmax (the tail block) round differently by an ulp, and these land on a threshold in
    # between. Shape (2, 96): at blocksize 128, elements 0..127 are a full block, 128..191 the tail.
    f = np.float32
    rng = np.random.default_rng(7)
    bounds = []
    for t in ("nf4", "fp4"):
        s = torch.sort(F.get_4bit_type(t, device="cpu")).values.numpy()
        bounds += list((s[:-1] + s[1:]) / f(2))
    out = np.zeros(192, np.float32)
    for start, length in ((0, 128), (128, 64)):
        a = f(rng.uniform(0.5, 3.0))
        out[start] = a
        found = []
        while len(found) < length - 1:
            m = f(rng.choice(bounds))
            x = f(m * a)
            for cand in (np.nextafter(x, f(-9)), x, np.nextafter(x, f(9))):
                d, r = f(cand / a), f(cand * (f(1) / a))
                if (d <= m) != (r <= m):
                    found.append(cand)
                    break
        out[start + 1 : start + length] = found
    return torch.from_numpy(out.reshape(2, 96))


def cases():
    c = []
    c.append(randn(3, 70))  # 210: not a multiple of any blocksize
    c.append(torch.tensor([[0.3]]))  # one element
    c.append(randn(5, 13))  # 65: odd count, a padded last byte
    z = randn(7, 64)
    z[0] = 0.0  # a whole zero block
    z[6, 40:] = 0.0  # and a zero tail at blocksize 64 after 448 = 7*64 ... (full block here)
    c.append(z)
    zt = randn(3, 43)  # 129: tail block of 1 (bs 64/128) that is zero
    zt[2, 42] = 0.0
    c.append(zt)
    c.append(ties())
    m = randn(4, 96)
    m[0] *= 1e30  # huge
    m[1] *= 1e-30  # tiny
    m[2, :50] = torch.tensor(1e-40).expand(50)  # subnormals (absmax below the 1e-38 clamp)
    m[2, 50:] *= 1e-42
    m[3, :48] *= 1e20
    m[3, 48:] *= 1e-20  # mixed scales inside one block of 128
    c.append(m)
    c.append(rounding_witnesses())
    big = randn(16, 600)  # 9600: 300 blocks at 32 (two nested blocks of 256), 150 at 64
    big[5] *= 40.0
    c.append(big)
    return c


def dequantize_reference(q, st):
    # dequantize_4bit through bitsandbytes' portable torch kernel ("default" backend, the one
    # non-AVX512 CPUs run). NOTE: on AVX512 CPUs bitsandbytes 0.50.2 sends last dims that are a
    # multiple of 16 to a C++ kernel that indexes absmax per row (absmax[row * (cols // blocksize)
    # + k]): wrong when cols is not a multiple of the blocksize; we print the configs it affects.
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = st.absmax
    if st.nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    code = F.get_4bit_type(st.quant_type, device="cpu")
    out = _dequantize_4bit_compute(q.reshape(-1), absmax, code, st.blocksize, st.shape, torch.float32)
    return out.reshape(-1).clone()


avx512_disagree = []


def main():
    os.makedirs(OUT, exist_ok=True)
    out = {
        "nf4_code": F.get_4bit_type("nf4", device="cpu"),
        "fp4_code": F.get_4bit_type("fp4", device="cpu"),
        "dynamic_map": F.create_dynamic_map(),
    }
    for k, x in enumerate(cases()):
        x = x.float().contiguous()
        out[f"c{k}.input"] = x
        small = x.numel() < 1000
        blocksizes = (32, 64, 128, 256, 4096) if small else (32, 64)
        for fmt in ("nf4", "fp4"):
            for bs in blocksizes:
                for dq in (False, True):
                    q, st = F.quantize_4bit(x, blocksize=bs, quant_type=fmt, compress_statistics=dq)
                    cfg = f"c{k}.{fmt}.b{bs}.{'dq' if dq else 'plain'}"
                    out[cfg + ".weight"] = q.reshape(-1).clone()
                    out[cfg + ".absmax"] = st.absmax.clone()
                    if dq:
                        out[cfg + ".nested_absmax"] = st.state2.absmax.clone()
                        out[cfg + ".offset"] = st.offset.reshape(1).clone()
                    if small and bs in (64, 128):
                        out[cfg + ".dequant"] = dequantize_reference(q, st)
                        cpu_kernel = F.dequantize_4bit(q, st).reshape(-1)
                        if not torch.equal(cpu_kernel, out[cfg + ".dequant"]):
                            avx512_disagree.append(cfg)
    save_file(out, os.path.join(OUT, "cases.safetensors"))

    # Linear4bit's saved state for the first case, as QuantState.as_dict(packed=True) gives it
    lin = {}
    x = out["c0.input"]
    for fmt in ("nf4", "fp4"):
        for dq in (False, True):
            q, st = F.quantize_4bit(x, blocksize=64, quant_type=fmt, compress_statistics=dq)
            p = f"{fmt}.{'dq' if dq else 'plain'}.weight"
            lin[p] = q.clone()
            for key, v in st.as_dict(packed=True).items():
                lin[p + "." + key] = v.clone()
    save_file(lin, os.path.join(OUT, "linear4bit.safetensors"))

    # LLM.int8's rowwise absmax (int8_vectorwise_quant, threshold 0): the simple 8-bit baseline.
    # Row 2 of i1 holds halves (round-half-even), row 3 is all zero.
    i8 = {}
    ties8 = torch.zeros(4, 16)
    ties8[0] = randn(16)
    ties8[1] = randn(16) * 1e3
    ties8[2, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 64.5, -126.5])
    for k, x in enumerate([randn(5, 13), randn(3, 70), ties8]):
        q, stats, _ = F.int8_vectorwise_quant(x.clone())
        i8[f"i{k}.input"] = x.contiguous()
        i8[f"i{k}.codes"] = q.contiguous()
        i8[f"i{k}.row_stats"] = stats.contiguous()
        i8[f"i{k}.dequant"] = F.int8_vectorwise_dequant(q, stats).contiguous()
    save_file(i8, os.path.join(OUT, "int8_rowwise.safetensors"))
    if avx512_disagree:
        print("bitsandbytes' AVX512 dequantize_4bit kernel disagrees with its torch kernel on:")
        print("  " + " ".join(avx512_disagree))
    print("bitsandbytes", bnb.__version__, "torch", torch.__version__, "->", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
