//! Helpers shared by the tests that run real models (dev-dependency only).

use std::path::PathBuf;

/// The SmolLM2-135M GGUF: `$INFERD_TEST_MODEL_SMOLLM2`, else the models folder
/// under `$INFERD_HOME` (default `~/.cache/inferd`), where `make fetch-models` puts
/// it. A missing model fails the calling test with the command that fetches it; a
/// reference check must never pass by being skipped.
pub fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("INFERD_TEST_MODEL_SMOLLM2") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("INFERD_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache")
                .join("inferd")
        });
    let p = home.join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run `make fetch-models` first",
        p.display()
    );
    p
}
