//! The relational projections: items (the current state of every memory),
//! facts (the latest value per key, with every change), recent items per
//! namespace, and the audit trail. Each applies entries with plain SQL and
//! holds nothing in process memory, so a rebuild from zero is running them over
//! the log into empty tables.

use sha2::{Digest, Sha256};

use crate::projection::Projection;
use crate::sql::{hex, Tx, Val};
use crate::types::{Entry, Op};
use crate::Result;

/// `items`: one row per live memory, its content and metadata as last written.
pub struct Items;

impl Projection for Items {
    fn name(&self) -> &'static str {
        "items"
    }

    fn create(&self, tx: &mut dyn Tx) -> Result<()> {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS memory_items (
                id BIGINT PRIMARY KEY,
                namespace TEXT NOT NULL,
                kind TEXT NOT NULL,
                key TEXT,
                content TEXT NOT NULL,
                metadata TEXT NOT NULL,
                seq BIGINT NOT NULL,
                version BIGINT NOT NULL,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL
            )",
            &[],
        )?;
        tx.exec(
            "CREATE INDEX IF NOT EXISTS items_namespace ON memory_items (namespace, id)",
            &[],
        )?;
        Ok(())
    }

    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        for e in entries {
            match e.op {
                Op::Put => tx.exec(
                    "INSERT INTO memory_items (id, namespace, kind, key, content, metadata, seq, version, created_ms, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8)",
                    &[
                        Val::Int(e.gseq),
                        e.namespace.as_str().into(),
                        e.kind.as_str().into(),
                        e.key.as_deref().into(),
                        e.content.as_str().into(),
                        e.metadata.as_str().into(),
                        Val::Int(e.seq),
                        Val::Int(e.at_ms),
                    ],
                )?,
                Op::Update => tx.exec(
                    "UPDATE memory_items SET content = $1, metadata = $2, seq = $3, version = version + 1, updated_ms = $4 \
                     WHERE id = $5",
                    &[
                        e.content.as_str().into(),
                        e.metadata.as_str().into(),
                        Val::Int(e.seq),
                        Val::Int(e.at_ms),
                        Val::Int(e.item_id()),
                    ],
                )?,
                Op::Delete => tx.exec("DELETE FROM memory_items WHERE id = $1", &[Val::Int(e.item_id())])?,
            };
        }
        Ok(())
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_items ORDER BY id"]
    }
}

/// `facts` and `fact_history`: the latest item with a key is the key's value;
/// updating that item changes the value, deleting it removes the fact. Every
/// change is a history row.
pub struct Facts;

impl Projection for Facts {
    fn name(&self) -> &'static str {
        "facts"
    }

    fn create(&self, tx: &mut dyn Tx) -> Result<()> {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS memory_facts (
                namespace TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                item_id BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                PRIMARY KEY (namespace, key)
            )",
            &[],
        )?;
        tx.exec(
            "CREATE TABLE IF NOT EXISTS memory_fact_history (
                namespace TEXT NOT NULL,
                key TEXT NOT NULL,
                seq BIGINT NOT NULL,
                op TEXT NOT NULL,
                value TEXT,
                item_id BIGINT NOT NULL,
                at_ms BIGINT NOT NULL,
                PRIMARY KEY (namespace, key, seq)
            )",
            &[],
        )?;
        Ok(())
    }

    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        for e in entries {
            let Some(key) = e.key.as_deref() else {
                continue;
            };
            let ns = e.namespace.as_str();
            // Update and delete change the fact only when it is their item's.
            let current = tx
                .rows(
                    "SELECT item_id FROM memory_facts WHERE namespace = $1 AND key = $2",
                    &[ns.into(), key.into()],
                )?
                .first()
                .and_then(|r| r[0].int());
            let mine = current == Some(e.item_id());
            match e.op {
                Op::Put => {
                    tx.exec(
                        "INSERT INTO memory_facts (namespace, key, value, item_id, seq, updated_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, item_id = excluded.item_id, \
                         seq = excluded.seq, updated_ms = excluded.updated_ms",
                        &[ns.into(), key.into(), e.content.as_str().into(), Val::Int(e.gseq), Val::Int(e.seq), Val::Int(e.at_ms)],
                    )?;
                }
                Op::Update if mine => {
                    tx.exec(
                        "UPDATE memory_facts SET value = $1, seq = $2, updated_ms = $3 WHERE namespace = $4 AND key = $5",
                        &[e.content.as_str().into(), Val::Int(e.seq), Val::Int(e.at_ms), ns.into(), key.into()],
                    )?;
                }
                Op::Delete if mine => {
                    tx.exec(
                        "DELETE FROM memory_facts WHERE namespace = $1 AND key = $2",
                        &[ns.into(), key.into()],
                    )?;
                }
                Op::Update | Op::Delete => continue,
            }
            let value = (e.op != Op::Delete).then_some(e.content.as_str());
            tx.exec(
                "INSERT INTO memory_fact_history (namespace, key, seq, op, value, item_id, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[ns.into(), key.into(), Val::Int(e.seq), e.op.as_str().into(), value.into(), Val::Int(e.item_id()), Val::Int(e.at_ms)],
            )?;
        }
        Ok(())
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec![
            "SELECT * FROM memory_facts ORDER BY namespace, key",
            "SELECT * FROM memory_fact_history ORDER BY namespace, key, seq",
        ]
    }
}

