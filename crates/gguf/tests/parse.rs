//! Builds small GGUF files in memory and checks parsing and every error path.

use std::path::Path;

use inferd_gguf::writer::GgufWriter;
use inferd_gguf::{GgmlType, Gguf, GgufError, GgufFile, Value, ValueType};

fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
    Gguf::parse(bytes, Path::new("test.gguf"))
}

fn sample() -> GgufWriter {
    GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("u8", Value::U8(7))
        .kv("i8", Value::I8(-7))
        .kv("u16", Value::U16(65535))
        .kv("i16", Value::I16(-300))
        .kv("u32", Value::U32(1 << 31))
        .kv("i32", Value::I32(-5))
        .kv("f32", Value::F32(1.5))
        .kv("bool", Value::Bool(true))
        .kv("u64", Value::U64(u64::MAX))
        .kv("i64", Value::I64(i64::MIN))
        .kv("f64", Value::F64(-2.25))
        .kv(
            "strings",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("βγ".into())],
            ),
        )
        .kv(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)]),
                    Value::Array(ValueType::String, vec![Value::String("x".into())]),
                ],
            ),
        )
        .tensor(
            "a",
            &[4, 2],
            GgmlType::F32,
            (0..32).map(|i| i as u8).collect(),
        )
        .tensor("q", &[64], GgmlType::Q8_0, vec![9u8; 68])
}

#[test]
fn parses_every_value_type_and_tensor() {
    for version in [2, 3] {
        let bytes = sample().version(version).to_bytes();
        let g = parse(&bytes).expect("valid file parses");
        assert_eq!(g.version, version);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get("u8"), Some(&Value::U8(7)));
        assert_eq!(g.get("i8"), Some(&Value::I8(-7)));
        assert_eq!(g.get("u16"), Some(&Value::U16(65535)));
        assert_eq!(g.get("i16"), Some(&Value::I16(-300)));
        assert_eq!(g.u64("u32").unwrap(), 1 << 31);
        assert_eq!(g.get("i32"), Some(&Value::I32(-5)));
        assert_eq!(g.f64("f32").unwrap(), 1.5);
        assert_eq!(g.get("bool"), Some(&Value::Bool(true)));
        assert_eq!(g.u64("u64").unwrap(), u64::MAX);
        assert_eq!(g.get("i64"), Some(&Value::I64(i64::MIN)));
        assert_eq!(g.f64("f64").unwrap(), -2.25);
        assert_eq!(g.strings("strings").unwrap(), vec!["a", "βγ"]);
        let nested = g.get("nested").unwrap().as_array().unwrap();
        assert_eq!(nested[0].as_array().unwrap()[1], Value::I32(2));
        assert_eq!(g.tensors.len(), 2);
        let a = g.tensor("a").unwrap();
        assert_eq!(
            (a.dims.clone(), a.ggml_type, a.size_bytes, a.offset),
            (vec![4, 2], GgmlType::F32, 32, 0)
        );
        let q = g.tensor("q").unwrap();
        assert_eq!(
            (q.ggml_type, q.size_bytes, q.offset),
            (GgmlType::Q8_0, 68, 32)
        );
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(bytes[(g.data_offset + a.offset) as usize + 5], 5);
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let bytes = GgufWriter::new()
        .alignment(64)
        .tensor("t", &[3], GgmlType::F32, vec![1; 12])
        .tensor("u", &[1], GgmlType::F32, vec![2; 4])
        .to_bytes();
    let g = parse(&bytes).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert_eq!(g.tensor("u").unwrap().offset, 64);
    assert_eq!(bytes[(g.data_offset + 64) as usize], 2);
}

