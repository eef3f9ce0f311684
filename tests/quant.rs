//! Byte parity with bitsandbytes' `quantize_4bit` / `dequantize_4bit` (no GPU needed).
//!
//! tests/data/nf4_ref/ was written by scripts/make_nf4_reference.py with bitsandbytes 0.50.2 on
//! the CPU: odd sizes, one element, zero blocks and tails, values exactly on every threshold and
//! one ulp either side, huge/tiny/subnormal magnitudes, NF4 and FP4, blocksizes 32..4096, double
//! quantization on and off. Everything is compared bit for bit: codes, absmax, nested absmax,
//! offset, dequantized values, and the saved Linear4bit tensors and JSON.

use std::collections::BTreeMap;

use glassgrad::io::safetensors::{NamedTensor, TensorFile};
use glassgrad::quant::codes::{NF4_CODE, dynamic_map, fp4_code};
use glassgrad::quant::file::{QuantizeOptions, python_float_repr, quantize_named};
use glassgrad::quant::{
    Absmax, Format, Quantized4, dequantize_4bit, dequantize_file, quantize_4bit, read_state,
    state_tensors,
};

fn reference() -> TensorFile {
    TensorFile::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nf4_ref/cases.safetensors"))
        .unwrap()
}

fn f32s(r: &TensorFile, k: &str) -> Vec<f32> {
    r.f32(k).unwrap().1
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// First index where two sequences differ, for the failure message.
fn first_diff<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn tables_match_bitsandbytes() {
    let r = reference();
    assert_eq!(bits(&NF4_CODE), bits(&f32s(&r, "nf4_code")), "NF4 table");
    assert_eq!(bits(&fp4_code()), bits(&f32s(&r, "fp4_code")), "FP4 table");
    assert_eq!(bits(&dynamic_map()), bits(&f32s(&r, "dynamic_map")), "dynamic map");
}

#[test]
fn codes_absmax_nested_and_dequant_are_bit_identical() {
    let r = reference();
    let mut configs = 0;
    let mut dequant_checked = 0;
    for key in r.tensors.keys().filter(|k| k.ends_with(".weight")) {
        // c{k}.{fmt}.b{bs}.{plain|dq}.weight
        let cfg = key.strip_suffix(".weight").unwrap();
        let parts: Vec<&str> = cfg.split('.').collect();
        let format = Format::parse(parts[1]).unwrap();
        let blocksize: usize = parts[2][1..].parse().unwrap();
        let dq = parts[3] == "dq";
        let (shape, input) = r.f32(&format!("{}.input", parts[0])).unwrap();
        let q = quantize_4bit(cfg, &input, &shape, format, blocksize, dq).unwrap();

        let want = &r.get(key).unwrap().data;
        assert!(
            q.packed == *want,
            "{cfg}: packed codes differ at byte {:?} (ours {:?}, bitsandbytes {:?})",
            first_diff(&q.packed, want),
            first_diff(&q.packed, want).map(|i| q.packed.get(i)),
            first_diff(&q.packed, want).map(|i| want.get(i)),
        );
        match &q.absmax {
            Absmax::Plain(a) => {
                let want = f32s(&r, &format!("{cfg}.absmax"));
                assert_eq!(bits(a), bits(&want), "{cfg}: absmax at {:?}", first_diff(a, &want));
            }
            Absmax::Nested { codes, nested_absmax, offset } => {
                let want_offset = f32s(&r, &format!("{cfg}.offset"))[0];
                assert_eq!(
                    offset.to_bits(),
                    want_offset.to_bits(),
                    "{cfg}: offset {offset} vs {want_offset}"
                );
                let want = &r.get(&format!("{cfg}.absmax")).unwrap().data;
                assert!(codes == want, "{cfg}: absmax codes at {:?}", first_diff(codes, want));
                let want = f32s(&r, &format!("{cfg}.nested_absmax"));
                assert_eq!(bits(nested_absmax), bits(&want), "{cfg}: nested_absmax");
            }
        }
        if let Ok((_, want)) = r.f32(&format!("{cfg}.dequant")) {
            let got = dequantize_4bit(&q);
            assert_eq!(bits(&got), bits(&want), "{cfg}: dequant at {:?}", first_diff(&got, &want));
            dequant_checked += 1;
        }
        configs += 1;
    }
    // 8 small cases × 2 formats × 5 blocksizes × 2 + one large case × 2 × 2 × 2 (see the script).
    assert_eq!(configs, 8 * 20 + 8, "reference configs found");
    assert_eq!(dequant_checked, 8 * 8, "dequantized references found");
}

#[test]
fn linear4bit_saved_layout_matches_bitsandbytes() {
    let r = reference();
    let lin = TensorFile::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nf4_ref/linear4bit.safetensors"
    ))
    .unwrap();
    let input = r.get("c0.input").unwrap();
    for (fmt, dq) in [("nf4", false), ("nf4", true), ("fp4", false), ("fp4", true)] {
        let opts = QuantizeOptions {
            format: Format::parse(fmt).unwrap(),
            blocksize: 64,
            double_quant: dq,
        };
        let prefix = format!("{fmt}.{}.weight", if dq { "dq" } else { "plain" });
        let q = quantize_named(&prefix, input, opts).unwrap();
        let ours: BTreeMap<String, NamedTensor> = state_tensors(&prefix, &q).into_iter().collect();
        let theirs: BTreeMap<&String, &NamedTensor> =
            lin.tensors.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
        let our_keys: Vec<&String> = ours.keys().collect();
        let their_keys: Vec<&String> = theirs.keys().copied().collect();
        assert_eq!(our_keys, their_keys, "{prefix}: saved keys");
        for (k, t) in &ours {
            let want = theirs[k];
            assert_eq!(
                (t.dtype, &t.shape, &t.data),
                (want.dtype, &want.shape, &want.data),
                "{k}: dtype, shape or bytes differ (JSON ours {:?})",
                String::from_utf8_lossy(&t.data)
            );
        }
        // Reading bitsandbytes' own tensors back gives the same state.
        let owned: BTreeMap<String, NamedTensor> =
            theirs.iter().map(|(k, v)| ((*k).clone(), (*v).clone())).collect();
        assert_eq!(read_state(&owned, &prefix).unwrap(), q, "{prefix}: read back");
        let back = dequantize_file(&owned).unwrap();
        assert_eq!(back.len(), 1, "{prefix}: only the dequantized weight remains");
        assert_eq!(back[&prefix].to_f32("w").unwrap(), dequantize_4bit(&q));
        assert_eq!(back[&prefix].shape, vec![3, 70]);
    }
}