/// `recent`: the last [`Recent::per_namespace`] live items of each namespace,
/// newest first — what a context window's memory section starts from.
pub struct Recent {
    pub per_namespace: usize,
}

impl Projection for Recent {
    fn name(&self) -> &'static str {
        "recent"
    }

    fn create(&self, tx: &mut dyn Tx) -> Result<()> {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS memory_recent (
                namespace TEXT NOT NULL,
                id BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                kind TEXT NOT NULL,
                key TEXT,
                content TEXT NOT NULL,
                at_ms BIGINT NOT NULL,
                PRIMARY KEY (namespace, id)
            )",
            &[],
        )?;
        tx.exec(
            "CREATE INDEX IF NOT EXISTS recent_order ON memory_recent (namespace, seq)",
            &[],
        )?;
        Ok(())
    }

    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        for e in entries {
            let ns = e.namespace.as_str();
            tx.exec(
                "DELETE FROM memory_recent WHERE namespace = $1 AND id = $2",
                &[ns.into(), Val::Int(e.item_id())],
            )?;
            if e.op == Op::Delete {
                continue;
            }
            tx.exec(
                "INSERT INTO memory_recent (namespace, id, seq, kind, key, content, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[ns.into(), Val::Int(e.item_id()), Val::Int(e.seq), e.kind.as_str().into(), e.key.as_deref().into(), e.content.as_str().into(), Val::Int(e.at_ms)],
            )?;
            tx.exec(
                "DELETE FROM memory_recent WHERE namespace = $1 AND seq <= \
                 (SELECT seq FROM memory_recent WHERE namespace = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
                &[ns.into(), Val::Int(self.per_namespace as i64)],
            )?;
        }
        Ok(())
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_recent ORDER BY namespace, id"]
    }
}

/// `audit`: one row per log entry — who changed what, when, and a digest of the
/// content — kept even for deleted items.
pub struct Audit;

impl Projection for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn create(&self, tx: &mut dyn Tx) -> Result<()> {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS memory_audit (
                gseq BIGINT PRIMARY KEY,
                namespace TEXT NOT NULL,
                seq BIGINT NOT NULL,
                op TEXT NOT NULL,
                item_id BIGINT NOT NULL,
                kind TEXT NOT NULL,
                key TEXT,
                idempotency_key TEXT,
                content_sha256 TEXT NOT NULL,
                at_ms BIGINT NOT NULL
            )",
            &[],
        )?;
        tx.exec(
            "CREATE INDEX IF NOT EXISTS audit_namespace ON memory_audit (namespace, seq)",
            &[],
        )?;
        Ok(())
    }

    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        for e in entries {
            let sha = hex(&Sha256::digest(e.content.as_bytes()));
            tx.exec(
                "INSERT INTO memory_audit (gseq, namespace, seq, op, item_id, kind, key, idempotency_key, content_sha256, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    Val::Int(e.gseq),
                    e.namespace.as_str().into(),
                    Val::Int(e.seq),
                    e.op.as_str().into(),
                    Val::Int(e.item_id()),
                    e.kind.as_str().into(),
                    e.key.as_deref().into(),
                    e.idempotency_key.as_deref().into(),
                    sha.into(),
                    Val::Int(e.at_ms),
                ],
            )?;
        }
        Ok(())
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_audit ORDER BY gseq"]
    }
}
