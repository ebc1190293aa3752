//! Shared helpers for tests that run the real default model.

use std::path::PathBuf;

/// The SmolLM2 GGUF: `$INFERD_TEST_MODEL_SMOLLM2`, else the models folder under
/// `$INFERD_HOME` (default `~/.cache/inferd`). A missing model fails the test with
/// the command that fetches it, it never passes silently.
pub fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INFERD_TEST_MODEL_SMOLLM2") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("INFERD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/inferd")
        });
    let p = home.join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `make fetch-models` first",
        p.display()
    );
    p
}