#[test]
fn python_float_repr_matches_python() {
    // repr() of these in CPython 3.11
    for (x, want) in [
        (2.6774206161499023, "2.6774206161499023"),
        (2.0, "2.0"),
        (0.0001, "0.0001"),
        (1e-05, "1e-05"),
        (1.5e-07, "1.5e-07"),
        (123456789012345.0, "123456789012345.0"),
        (1e16, "1e+16"),
        (3.4028234663852886e38, "3.4028234663852886e+38"),
        (0.1, "0.1"),
    ] {
        assert_eq!(python_float_repr(x), want);
    }
}

#[test]
fn bad_input_errors_name_the_tensor() {
    let w = vec![0.5f32; 12];
    let msg = |r: glassgrad::Result<Quantized4>| r.unwrap_err().to_string();
    let e = msg(quantize_4bit("h.0.c_fc", &w, &[3, 4], Format::Nf4, 48, false));
    assert!(e.contains("h.0.c_fc") && e.contains("48") && e.contains("[3, 4]"), "{e}");
    let e = msg(quantize_4bit("h.0.c_fc", &w, &[3, 4], Format::Nf4, 8192, false));
    assert!(e.contains("8192"), "{e}");
    let mut nan = w.clone();
    nan[7] = f32::NAN;
    let e = msg(quantize_4bit("h.1.attn", &nan, &[3, 4], Format::Fp4, 64, true));
    assert!(e.contains("h.1.attn") && e.contains("element 7") && e.contains("NaN"), "{e}");
    nan[7] = f32::INFINITY;
    let e = msg(quantize_4bit("h.1.attn", &nan, &[3, 4], Format::Fp4, 64, true));
    assert!(e.contains("inf"), "{e}");
    let t = NamedTensor::from_f32(&[12], &w);
    let e = msg(quantize_named("ln_f.weight", &t, QuantizeOptions::default()));
    assert!(e.contains("ln_f.weight") && e.contains("2-D") && e.contains("[12]"), "{e}");

    // A quant_state whose JSON or shapes disagree with the data.
    let q = quantize_4bit("w", &w, &[3, 4], Format::Nf4, 64, true).unwrap();
    let good: BTreeMap<String, NamedTensor> = state_tensors("w", &q).into_iter().collect();
    let mut wrong_shape = good.clone();
    let json = br#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [5, 4], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}"#;
    wrong_shape.insert(
        "w.quant_state.bitsandbytes__nf4".into(),
        NamedTensor::from_u8(&[json.len()], json),
    );
    let e = read_state(&wrong_shape, "w").unwrap_err().to_string();
    assert!(e.contains("w:") && e.contains("[5, 4]") && e.contains("packed"), "{e}");
    let mut bad_json = good.clone();
    bad_json.insert("w.quant_state.bitsandbytes__nf4".into(), NamedTensor::from_u8(&[3], b"{x:"));
    let e = read_state(&bad_json, "w").unwrap_err().to_string();
    assert!(e.contains("w:") && e.contains("JSON"), "{e}");
    let mut missing = good.clone();
    missing.remove("w.nested_absmax");
    let e = read_state(&missing, "w").unwrap_err().to_string();
    assert!(e.contains("w.nested_absmax"), "{e}");
}

#[test]
fn bits_per_parameter_of_the_formats() {
    // 4 + 32/64 and 4 + 8/64 + 32/(64·256)
    assert_eq!(glassgrad::quant::bits_per_parameter(64, false), 4.5);
    assert!((glassgrad::quant::bits_per_parameter(64, true) - 4.126_953_125).abs() < 1e-12);
}

