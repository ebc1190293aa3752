//! The `vectors` projection and semantic search.
//!
//! Each live item's content is embedded (the in-process MiniLM embedder, L2-
//! normalised, so a dot product is the cosine) while the batch is prepared,
//! outside the transaction; the vectors are stored as little-endian f32 blobs in
//! the same transaction as the checkpoint, and mirrored in process memory once it
//! commits. A namespace's search is exact — every item scored with the
//! kernels' f32 dot product, the top k kept — until it holds
//! [`AnnConfig::from`] items; past that an HNSW graph ([`crate::ann`]) finds the
//! candidates and only the items it does not hold yet are scanned.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use inferd_kernels::Isa;
use serde_json::Value;

use crate::ann::{AnnConfig, Graph, Indexed, Wake, CHUNK};
use crate::projection::Projection;
use crate::sql::{Tx, Val};
use crate::types::{Entry, Hit, Op, Search};
use crate::{Error, Result};

/// Turns texts into unit vectors of one fixed dimension.
pub trait TextEmbedder: Send + Sync {
    fn dims(&self) -> usize;
    /// One vector per text, in order. Texts longer than the model takes are cut
    /// to their beginning.
    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String>;
}

/// Tokens one forward pass of the embedder takes at most (activations grow
/// with it: about 16 KB per token for MiniLM).
const TOKENS_PER_PASS: usize = 8192;

impl TextEmbedder for inferd_embed::Embedder {
    fn dims(&self) -> usize {
        inferd_embed::Embedder::dims(self)
    }

    fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        let max = self.max_tokens();
        let mut ids = Vec::with_capacity(texts.len());
        for t in texts {
            let mut tokens = self.tokenize(t).map_err(|e| e.to_string())?;
            if tokens.len() > max {
                // Keep the beginning and the closing [SEP].
                let last = *tokens.last().expect("longer than max");
                tokens.truncate(max - 1);
                tokens.push(last);
            }
            ids.push(tokens);
        }
        let mut out = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < ids.len() {
            let (mut end, mut tokens) = (start, 0);
            while end < ids.len() && (end == start || tokens + ids[end].len() <= TOKENS_PER_PASS) {
                tokens += ids[end].len();
                end += 1;
            }
            let batch: Vec<&[u32]> = ids[start..end].iter().map(|t| t.as_slice()).collect();
            out.extend(self.embed_tokens(&batch).map_err(|e| e.to_string())?);
            start = end;
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
struct Row {
    id: i64,
    kind: String,
    key: Option<String>,
    content: String,
    metadata: Value,
    seq: i64,
    vector: Vec<f32>,
    /// The graph point holding this row's vector, once indexed.
    point: Option<usize>,
    /// When it was written, in its namespace's upserts.
    stamp: u64,
}

/// One namespace's vectors: its rows (unordered), and past
/// [`AnnConfig::from`] items a graph over them.
#[derive(Default)]
struct Space {
    rows: Vec<Row>,
    at: HashMap<i64, usize>,
    graph: Option<Arc<Graph>>,
    /// The item each point of `graph` was made for.
    points: Vec<i64>,
    /// Points of `graph` no row holds any more (updated or deleted items).
    stale: usize,
    /// Rows whose `point` is set.
    indexed: usize,
    /// Upserts so far, and the last [`RECENT_EXACT`] (item, stamp).
    clock: u64,
    recent: VecDeque<(i64, u64)>,
}

/// A namespace's latest upserts that a search scores exactly, graph or not:
/// a graph may leave an item unreachable (`hnsw_rs` drops the farthest reverse
/// link when a neighbour list is full, so an item unlike all others can lose
/// every incoming edge), and what an agent just wrote is what it most often
/// looks for next.
pub const RECENT_EXACT: usize = 1024;

impl Space {
    fn upsert(&mut self, mut row: Row) {
        self.clock += 1;
        row.stamp = self.clock;
        row.point = None;
        self.recent.push_back((row.id, self.clock));
        if self.recent.len() > RECENT_EXACT {
            self.recent.pop_front();
        }
        match self.at.get(&row.id) {
            Some(&i) => {
                if self.rows[i].point.is_some() {
                    self.stale += 1;
                    self.indexed -= 1;
                }
                self.rows[i] = row;
            }
            None => {
                self.at.insert(row.id, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    fn remove(&mut self, id: i64) {
        let Some(i) = self.at.remove(&id) else {
            return;
        };
        let gone = self.rows.swap_remove(i);
        if gone.point.is_some() {
            self.stale += 1;
            self.indexed -= 1;
        }
        if let Some(moved) = self.rows.get(i) {
            self.at.insert(moved.id, i);
        }
    }

    /// Forgets the graph.
    fn ungraph(&mut self) {
        self.graph = None;
        self.points.clear();
        self.stale = 0;
        self.indexed = 0;
        self.rows.iter_mut().for_each(|r| r.point = None);
    }

    /// The rows a search through the graph scores besides the graph's own
    /// candidates: those not in the graph, and the latest upserts.
    fn tail(&self) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .recent
            .iter()
            .filter_map(|(id, stamp)| {
                let i = *self.at.get(id)?;
                (self.rows[i].stamp == *stamp).then_some(i)
            })
            .collect();
        if self.indexed < self.rows.len() {
            out.extend((0..self.rows.len()).filter(|&i| self.rows[i].point.is_none()));
        }
        out
    }

    /// The row whose current vector is graph point `p`.
    fn row_at_point(&self, p: usize) -> Option<&Row> {
        let row = &self.rows[*self.at.get(self.points.get(p)?)?];
        (row.point == Some(p)).then_some(row)
    }
}

/// What a namespace's indexing pass works from, taken under the read lock.
struct Job {
    namespace: String,
    graph: Arc<Graph>,
    fresh: bool,
    todo: Vec<(i64, i64, Vec<f32>)>,
}

/// The vectors of every namespace, in process memory, with the approximate
/// index of the large ones ([`crate::ann`]).
pub struct VectorIndex {
    namespaces: RwLock<HashMap<String, Space>>,
    ann: AnnConfig,
    wake: Wake,
}

impl Default for VectorIndex {
    fn default() -> VectorIndex {
        VectorIndex::new(AnnConfig::default())
    }
}

impl VectorIndex {
    pub fn new(ann: AnnConfig) -> VectorIndex {
        VectorIndex {
            namespaces: RwLock::default(),
            ann,
            wake: Wake::default(),
        }
    }

    /// Replaces what it holds with what the `memory_vectors` table holds.
    pub fn reload(&self, tx: &mut dyn Tx) -> Result<()> {
        let rows = tx.rows(
            &format!("SELECT {ROW_COLUMNS} FROM memory_vectors ORDER BY id"),
            &[],
        )?;
        let mut map = self
            .namespaces
            .write()
            .expect("index lock poisoned: this is a bug");
        map.clear();
        for r in rows {
            let (ns, row) = row_of(&r);
            map.entry(ns).or_default().upsert(row);
        }
        drop(map);
        self.wake.poke();
        Ok(())
    }

    /// Items held, over every namespace.
    pub fn len(&self) -> usize {
        self.counts().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items held, and how many of them a graph holds.
    pub fn counts(&self) -> (usize, usize) {
        let map = self
            .namespaces
            .read()
            .expect("index lock poisoned: this is a bug");
        map.values().fold((0, 0), |(all, indexed), s| {
            (all + s.rows.len(), indexed + s.indexed)
        })
    }

    /// The `k` items of the namespace nearest `query` (a unit vector) that pass
    /// the filters, best first: through the namespace's graph when it has one,
    /// else by scanning every item.
    pub fn nearest(&self, query: &[f32], search: &Search) -> Vec<Hit> {
        self.find(query, search, true)
    }

    /// [`VectorIndex::nearest`] by scanning every item, graph or not: the
    /// exact answer the graph's is measured against.
    pub fn scan(&self, query: &[f32], search: &Search) -> Vec<Hit> {
        self.find(query, search, false)
    }

    fn find(&self, query: &[f32], search: &Search, use_graph: bool) -> Vec<Hit> {
        let map = self
            .namespaces
            .read()
            .expect("index lock poisoned: this is a bug");
        let Some(space) = map.get(search.namespace.as_str()) else {
            return Vec::new();
        };
        let isa = Isa::detect();
        let passes = |r: &Row| {
            r.vector.len() == query.len()
                && search.kind.as_deref().is_none_or(|k| r.kind == k)
                && search
                    .metadata
                    .iter()
                    .all(|(k, v)| r.metadata.get(k) == Some(v))
        };
        let score = |i: usize| {
            let r = &space.rows[i];
            (inferd_kernels::dot::dot_f32_f32(isa, &r.vector, query), i)
        };
        let approximate = space.graph.as_ref().filter(|_| use_graph).and_then(|g| {
            let keep = |p: usize| space.row_at_point(p).is_some_and(passes);
            let found = g.search(query, search.k, self.ann.ef_search, &keep);
            // Too few of the graph's candidates pass the filter (or are
            // current): the scan below answers, exactly.
            (found.len() >= search.k).then_some(found)
        });
        let mut scored: Vec<(f32, usize)> = match approximate {
            Some(points) => {
                let mut rows: Vec<usize> = points
                    .into_iter()
                    .filter_map(|p| space.points.get(p).and_then(|id| space.at.get(id)))
                    .copied()
                    .collect();
                rows.extend(space.tail().into_iter().filter(|&i| passes(&space.rows[i])));
                rows.sort_unstable();
                rows.dedup();
                rows.into_iter().map(score).collect()
            }
            None => (0..space.rows.len())
                .filter(|&i| passes(&space.rows[i]))
                .map(score)
                .collect(),
        };
        let rows = &space.rows;
        let by_score = |a: &(f32, usize), b: &(f32, usize)| {
            b.0.total_cmp(&a.0).then(rows[a.1].id.cmp(&rows[b.1].id))
        };
        if scored.len() > search.k {
            scored.select_nth_unstable_by(search.k - 1, by_score);
            scored.truncate(search.k);
        }
        scored.sort_by(by_score);
        scored
            .into_iter()
            .map(|(score, i)| {
                let r = &rows[i];
                Hit {
                    id: r.id,
                    score,
                    kind: r.kind.clone(),
                    key: r.key.clone(),
                    content: r.content.clone(),
                    metadata: r.metadata.clone(),
                    seq: r.seq,
                }
            })
            .collect()
    }

    fn apply(&self, changes: Vec<Change>) {
        let mut map = self
            .namespaces
            .write()
            .expect("index lock poisoned: this is a bug");
        for c in changes {
            match c {
                Change::Upsert(ns, row) => map.entry(ns).or_default().upsert(row),
                Change::Remove(ns, id) => {
                    if let Some(space) = map.get_mut(&ns) {
                        space.remove(id);
                    }
                }
            }
        }
        drop(map);
        self.wake.poke();
    }

    /// The namespaces whose graph needs work: made (past `from` items),
    /// rebuilt (a quarter stale), or given the rows it does not hold yet.
    /// Graphs of namespaces fallen below half of `from` are dropped here.
    fn jobs(&self) -> Vec<Job> {
        let from = self.ann.from;
        let mut shrunk = Vec::new();
        let mut jobs = Vec::new();
        let map = self
            .namespaces
            .read()
            .expect("index lock poisoned: this is a bug");
        for (ns, space) in map.iter() {
            let n = space.rows.len();
            if space.graph.is_some() && n < from / 2 {
                shrunk.push(ns.clone());
                continue;
            }
            if n < from && space.graph.is_none() {
                continue;
            }
            let fresh = space.graph.is_none() || space.stale > space.points.len() / 4;
            if !fresh && space.indexed == n {
                // Nothing new: no walk over the rows.
                continue;
            }
            let todo: Vec<(i64, i64, Vec<f32>)> = space
                .rows
                .iter()
                .filter(|r| fresh || r.point.is_none())
                .take(if fresh { usize::MAX } else { CHUNK })
                .map(|r| (r.id, r.seq, r.vector.clone()))
                .collect();
            if todo.is_empty() {
                continue;
            }
            let graph = match (&space.graph, fresh) {
                (Some(g), false) => Arc::clone(g),
                _ => Arc::new(Graph::new(&self.ann, 2 * n)),
            };
            jobs.push(Job {
                namespace: ns.clone(),
                graph,
                fresh,
                todo,
            });
        }
        drop(map);
        if !shrunk.is_empty() {
            let mut map = self
                .namespaces
                .write()
                .expect("index lock poisoned: this is a bug");
            for ns in shrunk {
                if let Some(space) = map.get_mut(&ns).filter(|s| s.rows.len() < from / 2) {
                    space.ungraph();
                }
            }
        }
        jobs
    }

    /// Publishes what a job inserted: each point becomes its row's, unless the
    /// row changed meanwhile (then the point is stale and the row waits for
    /// the next pass).
    fn publish(&self, job: Job, base: usize) {
        let mut map = self
            .namespaces
            .write()
            .expect("index lock poisoned: this is a bug");
        let Some(space) = map.get_mut(&job.namespace) else {
            return;
        };
        if job.fresh {
            space.ungraph();
            space.graph = Some(job.graph);
        } else if !space
            .graph
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, &job.graph))
        {
            return;
        }
        for (k, (id, seq, _)) in job.todo.into_iter().enumerate() {
            let p = base + k;
            if space.points.len() <= p {
                space.points.resize(p + 1, -1);
            }
            space.points[p] = id;
            match space.at.get(&id).map(|&i| &mut space.rows[i]) {
                Some(row) if row.seq == seq && row.point.is_none() => {
                    row.point = Some(p);
                    space.indexed += 1;
                }
                _ => space.stale += 1,
            }
        }
    }
}

impl Indexed for VectorIndex {
    fn wake(&self) -> &Wake {
        &self.wake
    }

    fn index_pass(&self) -> bool {
        if self.ann.from == usize::MAX {
            return false;
        }
        let jobs = self.jobs();
        let more = !jobs.is_empty();
        for job in jobs {
            let vectors: Vec<&[f32]> = job.todo.iter().map(|(_, _, v)| v.as_slice()).collect();
            let base = job.graph.insert(&vectors);
            self.publish(job, base);
        }
        more
    }
}

const ROW_COLUMNS: &str = "id, namespace, kind, key, content, metadata, seq, embedding";

fn row_of(r: &[Val]) -> (String, Row) {
    let ns = r[1].text().unwrap_or_default().to_owned();
    let row = Row {
        point: None,
        stamp: 0,
        id: r[0].int().unwrap_or_default(),
        kind: r[2].text().unwrap_or_default().to_owned(),
        key: r[3].text().map(str::to_owned),
        content: r[4].text().unwrap_or_default().to_owned(),
        metadata: serde_json::from_str(r[5].text().unwrap_or("{}")).unwrap_or(Value::Null),
        seq: r[6].int().unwrap_or_default(),
        vector: from_blob(r[7].blob().unwrap_or_default()),
    };
    (ns, row)
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

enum Change {
    Upsert(String, Row),
    Remove(String, i64),
}

/// Creates the `memory_vectors` table if it is not there.
pub fn create_table(tx: &mut dyn Tx) -> Result<()> {
    let sql = crate::sql::ddl(
        tx.dialect(),
        "CREATE TABLE IF NOT EXISTS memory_vectors (
            id BIGINT PRIMARY KEY,
            namespace TEXT NOT NULL,
            kind TEXT NOT NULL,
            key TEXT,
            content TEXT NOT NULL,
            metadata TEXT NOT NULL,
            seq BIGINT NOT NULL,
            embedding {blob} NOT NULL
        )",
    );
    tx.exec(&sql, &[])?;
    Ok(())
}

/// The niceness writes are embedded at: behind requests (a chat's decode, a
/// search's query embedding) and the relational projections, which then keep
/// their latency while the vectors projection takes what CPU is left.
const EMBED_NICE: i32 = 5;

/// The pool the projection embeds on: a thread per core, each at
/// [`EMBED_NICE`], apart from the engine's pool.
fn embedding_pool() -> &'static inferd_kernels::pool::Pool {
    static POOL: std::sync::OnceLock<inferd_kernels::pool::Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        inferd_kernels::pool::Pool::named(threads, "memory-embed", || {
            crate::ann::lower_priority(EMBED_NICE)
        })
    })
}

type EmbedJob = (
    Vec<String>,
    std::sync::mpsc::Sender<std::result::Result<Vec<Vec<f32>>, String>>,
);

/// A thread at [`EMBED_NICE`] that embeds on [`embedding_pool`] for the
/// projection's runner, which waits for it: the runner itself keeps its
/// priority, so it never holds the projections' turn (SQLite) or a transaction
/// at a low one.
fn start_embedding(embedder: Arc<dyn TextEmbedder>) -> Option<std::sync::mpsc::Sender<EmbedJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<EmbedJob>();
    std::thread::Builder::new()
        .name("memory-embed".into())
        .spawn(move || {
            crate::ann::lower_priority(EMBED_NICE);
            for (texts, reply) in rx {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    inferd_kernels::pool::with_pool(embedding_pool(), || embedder.embed(&refs))
                }))
                .unwrap_or_else(|_| Err("the embedder panicked".into()));
                let _ = reply.send(out);
            }
        })
        .ok()
        .map(|_| tx)
}

