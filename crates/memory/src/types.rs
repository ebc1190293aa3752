//! What the log holds and what reads return: namespaces, writes, log entries,
//! items, facts, hits — each validated where it enters, with errors that name
//! the field.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The longest `content` accepted, in bytes.
pub const MAX_CONTENT_BYTES: usize = 64 << 10;
/// The longest `kind`, `key` or `idempotency_key`, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// Where a memory lives: `tenant`, `tenant/user` or `tenant/user/agent`, each
/// segment 1–64 of `A-Z a-z 0-9 _ . - @ :`. Every read names one; nothing
/// crosses namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(s: &str) -> Result<Namespace> {
        let bad = |why: String| Error::invalid("namespace", why);
        let segments: Vec<&str> = s.split('/').collect();
        if s.is_empty() || segments.len() > 3 {
            return Err(bad(format!(
                "`namespace` must be `tenant`, `tenant/user` or `tenant/user/agent`, got {s:?}"
            )));
        }
        for seg in &segments {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.-@:".contains(c);
            if seg.is_empty() || seg.len() > 64 || !seg.chars().all(ok_char) {
                return Err(bad(format!(
                    "each segment of `namespace` must be 1-64 of A-Z a-z 0-9 _ . - @ :, got {seg:?} in {s:?}"
                )));
            }
        }
        Ok(Namespace(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where usage entries go: a name no client can give.
    pub(crate) fn ledger() -> Namespace {
        Namespace(crate::keys::LEDGER_NAMESPACE.to_owned())
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an append does to the item it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new item (its id is the entry's log position).
    Put,
    /// New content or metadata for an existing item.
    Update,
    /// The item is gone from every projection (the log keeps it).
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One append, as a client asks for it (validated by [`Write::put`],
/// [`Write::update`], [`Write::delete`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub namespace: Namespace,
    pub op: Op,
    /// Update and delete: the item's id.
    pub target: Option<i64>,
    /// Put: what sort of memory (`note` unless given). Update and delete take
    /// the target's.
    pub kind: String,
    /// Put: makes the item a fact — the latest item with a key is its value.
    pub key: Option<String>,
    pub content: String,
    /// `None`: an update keeps the item's metadata (a put has none).
    pub metadata: Option<Map<String, Value>>,
    /// The same key twice in one namespace is one write.
    pub idempotency_key: Option<String>,
}

fn label(field: &'static str, v: Option<String>) -> Result<Option<String>> {
    match v {
        Some(s) if s.is_empty() || s.len() > MAX_LABEL_BYTES => Err(Error::invalid(
            field,
            format!(
                "`{field}` must be 1-{MAX_LABEL_BYTES} bytes, got {}",
                s.len()
            ),
        )),
        other => Ok(other),
    }
}

fn content(s: String) -> Result<String> {
    if s.trim().is_empty() || s.len() > MAX_CONTENT_BYTES {
        return Err(Error::invalid(
            "content",
            format!(
                "`content` must be a non-blank string of at most {MAX_CONTENT_BYTES} bytes, got {} bytes",
                s.len()
            ),
        ));
    }
    Ok(s)
}

impl Write {
    pub fn put(
        namespace: Namespace,
        kind: Option<String>,
        key: Option<String>,
        text: String,
        metadata: Map<String, Value>,
        idempotency_key: Option<String>,
    ) -> Result<Write> {
        Ok(Write {
            namespace,
            op: Op::Put,
            target: None,
            kind: label("kind", kind)?.unwrap_or_else(|| "note".into()),
            key: label("key", key)?,
            content: content(text)?,
            metadata: Some(metadata),
            idempotency_key: label("idempotency_key", idempotency_key)?,
        })
    }

    /// New content for item `id`, and new metadata replacing the old when
    /// given (`None` keeps it).
    pub fn update(
        namespace: Namespace,
        id: i64,
        text: String,
        metadata: Option<Map<String, Value>>,
        idempotency_key: Option<String>,
    ) -> Result<Write> {
        Ok(Write {
            namespace,
            op: Op::Update,
            target: Some(id),
            kind: String::new(),
            key: None,
            content: content(text)?,
            metadata,
            idempotency_key: label("idempotency_key", idempotency_key)?,
        })
    }

    pub fn delete(namespace: Namespace, id: i64, idempotency_key: Option<String>) -> Result<Write> {
        Ok(Write {
            namespace,
            op: Op::Delete,
            target: Some(id),
            kind: String::new(),
            key: None,
            content: String::new(),
            metadata: None,
            idempotency_key: label("idempotency_key", idempotency_key)?,
        })
    }
}

/// One record of the log. `gseq` orders the whole log; `seq` counts within the
/// namespace from 1, without gaps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub gseq: i64,
    pub namespace: String,
    pub seq: i64,
    pub op: Op,
    pub target: Option<i64>,
    pub kind: String,
    pub key: Option<String>,
    pub content: String,
    /// A JSON object, as written.
    pub metadata: String,
    pub idempotency_key: Option<String>,
    /// Wall clock at the append, Unix milliseconds.
    pub at_ms: i64,
}

impl Entry {
    /// The item this entry is about: its own position for a put.
    pub fn item_id(&self) -> i64 {
        self.target.unwrap_or(self.gseq)
    }
}

/// An acknowledged (durable) append.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Appended {
    pub id: i64,
    pub namespace: String,
    pub seq: i64,
    /// The log position, for read-your-writes across namespaces.
    pub gseq: i64,
    /// The idempotency key had been written before: this is that write.
    pub duplicate: bool,
    pub at_ms: i64,
}

/// An item as the `items` projection holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub id: i64,
    pub namespace: String,
    pub kind: String,
    pub key: Option<String>,
    pub content: String,
    pub metadata: Value,
    /// The namespace sequence of the item's last change.
    pub seq: i64,
    pub version: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One change to a fact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FactChange {
    pub seq: i64,
    pub op: Op,
    pub value: Option<String>,
    pub item_id: i64,
    pub at_ms: i64,
}

/// The latest value of a key, with its history when asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    pub namespace: String,
    pub key: String,
    pub value: String,
    pub item_id: i64,
    pub seq: i64,
    pub updated_ms: i64,
    pub history: Vec<FactChange>,
}

/// A search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: i64,
    pub score: f32,
    pub kind: String,
    pub key: Option<String>,
    pub content: String,
    pub metadata: Value,
    pub seq: i64,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub gseq: i64,
    pub namespace: String,
    pub seq: i64,
    pub op: Op,
    pub item_id: i64,
    pub kind: String,
    pub key: Option<String>,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the content, hex: the trail proves what was written without
    /// holding it.
    pub content_sha256: String,
    pub at_ms: i64,
}