#[test]
fn quantize_file_round_trips_through_safetensors() {
    use glassgrad::io::safetensors::to_bytes;
    use glassgrad::quant::quantize_file;
    let r = reference();
    let mut tensors = BTreeMap::new();
    tensors.insert("h.0.mlp.c_fc.weight".to_string(), r.get("c0.input").unwrap().clone()); // 2-D
    tensors.insert("ln_f.bias".to_string(), NamedTensor::from_f32(&[3], &[1.0, 2.0, 3.0])); // 1-D
    let opts = QuantizeOptions { format: Format::Nf4, blocksize: 64, double_quant: true };
    let quantized = quantize_file(&tensors, opts).unwrap();
    // The 2-D tensor became the six Linear4bit tensors; the 1-D one is copied unchanged.
    assert_eq!(quantized.len(), 6 + 1);
    assert_eq!(quantized["ln_f.bias"], tensors["ln_f.bias"]);
    let bytes = to_bytes(quantized.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    let back = TensorFile::from_bytes(&bytes, std::path::Path::new("q.safetensors")).unwrap();
    let restored = dequantize_file(&back.tensors).unwrap();
    assert_eq!(restored.len(), 2);
    let want = f32s(&r, "c0.nf4.b64.dq.dequant");
    assert_eq!(bits(&restored["h.0.mlp.c_fc.weight"].to_f32("w").unwrap()), bits(&want));
    assert_eq!(restored["h.0.mlp.c_fc.weight"].shape, vec![3, 70]);
}

#[test]
fn int8_rowwise_is_bit_identical_to_bitsandbytes() {
    use glassgrad::quant::int8::{dequantize_int8_rowwise, quantize_int8_rowwise};
    let r = TensorFile::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nf4_ref/int8_rowwise.safetensors"
    ))
    .unwrap();
    for k in 0..3 {
        let (shape, x) = r.f32(&format!("i{k}.input")).unwrap();
        let q = quantize_int8_rowwise("w", &x, &shape).unwrap();
        let want: Vec<i8> =
            r.get(&format!("i{k}.codes")).unwrap().data.iter().map(|&b| b as i8).collect();
        assert!(q.codes == want, "i{k}: codes differ at {:?}", first_diff(&q.codes, &want));
        assert_eq!(
            bits(&q.row_stats),
            bits(&f32s(&r, &format!("i{k}.row_stats"))),
            "i{k}: row_stats"
        );
        let want = f32s(&r, &format!("i{k}.dequant"));
        let got = dequantize_int8_rowwise(&q);
        assert_eq!(bits(&got), bits(&want), "i{k}: dequant at {:?}", first_diff(&got, &want));
    }
    let e = quantize_int8_rowwise("wte", &[1.0; 6], &[6]).unwrap_err().to_string();
    assert!(e.contains("wte") && e.contains("2-D"), "{e}");
}

/// `glassgrad quantize` as a user runs it: a file with a 2-D weight and a 1-D bias becomes
/// bitsandbytes' Linear4bit tensors (byte-identical to what bitsandbytes saved for the same
/// weight) beside the bias copied unchanged; bad input is one line and a non-zero exit.
#[test]
fn quantize_command_writes_what_bitsandbytes_saves() {
    use glassgrad::io::write_safetensors;
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("glassgrad-test-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    let weight = reference().get("c0.input").unwrap().clone(); // (3, 70) f32
    let bias = NamedTensor::from_f32(&[3], &[0.5, -1.0, 2.0]);
    write_safetensors(&input, [("nf4.dq.weight", &weight), ("bias", &bias)]).unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_glassgrad")).args(args).output();
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let ok = run(&["quantize", "--format", "nf4", "--double-quant", i, o]).unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let got = TensorFile::read(&output).unwrap();
    let lin = TensorFile::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nf4_ref/linear4bit.safetensors"
    ))
    .unwrap();
    let want: Vec<(&String, &NamedTensor)> =
        lin.tensors.iter().filter(|(k, _)| k.starts_with("nf4.dq.weight")).collect();
    assert_eq!(got.tensors.len(), want.len() + 1, "the Linear4bit tensors and the bias");
    for (k, t) in want {
        let ours = &got.tensors[k];
        assert_eq!((ours.dtype, &ours.shape, &ours.data), (t.dtype, &t.shape, &t.data), "{k}");
    }
    assert_eq!(got.tensors["bias"], bias);
    for (args, words) in [
        (vec!["quantize", "--format", "nf4", "--blocksize", "100", i, o], "blocksize"),
        (vec!["quantize", "--format", "nf5", i, o], "nf5"),
        (vec!["quantize", "--format", "nf4", "/nonexistent.safetensors", o], "nonexistent"),
        (vec!["quantize", "--format", "nf4", i, i], "both the input and the output"),
    ] {
        let bad = run(&args).unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && err.contains(words), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