/// The projection; it shares its index with the searches.
pub struct Vectors {
    pub embedder: Arc<dyn TextEmbedder>,
    pub index: Arc<VectorIndex>,
    prepared: HashMap<i64, Vec<f32>>,
    pending: Vec<Change>,
    /// The embedding thread, started on the first batch.
    embedding: Option<std::sync::mpsc::Sender<EmbedJob>>,
}

impl Vectors {
    pub fn new(embedder: Arc<dyn TextEmbedder>, index: Arc<VectorIndex>) -> Vectors {
        Vectors {
            embedder,
            index,
            prepared: HashMap::new(),
            pending: Vec::new(),
            embedding: None,
        }
    }
}

impl Projection for Vectors {
    fn name(&self) -> &'static str {
        "vectors"
    }

    fn create(&self, tx: &mut dyn Tx) -> Result<()> {
        create_table(tx)
    }

    fn follow(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        let mut changes = Vec::new();
        for e in entries {
            let id = e.item_id();
            let sql = format!("SELECT {ROW_COLUMNS} FROM memory_vectors WHERE id = $1");
            changes.push(match tx.rows(&sql, &[Val::Int(id)])?.first() {
                Some(r) => {
                    let (ns, row) = row_of(r);
                    Change::Upsert(ns, row)
                }
                None => Change::Remove(e.namespace.clone(), id),
            });
        }
        self.index.apply(changes);
        Ok(())
    }

    fn prepare(&mut self, entries: &[Entry]) -> Result<()> {
        self.prepared.clear();
        let todo: Vec<&Entry> = entries.iter().filter(|e| e.op != Op::Delete).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = todo.iter().map(|e| e.content.clone()).collect();
        if self.embedding.is_none() {
            self.embedding = start_embedding(Arc::clone(&self.embedder));
        }
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self
            .embedding
            .as_ref()
            .is_some_and(|t| t.send((texts, reply)).is_ok());
        if !sent {
            self.embedding = None;
            return Err(Error::Embedding("the embedding thread is gone".into()));
        }
        let vectors = answer
            .recv()
            .map_err(|_| Error::Embedding("the embedding thread is gone".into()))?
            .map_err(Error::Embedding)?;
        for (e, v) in todo.iter().zip(vectors) {
            self.prepared.insert(e.gseq, v);
        }
        Ok(())
    }

    fn apply(&mut self, tx: &mut dyn Tx, entries: &[Entry]) -> Result<()> {
        self.pending.clear();
        for e in entries {
            let id = e.item_id();
            if e.op == Op::Delete {
                tx.exec("DELETE FROM memory_vectors WHERE id = $1", &[Val::Int(id)])?;
                self.pending.push(Change::Remove(e.namespace.clone(), id));
                continue;
            }
            let vector =
                self.prepared.get(&e.gseq).cloned().ok_or_else(|| {
                    Error::Embedding(format!("entry {} was not embedded", e.gseq))
                })?;
            tx.exec(
                "INSERT INTO memory_vectors (id, namespace, kind, key, content, metadata, seq, embedding) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET content = excluded.content, metadata = excluded.metadata, \
                 seq = excluded.seq, embedding = excluded.embedding",
                &[
                    Val::Int(id),
                    e.namespace.as_str().into(),
                    e.kind.as_str().into(),
                    e.key.as_deref().into(),
                    e.content.as_str().into(),
                    e.metadata.as_str().into(),
                    Val::Int(e.seq),
                    to_blob(&vector).into(),
                ],
            )?;
            self.pending.push(Change::Upsert(
                e.namespace.clone(),
                Row {
                    id,
                    kind: e.kind.clone(),
                    key: e.key.clone(),
                    content: e.content.clone(),
                    metadata: serde_json::from_str(&e.metadata).unwrap_or(Value::Null),
                    seq: e.seq,
                    vector,
                    point: None,
                    stamp: 0,
                },
            ));
        }
        Ok(())
    }

    fn committed(&mut self) {
        self.index.apply(std::mem::take(&mut self.pending));
        self.prepared.clear();
    }

    fn rolled_back(&mut self) {
        self.pending.clear();
    }

    fn state_queries(&self) -> Vec<&'static str> {
        vec!["SELECT * FROM memory_vectors ORDER BY id"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Namespace;

    /// Deterministic unit vectors (xorshift).
    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        let v: Vec<f32> = (0..dims)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.into_iter().map(|a| a / n).collect()
    }

    fn row(id: i64, seq: i64, vector: Vec<f32>, team: &str) -> Change {
        Change::Upsert(
            "t/a".into(),
            Row {
                id,
                kind: "note".into(),
                key: None,
                content: format!("item {id}"),
                metadata: serde_json::json!({ "team": team }),
                seq,
                vector,
                point: None,
                stamp: 0,
            },
        )
    }

    fn search(k: usize) -> Search {
        Search {
            namespace: Namespace::parse("t/a").unwrap(),
            query: String::new(),
            k,
            kind: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// The exact answer, by brute force.
    fn exact(vectors: &HashMap<i64, Vec<f32>>, q: &[f32], k: usize) -> Vec<i64> {
        let mut all: Vec<(f32, i64)> = vectors
            .iter()
            .map(|(&id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), id))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|(_, id)| id).collect()
    }

    fn indexed(index: &VectorIndex) -> usize {
        while index.index_pass() {}
        index.counts().1
    }

    const DIMS: usize = 64;

    fn filled(n: i64) -> (VectorIndex, HashMap<i64, Vec<f32>>) {
        let index = VectorIndex::new(AnnConfig {
            from: 1000,
            ..AnnConfig::default()
        });
        let vectors: HashMap<i64, Vec<f32>> =
            (1..=n).map(|id| (id, unit(id as u64, DIMS))).collect();
        let mut ids: Vec<&i64> = vectors.keys().collect();
        ids.sort();
        index.apply(
            ids.into_iter()
                .map(|&id| {
                    row(
                        id,
                        id,
                        vectors[&id].clone(),
                        if id % 1000 == 0 {
                            "rare"
                        } else if id % 10 == 0 {
                            "tenth"
                        } else {
                            "common"
                        },
                    )
                })
                .collect(),
        );
        (index, vectors)
    }

    #[test]
    fn the_graph_finds_what_the_scan_finds() {
        let (index, vectors) = filled(3000);
        assert_eq!(
            indexed(&index),
            3000,
            "past `from` every item is in the graph"
        );
        let (mut found, mut asked) = (0, 0);
        for q in 0..50u64 {
            let q = unit(100_000 + q, DIMS);
            let want = exact(&vectors, &q, 10);
            let got: Vec<i64> = index
                .nearest(&q, &search(10))
                .iter()
                .map(|h| h.id)
                .collect();
            found += got.iter().filter(|id| want.contains(id)).count();
            asked += want.len();
        }
        let recall = found as f64 / asked as f64;
        assert!(recall >= 0.9, "recall@10 {recall}");
        // A stored vector finds its own item first, with its exact score.
        let hits = index.nearest(&vectors[&1234], &search(3));
        assert_eq!(hits[0].id, 1234);
        assert!((hits[0].score - 1.0).abs() < 1e-5);
    }

    #[test]
    fn below_from_there_is_no_graph_and_the_scan_is_exact() {
        let (index, vectors) = filled(900);
        assert_eq!(indexed(&index), 0);
        for q in 0..10u64 {
            let q = unit(7_000 + q, DIMS);
            let got: Vec<i64> = index.nearest(&q, &search(5)).iter().map(|h| h.id).collect();
            assert_eq!(got, exact(&vectors, &q, 5));
        }
    }

    #[test]
    fn updated_deleted_and_unindexed_items_are_answered_as_they_are_now() {
        let (index, mut vectors) = filled(3000);
        indexed(&index);
        // Deleted: never returned, though their points stay in the graph.
        index.apply(
            (1..=200)
                .map(|id| Change::Remove("t/a".into(), id))
                .collect(),
        );
        // Updated: a new vector each; the old point is stale.
        index.apply(
            (201..=400)
                .map(|id| row(id, 10_000 + id, unit(50_000 + id as u64, DIMS), "common"))
                .collect(),
        );
        // Written after the indexer ran: scanned.
        index.apply(
            (3001..=3100)
                .map(|id| row(id, id, unit(id as u64, DIMS), "common"))
                .collect(),
        );
        vectors.extend((3001..=3100).map(|id| (id, unit(id as u64, DIMS))));
        for id in 1..=200 {
            let hits = index.nearest(&vectors[&id], &search(5));
            assert!(
                hits.iter().all(|h| h.id > 200),
                "deleted {id} came back: {hits:?}"
            );
        }
        let old: HashMap<i64, Vec<f32>> =
            (201..=400).map(|id| (id, vectors[&id].clone())).collect();
        vectors.extend((201..=400).map(|id| (id, unit(50_000 + id as u64, DIMS))));
        for id in 201..=400i64 {
            let hits = index.nearest(&vectors[&id], &search(1));
            assert_eq!(hits[0].id, id, "updated {id} is found by its new vector");
            let by_old = index.nearest(&old[&id], &search(5));
            let mut ids: Vec<i64> = by_old.iter().map(|h| h.id).collect();
            ids.dedup();
            assert_eq!(
                ids.len(),
                5,
                "an item once, whatever points it left: {by_old:?}"
            );
            for h in &by_old {
                // Scores are of the item's vector now, never a stale point's.
                let want: f32 = vectors[&h.id]
                    .iter()
                    .zip(&old[&id])
                    .map(|(a, b)| a * b)
                    .sum();
                assert!((h.score - want).abs() < 1e-4, "{h:?}");
            }
        }
        for id in 3001..=3100 {
            assert_eq!(index.nearest(&unit(id as u64, DIMS), &search(1))[0].id, id);
        }
        // 400 of 3000 points stale: under a quarter, the graph is kept and
        // the new rows join it.
        vectors.retain(|&id, _| id > 200);
        assert_eq!(indexed(&index), vectors.len());
        // 600 more deleted: past a quarter, a new graph without stale points.
        index.apply(
            (401..=1000)
                .map(|id| Change::Remove("t/a".into(), id))
                .collect(),
        );
        assert_eq!(indexed(&index), vectors.len() - 600);
        let map = index.namespaces.read().unwrap();
        assert_eq!(map["t/a"].stale, 0, "rebuilt");
        assert_eq!(map["t/a"].points.len(), map["t/a"].rows.len());
    }

    #[test]
    fn filters_hold_and_one_too_narrow_for_the_graph_falls_back_to_the_scan() {
        let (index, vectors) = filled(3000);
        indexed(&index);
        let q = unit(99, DIMS);
        // Three items pass, fewer than k: the scan answers, exactly.
        let mut s = search(5);
        s.metadata.insert("team".into(), "rare".into());
        let got: Vec<i64> = index.nearest(&q, &s).iter().map(|h| h.id).collect();
        let rare: HashMap<i64, Vec<f32>> = vectors
            .iter()
            .filter(|(id, _)| *id % 1000 == 0)
            .map(|(&i, v)| (i, v.clone()))
            .collect();
        assert_eq!(got, exact(&rare, &q, 5));
        // A tenth pass: the graph answers, with only items that pass.
        s.metadata.insert("team".into(), "tenth".into());
        let hits = index.nearest(&q, &s);
        assert_eq!(hits.len(), 5);
        assert!(
            hits.iter().all(|h| h.id % 10 == 0 && h.id % 1000 != 0),
            "{hits:?}"
        );
    }

    #[test]
    fn a_namespace_fallen_below_half_of_from_loses_its_graph() {
        let (index, _) = filled(1200);
        assert_eq!(indexed(&index), 1200);
        index.apply(
            (1..=800)
                .map(|id| Change::Remove("t/a".into(), id))
                .collect(),
        );
        assert_eq!(indexed(&index), 0);
        assert!(index.namespaces.read().unwrap()["t/a"].graph.is_none());
    }
}
