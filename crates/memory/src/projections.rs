//! The relational projections: items (the current state of every memory),
//! facts (the latest value per key, with every change), recent items per
//! namespace, and the audit trail. Each applies entries with plain SQL and
//! holds nothing in process memory, so a rebuild from zero is running them over
//! the log into empty tables. A batch's new rows go in as multi-row inserts
//! (on PostgreSQL a round trip is most of a statement's cost), folded so the
//! result is the same as applying the entries one by one — and so the same
//! whatever the batches were, which `inferd memory check` compares.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::projection::Projection;
use crate::sql::{hex, insert_rows, Tx, Val};
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
        // The batch's new items are inserted together at the end, as their
        // updates and deletes in the batch left them; changes to items from
        // earlier batches are applied in order as they come.
        let mut fresh: Vec<Option<Vec<Val>>> = Vec::new();
        let mut at: HashMap<i64, usize> = HashMap::new();
        for e in entries {
            let id = e.item_id();
            match (e.op, at.get(&id).copied()) {
                (Op::Put, _) => {
                    at.insert(id, fresh.len());
                    fresh.push(Some(vec![
                        Val::Int(id),
                        e.namespace.as_str().into(),
                        e.kind.as_str().into(),
                        e.key.as_deref().into(),
                        e.content.as_str().into(),
                        e.metadata.as_str().into(),
                        Val::Int(e.seq),
                        Val::Int(1),
                        Val::Int(e.at_ms),
                        Val::Int(e.at_ms),
                    ]));
                }
                (Op::Update, Some(i)) => {
                    if let Some(row) = fresh[i].as_mut() {
                        row[4] = e.content.as_str().into();
                        row[5] = e.metadata.as_str().into();
                        row[6] = Val::Int(e.seq);
                        row[7] = Val::Int(row[7].int().unwrap_or(1) + 1);
                        row[9] = Val::Int(e.at_ms);
                    }
                }
                (Op::Delete, Some(i)) => fresh[i] = None,
                (Op::Update, None) => {
                    tx.exec(
                        "UPDATE memory_items SET content = $1, metadata = $2, seq = $3, version = version + 1, updated_ms = $4 \
                         WHERE id = $5",
                        &[
                            e.content.as_str().into(),
                            e.metadata.as_str().into(),
                            Val::Int(e.seq),
                            Val::Int(e.at_ms),
                            Val::Int(id),
                        ],
                    )?;
                }
                (Op::Delete, None) => {
                    tx.exec("DELETE FROM memory_items WHERE id = $1", &[Val::Int(id)])?;
                }
            }
        }
        let rows: Vec<Vec<Val>> = fresh.into_iter().flatten().collect();
        insert_rows(
            tx,
            "INSERT INTO memory_items (id, namespace, kind, key, content, metadata, seq, version, created_ms, updated_ms)",
            "",
            &rows,
        )?;
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
        // Applied one run of puts and updates at a time, ending at a delete:
        // within such a run, inserting every item's last version and then
        // keeping each namespace's newest `per_namespace` leaves what adding
        // them one by one and trimming after each would (seqs only grow). A
        // delete shrinks a namespace without bringing back what was trimmed,
        // so it ends the run and is applied by itself.
        let mut run: Vec<&Entry> = Vec::new();
        for e in entries {
            if e.op == Op::Delete {
                self.apply_run(tx, &run)?;
                run.clear();
                tx.exec(
                    "DELETE FROM memory_recent WHERE namespace = $1 AND id = $2",
                    &[e.namespace.as_str().into(), Val::Int(e.item_id())],
                )?;
            } else {
                run.push(e);
            }
        }
        self.apply_run(tx, &run)
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_recent ORDER BY namespace, id"]
    }
}

impl Recent {
    fn apply_run(&self, tx: &mut dyn Tx, run: &[&Entry]) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let mut last: HashMap<i64, &Entry> = HashMap::new();
        let mut namespaces: Vec<&str> = Vec::new();
        for e in run {
            if e.op == Op::Update {
                tx.exec(
                    "DELETE FROM memory_recent WHERE namespace = $1 AND id = $2",
                    &[e.namespace.as_str().into(), Val::Int(e.item_id())],
                )?;
            }
            last.insert(e.item_id(), e);
            if !namespaces.contains(&e.namespace.as_str()) {
                namespaces.push(&e.namespace);
            }
        }
        let mut rows: Vec<Vec<Val>> = last
            .into_iter()
            .map(|(id, e)| {
                vec![
                    e.namespace.as_str().into(),
                    Val::Int(id),
                    Val::Int(e.seq),
                    e.kind.as_str().into(),
                    e.key.as_deref().into(),
                    e.content.as_str().into(),
                    Val::Int(e.at_ms),
                ]
            })
            .collect();
        rows.sort_by_key(|r| r[1].int());
        insert_rows(
            tx,
            "INSERT INTO memory_recent (namespace, id, seq, kind, key, content, at_ms)",
            "",
            &rows,
        )?;
        for ns in namespaces {
            tx.exec(
                "DELETE FROM memory_recent WHERE namespace = $1 AND seq <= \
                 (SELECT seq FROM memory_recent WHERE namespace = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
                &[ns.into(), Val::Int(self.per_namespace as i64)],
            )?;
        }
        Ok(())
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
        let rows: Vec<Vec<Val>> = entries
            .iter()
            .map(|e| {
                vec![
                    Val::Int(e.gseq),
                    e.namespace.as_str().into(),
                    Val::Int(e.seq),
                    e.op.as_str().into(),
                    Val::Int(e.item_id()),
                    e.kind.as_str().into(),
                    e.key.as_deref().into(),
                    e.idempotency_key.as_deref().into(),
                    hex(&Sha256::digest(e.content.as_bytes())).into(),
                    Val::Int(e.at_ms),
                ]
            })
            .collect();
        insert_rows(
            tx,
            "INSERT INTO memory_audit (gseq, namespace, seq, op, item_id, kind, key, idempotency_key, content_sha256, at_ms)",
            "",
            &rows,
        )?;
        Ok(())
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_audit ORDER BY gseq"]
    }
}