/// A semantic search.
#[derive(Debug, Clone)]
pub struct Search {
    pub namespace: Namespace,
    pub query: String,
    /// 1..=100, default 5.
    pub k: usize,
    pub kind: Option<String>,
    /// Every pair must equal the item's top-level metadata value.
    pub metadata: Map<String, Value>,
}

/// Read-your-writes: wait (at most `wait_ms`) until the projection read has
/// applied the namespace's write `min_seq`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consistency {
    pub min_seq: Option<i64>,
    pub wait_ms: Option<u64>,
}

/// How long a read waits for `min_seq` unless told, and at most.
pub const DEFAULT_WAIT_MS: u64 = 2_000;
pub const MAX_WAIT_MS: u64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_take_one_to_three_segments_of_safe_characters() {
        for ok in ["acme", "acme/alice", "acme/alice/planner", "a.b-c_d@e:f"] {
            assert_eq!(Namespace::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "a/b/c/d",
            "a//b",
            "a/",
            "sp ace",
            "ünï",
            &"x".repeat(65),
        ] {
            let e = Namespace::parse(bad).unwrap_err();
            assert!(e.to_string().contains("namespace"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn writes_refuse_blank_content_and_long_labels() {
        let ns = Namespace::parse("t").unwrap();
        let put = |c: &str, k: Option<&str>| {
            Write::put(
                ns.clone(),
                None,
                k.map(Into::into),
                c.into(),
                Map::new(),
                None,
            )
        };
        assert_eq!(put("hi", None).unwrap().kind, "note");
        assert!(put("  \n", None)
            .unwrap_err()
            .to_string()
            .contains("content"));
        assert!(put("hi", Some(""))
            .unwrap_err()
            .to_string()
            .contains("`key`"));
        assert!(put(&"x".repeat(MAX_CONTENT_BYTES + 1), None).is_err());
    }
}
