//! safetensors reading/writing and the token file.

use glassgrad::io::{Dtype, IGNORE_INDEX, NamedTensor, TensorFile, TokenFile, write_safetensors};

use crate::common::{assert_err, data, scratch};

#[test]
fn safetensors_round_trip_and_conversions() {
    let dir = scratch("st-round-trip");
    let path = dir.join("t.safetensors");
    let a = NamedTensor::from_f32(&[2, 3], &[1.0, -2.5, 3.25, 0.0, 1e-3, -7.0]);
    let ids = NamedTensor::from_i64(&[3], &[0, -100, 1 << 40]);
    // f16 bits of 1.0, -2.0, 0.5; bf16 bits of 1.0, -3.0.
    let h = NamedTensor::new(
        Dtype::F16,
        &[3],
        [0x3C00u16, 0xC000, 0x3800].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let b = NamedTensor::new(
        Dtype::BF16,
        &[2],
        [0x3F80u16, 0xC040].iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let bytes = NamedTensor::from_u8(&[4], &[1, 2, 3, 255]);
    write_safetensors(&path, [("a", &a), ("ids", &ids), ("h", &h), ("b", &b), ("bytes", &bytes)])
        .unwrap();

    let f = TensorFile::read(&path).unwrap();
    assert_eq!(f.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(f.tensors.len(), 5);
    assert_eq!(f.get("a").unwrap(), &a);
    assert_eq!(f.get("bytes").unwrap(), &bytes);
    assert_eq!(f.f32("a").unwrap(), (vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, 1e-3, -7.0]));
    assert_eq!(f.f32("h").unwrap().1, vec![1.0, -2.0, 0.5]);
    assert_eq!(f.f32("b").unwrap().1, vec![1.0, -3.0]);
    assert_eq!(f.get("ids").unwrap().to_i64("ids").unwrap(), vec![0, -100, 1 << 40]);
    assert_err(f.f32("ids"), &["'ids'", "I64", "floating-point"]);
    assert_err(f.get("nope").map(|_| ()), &["t.safetensors", "no tensor 'nope'", "a, b, bytes"]);
    // Atomic write leaves no temp file behind.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn corrupt_or_truncated_safetensors_is_an_error_naming_the_file() {
    let dir = scratch("st-corrupt");
    let good = std::fs::read(data("gpt2_ref/model/model.safetensors")).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    assert_err(TensorFile::read(&truncated), &["truncated.safetensors", "truncated or corrupt"]);

    // Flip bytes inside the JSON header (just after the 8-byte length and the opening '{').
    let mut flipped = good.clone();
    for b in &mut flipped[9..13] {
        *b ^= 0xFF;
    }
    let flipped_path = dir.join("flipped.safetensors");
    std::fs::write(&flipped_path, &flipped).unwrap();
    assert_err(
        TensorFile::read(&flipped_path),
        &["flipped.safetensors", "not a valid safetensors file"],
    );

    // A header length larger than the file.
    let mut long = good.clone();
    long[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    let long_path = dir.join("length.safetensors");
    std::fs::write(&long_path, &long).unwrap();
    assert_err(TensorFile::read(&long_path), &["length.safetensors"]);

    let tiny = dir.join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    assert_err(TensorFile::read(&tiny), &["tiny.safetensors"]);
    assert_err(
        TensorFile::read(dir.join("missing.safetensors")),
        &["cannot read", "missing.safetensors"],
    );
}

#[test]
fn reference_token_file() {
    let t = TokenFile::read(data("gpt2_ref/tokens.safetensors")).unwrap();
    assert_eq!((t.batch, t.seq_len), (2, 17));
    assert_eq!(t.input_ids.len(), 34);
    // The script sets -100 at [0,0], [0,5], [1,9], [1,16]; everywhere else labels = ids.
    let ignored: Vec<usize> = (0..34).filter(|&i| t.labels[i] == IGNORE_INDEX).collect();
    assert_eq!(ignored, vec![0, 5, 17 + 9, 17 + 16]);
    for i in (0..34).filter(|i| !ignored.contains(i)) {
        assert_eq!(t.labels[i], t.input_ids[i]);
    }
    t.check_vocab(97).unwrap();
    assert_err(t.check_vocab(5), &["outside the model's vocabulary", "vocab_size 5"]);
}

#[test]
fn token_file_round_trip_and_errors() {
    let dir = scratch("tokens");
    let t = TokenFile {
        batch: 1,
        seq_len: 3,
        input_ids: vec![5, 6, 7],
        labels: vec![IGNORE_INDEX, 6, 7],
    };
    let path = dir.join("tokens.safetensors");
    t.write(&path).unwrap();
    assert_eq!(TokenFile::read(&path).unwrap(), t);
    let raw = TensorFile::read(&path).unwrap();
    assert_eq!(raw.get("labels").unwrap().to_i64("labels").unwrap(), vec![-100, 6, 7]);

    let write = |name: &str, tensors: &[(&str, NamedTensor)]| {
        let p = dir.join(name);
        write_safetensors(&p, tensors.iter().map(|(k, v)| (*k, v))).unwrap();
        p
    };
    // No labels: they default to the ids.
    let p = write(
        "nolabels.safetensors",
        &[("input_ids", NamedTensor::from_i64(&[2, 2], &[1, 2, 3, 4]))],
    );
    let t = TokenFile::read(&p).unwrap();
    assert_eq!(t.labels, t.input_ids);

    let p =
        write("float.safetensors", &[("input_ids", NamedTensor::from_f32(&[1, 2], &[1.0, 2.0]))]);
    assert_err(TokenFile::read(&p), &["float.safetensors", "'input_ids'", "F32", "I64"]);
    let p = write("rank1.safetensors", &[("input_ids", NamedTensor::from_i64(&[3], &[1, 2, 3]))]);
    assert_err(TokenFile::read(&p), &["rank1.safetensors", "2-D [B, T]", "[3]"]);
    let p = write(
        "negative.safetensors",
        &[("input_ids", NamedTensor::from_i64(&[1, 3], &[1, -2, 3]))],
    );
    assert_err(TokenFile::read(&p), &["input_ids[0, 1] = -2"]);
    let p = write(
        "badlabel.safetensors",
        &[
            ("input_ids", NamedTensor::from_i64(&[1, 2], &[1, 2])),
            ("labels", NamedTensor::from_i64(&[1, 2], &[-5, 2])),
        ],
    );
    assert_err(TokenFile::read(&p), &["labels[0, 0] = -5", "-100"]);
    let p = write(
        "labelshape.safetensors",
        &[
            ("input_ids", NamedTensor::from_i64(&[1, 2], &[1, 2])),
            ("labels", NamedTensor::from_i64(&[2, 1], &[1, 2])),
        ],
    );
    assert_err(TokenFile::read(&p), &["'labels' has shape [2, 1]", "[1, 2]"]);
    let p = write("noids.safetensors", &[("ids", NamedTensor::from_i64(&[1, 2], &[1, 2]))]);
    assert_err(TokenFile::read(&p), &["noids.safetensors", "no tensor 'input_ids'"]);
}

#[test]
fn scratch_directories_are_removed_when_the_test_is_done() {
    let path = {
        let dir = scratch("removed");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/file"), b"x").unwrap();
        dir.to_path_buf()
    };
    assert!(!path.exists(), "{} is left behind", path.display());
}