#[test]
fn open_memory_maps_tensor_bytes() {
    let dir = std::env::temp_dir().join(format!("inferd-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    std::fs::write(&path, sample().to_bytes()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let (t, bytes) = f.tensor("a").unwrap();
    assert_eq!(t.elems(), 8);
    assert_eq!(
        bytes,
        (0..32).map(|i| i as u8).collect::<Vec<_>>().as_slice()
    );
    let err = f.tensor("missing").err().unwrap().to_string();
    assert!(err.contains("m.gguf") && err.contains("`missing`"), "{err}");
    let err = GgufFile::open(dir.join("nope.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample().to_bytes();
    let g = parse(&bytes).unwrap();
    // The trailing alignment padding after the last tensor is not needed.
    let needed = g
        .tensors
        .iter()
        .map(|t| g.data_offset + t.offset + t.size_bytes)
        .max()
        .unwrap();
    for len in 0..needed as usize {
        let err = parse(&bytes[..len]);
        assert!(err.is_err(), "truncated to {len} bytes parsed");
        let msg = err.unwrap_err().to_string();
        assert!(msg.starts_with("test.gguf"), "{msg}");
    }
}

#[test]
fn truncated_tensor_data_names_the_tensor() {
    let bytes = sample().to_bytes();
    let g = parse(&bytes).unwrap();
    let cut = (g.data_offset + 40) as usize;
    let msg = parse(&bytes[..cut]).unwrap_err().to_string();
    assert!(
        msg.contains("tensor `q`") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = sample().to_bytes();
    bytes[0] = b'X';
    assert!(matches!(parse(&bytes), Err(GgufError::BadMagic { .. })));
    let bytes = sample().version(1).to_bytes();
    let msg = parse(&bytes).unwrap_err().to_string();
    assert!(msg.contains("unsupported GGUF version 1"), "{msg}");
}

#[test]
fn unknown_tensor_type_names_tensor_and_type() {
    let mut bytes = GgufWriter::new()
        .tensor("w", &[32], GgmlType::Q8_0, vec![0; 34])
        .to_bytes();
    // The type tag sits right before the u64 offset at the end of the tensor info.
    let info_end = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4 + 8;
    let tag_at = info_end - 12;
    bytes[tag_at..tag_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let msg = parse(&bytes).unwrap_err().to_string();
    assert!(
        msg.contains("tensor `w`") && msg.contains("unsupported tensor type 99"),
        "{msg}"
    );
}

#[test]
fn huge_counts_are_rejected_without_allocating() {
    let mut bytes = GgufWriter::new().to_bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let msg = parse(&bytes).unwrap_err().to_string();
    assert!(msg.contains("tensor count"), "{msg}");
    let mut bytes = GgufWriter::new()
        .kv("k", Value::Array(ValueType::U8, vec![Value::U8(1)]))
        .to_bytes();
    // key: 8 + 1 bytes, type tag 4, element type 4, then the count.
    let count_at = 24 + 9 + 4 + 4;
    bytes[count_at..count_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let msg = parse(&bytes).unwrap_err().to_string();
    assert!(
        msg.contains("metadata key `k`") && msg.contains("count"),
        "{msg}"
    );
}

#[test]
fn block_size_mismatch_and_misalignment() {
    let bytes = GgufWriter::new()
        .tensor("w", &[33], GgmlType::Q4_0, vec![0; 18])
        .to_bytes();
    let msg = parse(&bytes).unwrap_err().to_string();
    assert!(
        msg.contains("tensor `w`") && msg.contains("block size"),
        "{msg}"
    );
    let bytes = GgufWriter::new()
        .kv("general.alignment", Value::U32(3))
        .to_bytes();
    let msg = parse(&bytes).unwrap_err().to_string();
    assert!(msg.contains("general.alignment"), "{msg}");
}

#[test]
fn typed_getters_name_key_and_problem() {
    let g = parse(&sample().to_bytes()).unwrap();
    let msg = g.u64("absent.key").unwrap_err().to_string();
    assert!(
        msg.contains("`absent.key`") && msg.contains("missing"),
        "{msg}"
    );
    let msg = g.str("u8").unwrap_err().to_string();
    assert!(
        msg.contains("`u8`") && msg.contains("expected a string"),
        "{msg}"
    );
}

#[test]
fn random_corruption_never_panics() {
    let clean = sample().to_bytes();
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut bytes = clean.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % bytes.len() as u64) as usize;
            bytes[i] = next() as u8;
        }
        let _ = parse(&bytes);
    }
}
