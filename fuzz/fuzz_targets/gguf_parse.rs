//! Any byte string must parse or fail with an error; never panic, hang or OOM.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = inferd_gguf::Gguf::parse(data, std::path::Path::new("fuzz.gguf")) {
        for t in &g.tensors {
            let end = g.data_offset + t.offset + t.size_bytes;
            assert!(end <= data.len() as u64, "tensor bounds were validated");
        }
    }
});
