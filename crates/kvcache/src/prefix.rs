//! Prefix-caching block manager: automatic prefix caching as in vLLM (v1), so a
//! prompt prefix that another request already computed is reused, not recomputed.
//!
//! **Blocks and references.** One pool of `total_blocks` blocks of `block_size` tokens.
//! A block's reference count is the number of sequences whose block table holds it;
//! a sequence's allocation state is a [`SeqBlocks`] owned by the caller. Every block
//! is in exactly one of three states: *used* (refcount > 0), *cached* (refcount 0 and
//! registered in the hash index: evictable, but still reusable) or *free*.
//!
//! **Hashing.** Once all of a block's positions have been computed
//! ([`KvCacheManager::commit_computed`]), the block is *full* and gets a hash chained
//! over (parent block's hash or a root constant, the request's salt, its token ids).
//! The chain makes a block's hash stand for the whole prefix up to its end, which is
//! what its K/V rows depend on. The salt (`cache_salt`) enters every block, so requests
//! with different salts never share a block (tenant isolation). A partial last block
//! is never registered. A hash alone is never trusted: each registered block keeps its
//! tokens and salt, and a unique *content id* that names its whole prefix; the index is
//! keyed by (hash, parent's content id), and a hit also compares tokens and salt, so
//! even a hash collision cannot hand out another prefix's K/V.
//!
//! **Admission.** [`KvCacheManager::allocate_prompt`] walks the prompt's full blocks
//! through the index and takes a reference on the longest run of hits, leaving at least
//! one prompt token to compute (the model must produce logits for the last token), then
//! allocates fresh blocks for the rest. A hit on a cached block takes it out of the LRU.
//! If an identical block is committed twice (two requests computed the same prefix at
//! once), the second stays in its sequence (block tables are append-only, the model may
//! be reading it) and is not registered again.
//!
//! **Eviction.** Cached blocks form an LRU. When the free list is empty, allocation
//! evicts the least recently used cached block: its hash leaves the index and
//! `evictions_total` counts it. On release a sequence's blocks enter the LRU tail
//! first, so its tail blocks are evicted before its head, and a shared prefix (held by
//! the most sequences, released last) survives longest. A released duplicate takes the
//! place of its evicted twin, or refreshes the recency of its cached twin.
//!
//! **Speculative drafts.** Slots for draft tokens are appended like any others; after
//! verification [`KvCacheManager::truncate_slots`] gives back those of the rejected
//! ones. Only accepted positions are ever committed, so a block that mixes accepted and
//! rejected tokens stays partial and unregistered until real tokens fill it.
//!
//! **Preemption** is by recompute: [`KvCacheManager::release`] the sequence; its
//! committed full blocks stay cached, so re-admitting it with prompt + generated tokens
//! usually hits all of them and recomputes only the tail (the partial block, or the
//! last full block when the tokens fill whole blocks: one token must be computed).
//!
//! With `enable_prefix_caching: false` nothing is hashed or registered and nothing hits:
//! the manager is a plain allocator. Every operation costs O(blocks it touches);
//! only [`KvCacheManager::check_invariants`] scans the whole pool.

mod hash;
mod lru;
#[cfg(test)]
mod tests;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use crate::{BlockId, KvCacheError, Result};
pub use hash::stable_hash_bytes;
use hash::{hash_block, ROOT_HASH};
use lru::Lru;

/// Names one prefix content: ids are handed out once and never reused, so equal ids
/// mean equal prefixes (unlike hashes, which may collide).
type ContentId = u64;

/// The parent content of a sequence's first block.
const ROOT_CONTENT: ContentId = 0;

type BlockHasher = fn(u64, &[u32], Option<u64>) -> u64;

/// Size and policy of a [`KvCacheManager`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheConfig {
    /// Blocks in the pool: the whole KV budget.
    pub total_blocks: usize,
    /// Tokens per block; the usual value is [`crate::DEFAULT_BLOCK_SIZE`] (16).
    pub block_size: usize,
    /// Reuse computed full blocks across requests. When false the manager never hits
    /// and never registers: a plain allocator.
    pub enable_prefix_caching: bool,
}

/// Per-sequence allocation state, owned by the caller (the scheduler's sequence).
/// Hand it back with [`KvCacheManager::release`]; dropping it leaks its blocks.
#[derive(Debug, Default)]
pub struct SeqBlocks {
    /// Block table in position order.
    blocks: Vec<BlockId>,
    /// Hash and content of `blocks[..full.len()]`: the full blocks known to the index
    /// (hit at admission or committed since), a prefix of the table.
    full: Vec<FullBlock>,
    /// Tokens the blocks are allocated for.
    num_tokens: usize,
    /// Prompt tokens reused from the cache at admission.
    num_cached_tokens: usize,
    salt: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct FullBlock {
    hash: u64,
    content: ContentId,
}

impl SeqBlocks {
    /// Block table in position order: position `p` lives in `blocks()[p / block_size]`.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Prompt tokens reused from the prefix cache at admission (a multiple of the block
    /// size): computation starts at this position.
    pub fn num_cached_tokens(&self) -> usize {
        self.num_cached_tokens
    }

    /// Tokens the blocks are allocated for (prompt plus appended slots).
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// The request's `cache_salt`.
    pub fn salt(&self) -> Option<u64> {
        self.salt
    }

    /// Chained hashes of the leading full blocks that are hit or committed.
    pub fn block_hashes(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.full.iter().map(|f| f.hash)
    }
}

/// A snapshot of the pool and the cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvCacheStats {
    pub total_blocks: usize,
    /// Blocks on the free list (no content worth keeping).
    pub free_blocks: usize,
    /// Blocks with refcount > 0.
    pub used_blocks: usize,
    /// Blocks with refcount 0 still in the index: evictable, reusable by a hit.
    pub cached_blocks: usize,
    /// Prompt tokens looked up at admission (0 while caching is disabled).
    pub prefix_queries_total: u64,
    /// Prompt tokens found in the cache at admission.
    pub prefix_hits_total: u64,
    /// Cached blocks evicted to make room.
    pub evictions_total: u64,
}

/// What a block with computed, full content holds, kept so that a hit can be
/// verified token by token.
#[derive(Debug)]
struct BlockContent {
    hash: u64,
    parent_hash: u64,
    content: ContentId,
    parent_content: ContentId,
    salt: Option<u64>,
    tokens: Box<[u32]>,
}

impl BlockContent {
    fn key(&self) -> IndexKey {
        IndexKey {
            hash: self.hash,
            parent_content: self.parent_content,
        }
    }
}

#[derive(Debug, Default)]
struct BlockState {
    ref_count: u32,
    /// Set once the block is full and committed; cleared when it is freed or evicted.
    content: Option<BlockContent>,
    /// Whether the index points at this block (false for a duplicate of an indexed one).
    indexed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct IndexKey {
    hash: u64,
    parent_content: ContentId,
}

#[derive(Debug, Clone, Copy)]
struct Hit {
    id: BlockId,
    full: FullBlock,
}

/// The block pool with its prefix index and LRU; see the module documentation.
#[derive(Debug)]
pub struct KvCacheManager {
    config: PrefixCacheConfig,
    blocks: Vec<BlockState>,
    /// Popped from the back; starts as `total..0` so low ids go first.
    free: Vec<BlockId>,
    /// Exactly the refcount-0 indexed blocks.
    lru: Lru,
    index: HashMap<IndexKey, BlockId>,
    used_blocks: usize,
    next_content: ContentId,
    prefix_queries_total: u64,
    prefix_hits_total: u64,
    evictions_total: u64,
    hasher: BlockHasher,
}

impl KvCacheManager {
    /// Panics if `block_size` is 0 or `total_blocks` does not fit a [`BlockId`].
    pub fn new(config: PrefixCacheConfig) -> Self {
        Self::with_hasher(config, hash_block)
    }

    fn with_hasher(config: PrefixCacheConfig, hasher: BlockHasher) -> Self {
        assert!(
            config.block_size > 0,
            "`block_size` must be positive, got 0"
        );
        let total = config.total_blocks;
        KvCacheManager {
            config,
            blocks: (0..total).map(|_| BlockState::default()).collect(),
            free: (0..total as BlockId).rev().collect(),
            lru: Lru::new(total),
            index: HashMap::new(),
            used_blocks: 0,
            next_content: ROOT_CONTENT + 1,
            prefix_queries_total: 0,
            prefix_hits_total: 0,
            evictions_total: 0,
            hasher,
        }
    }

    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    /// Blocks that could be handed out now (free + evictable cached).
    pub fn available_blocks(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Admits a prompt: takes a reference on the longest cached run of its full blocks
    /// (leaving at least one token to compute), then allocates blocks for the rest, so
    /// `num_tokens() == prompt.len()`. Counts `prompt.len()` queried tokens and the hit
    /// tokens. On `Err(OutOfBlocks)` nothing changes.
    pub fn allocate_prompt(&mut self, prompt: &[u32], salt: Option<u64>) -> Result<SeqBlocks> {
        let hits = self.lookup_prefix(prompt, salt);
        let needed = self.blocks_needed(prompt.len(), &hits);
        if needed > self.available_blocks() {
            return Err(self.out_of_blocks(needed));
        }
        let bs = self.block_size();
        let mut seq = SeqBlocks {
            blocks: Vec::with_capacity(prompt.len().div_ceil(bs)),
            full: Vec::with_capacity(prompt.len() / bs),
            num_tokens: prompt.len(),
            num_cached_tokens: hits.len() * bs,
            salt,
        };
        // Hits first: taking them out of the LRU keeps the allocations below from
        // evicting them.
        for hit in &hits {
            self.acquire(hit.id);
            seq.blocks.push(hit.id);
            seq.full.push(hit.full);
        }
        while seq.blocks.len() < prompt.len().div_ceil(bs) {
            seq.blocks.push(self.allocate_block());
        }
        if self.config.enable_prefix_caching {
            self.prefix_queries_total += prompt.len() as u64;
            self.prefix_hits_total += seq.num_cached_tokens as u64;
        }
        Ok(seq)
    }

    /// Blocks [`Self::allocate_prompt`] would take from the free and evictable ones:
    /// fresh blocks for the part after the cached prefix, plus cached hits that are
    /// evictable now. Admission succeeds exactly when this is at most
    /// [`Self::available_blocks`]. Changes nothing.
    pub fn blocks_needed_for_prompt(&self, prompt: &[u32], salt: Option<u64>) -> usize {
        self.blocks_needed(prompt.len(), &self.lookup_prefix(prompt, salt))
    }

    /// Makes room for `n` more tokens (decode or appended tokens). On
    /// `Err(OutOfBlocks)` nothing changes.
    pub fn append_slots(&mut self, seq: &mut SeqBlocks, n: usize) -> Result<()> {
        let want = (seq.num_tokens + n).div_ceil(self.block_size());
        let needed = want.saturating_sub(seq.blocks.len());
        if needed > self.available_blocks() {
            return Err(self.out_of_blocks(needed));
        }
        while seq.blocks.len() < want {
            seq.blocks.push(self.allocate_block());
        }
        seq.num_tokens += n;
        Ok(())
    }

    /// Gives back the slots past `n`: the positions of draft tokens that verification
    /// rejected. Trailing blocks left without a position return to the free list; a
    /// block that keeps some positions stays, and its rejected positions are simply
    /// written again by the next forward. Only the uncommitted tail can be cut, and it
    /// is never shared (only committed blocks are reachable through hits) and never
    /// indexed, so no other sequence loses anything. Pair it with
    /// [`Self::commit_computed`] up to the accepted tokens only, so that a block holding
    /// a rejected token is never registered.
    ///
    /// Panics if `n` exceeds `seq.num_tokens()` (this only shrinks) or falls inside the
    /// committed blocks.
    pub fn truncate_slots(&mut self, seq: &mut SeqBlocks, n: usize) {
        let bs = self.block_size();
        assert!(
            n <= seq.num_tokens,
            "truncating {} slots to {n}: `truncate_slots` cannot grow a sequence",
            seq.num_tokens
        );
        assert!(
            n >= seq.full.len() * bs,
            "truncating to {n} slots would cut into {} committed blocks of {bs} tokens",
            seq.full.len()
        );
        for id in seq.blocks.drain(n.div_ceil(bs)..).rev() {
            let state = &mut self.blocks[id as usize];
            assert!(
                state.ref_count == 1 && state.content.is_none() && !state.indexed,
                "truncating block {id} that is shared or committed: this is a bug"
            );
            state.ref_count = 0;
            self.used_blocks -= 1;
            self.free.push(id);
        }
        seq.num_tokens = n;
    }

    /// Registers every block of `seq` that is full once the model has written K/V for
    /// positions `< computed_tokens`, so that later requests can hit it. `all_tokens` is
    /// the sequence's whole token list (prompt + generated so far). Idempotent. A block
    /// identical to one already indexed stays in `seq` and is not indexed twice.
    ///
    /// Panics if `computed_tokens` exceeds `seq.num_tokens()` or `all_tokens.len()`.
    pub fn commit_computed(
        &mut self,
        seq: &mut SeqBlocks,
        all_tokens: &[u32],
        computed_tokens: usize,
    ) {
        assert!(
            computed_tokens <= seq.num_tokens && computed_tokens <= all_tokens.len(),
            "`computed_tokens` {computed_tokens} exceeds the {} allocated or {} known tokens",
            seq.num_tokens,
            all_tokens.len()
        );
        if !self.config.enable_prefix_caching {
            return;
        }
        let bs = self.block_size();
        for i in seq.full.len()..computed_tokens / bs {
            let (parent_hash, parent_content) = seq
                .full
                .last()
                .map_or((ROOT_HASH, ROOT_CONTENT), |f| (f.hash, f.content));
            let tokens = &all_tokens[i * bs..(i + 1) * bs];
            let hash = (self.hasher)(parent_hash, tokens, seq.salt);
            let key = IndexKey {
                hash,
                parent_content,
            };
            let content = match self.indexed_match(key, tokens, seq.salt) {
                // Same prefix computed twice: keep ours in place, index the first.
                Some(twin) => self.content_of(twin).content,
                // A new prefix, or a hash collision with another one (then the key is
                // taken and ours stays unindexed; `release` retries).
                None => self.new_content_id(),
            };
            let id = seq.blocks[i];
            let state = &mut self.blocks[id as usize];
            assert!(
                state.content.is_none() && state.ref_count > 0,
                "committing block {id} that is shared or already committed: this is a bug"
            );
            state.content = Some(BlockContent {
                hash,
                parent_hash,
                content,
                parent_content,
                salt: seq.salt,
                tokens: tokens.into(),
            });
            if let Entry::Vacant(slot) = self.index.entry(key) {
                slot.insert(id);
                self.blocks[id as usize].indexed = true;
            }
            seq.full.push(FullBlock { hash, content });
        }
    }

    /// Returns the sequence's references and leaves `seq` empty. Blocks that drop to
    /// refcount 0 go to the LRU if indexed (tail blocks evicted before head blocks),
    /// otherwise to the free list. Used on finish, cancel and preemption.
    pub fn release(&mut self, seq: &mut SeqBlocks) {
        for (i, &id) in seq.blocks.iter().enumerate().rev() {
            if i < seq.full.len() {
                self.offer_duplicate(id);
            }
            let state = &mut self.blocks[id as usize];
            assert!(
                state.ref_count > 0,
                "releasing block {id} with refcount 0: this is a bug"
            );
            state.ref_count -= 1;
            if state.ref_count == 0 {
                self.used_blocks -= 1;
                if state.indexed {
                    self.lru.push_back(id);
                } else {
                    state.content = None;
                    self.free.push(id);
                }
            }
        }
        *seq = SeqBlocks::default();
    }

    pub fn stats(&self) -> KvCacheStats {
        KvCacheStats {
            total_blocks: self.config.total_blocks,
            free_blocks: self.free.len(),
            used_blocks: self.used_blocks,
            cached_blocks: self.lru.len(),
            prefix_queries_total: self.prefix_queries_total,
            prefix_hits_total: self.prefix_hits_total,
            evictions_total: self.evictions_total,
        }
    }

    /// The hits for `prompt`: the longest run of its leading full blocks found in the
    /// index with identical tokens, salt and parent, capped to leave a token to compute.
    fn lookup_prefix(&self, prompt: &[u32], salt: Option<u64>) -> Vec<Hit> {
        if !self.config.enable_prefix_caching {
            return Vec::new();
        }
        let max_blocks = prompt.len().saturating_sub(1) / self.block_size();
        let mut hits = Vec::new();
        let (mut parent_hash, mut parent_content) = (ROOT_HASH, ROOT_CONTENT);
        for tokens in prompt.chunks_exact(self.block_size()).take(max_blocks) {
            let hash = (self.hasher)(parent_hash, tokens, salt);
            let key = IndexKey {
                hash,
                parent_content,
            };
            let Some(id) = self.indexed_match(key, tokens, salt) else {
                break;
            };
            let content = self.content_of(id).content;
            hits.push(Hit {
                id,
                full: FullBlock { hash, content },
            });
            (parent_hash, parent_content) = (hash, content);
        }
        hits
    }

    /// The indexed block under `key` if it holds exactly `tokens` under `salt`.
    fn indexed_match(&self, key: IndexKey, tokens: &[u32], salt: Option<u64>) -> Option<BlockId> {
        let id = *self.index.get(&key)?;
        let content = self.content_of(id);
        (content.salt == salt && *content.tokens == *tokens).then_some(id)
    }

    fn content_of(&self, id: BlockId) -> &BlockContent {
        self.blocks[id as usize]
            .content
            .as_ref()
            .expect("indexed block without content: this is a bug")
    }

    fn blocks_needed(&self, prompt_tokens: usize, hits: &[Hit]) -> usize {
        let fresh = prompt_tokens.div_ceil(self.block_size()) - hits.len();
        let revived = hits
            .iter()
            .filter(|h| self.blocks[h.id as usize].ref_count == 0)
            .count();
        fresh + revived
    }

    fn out_of_blocks(&self, needed: usize) -> KvCacheError {
        KvCacheError::OutOfBlocks {
            needed,
            free: self.available_blocks(),
            total: self.config.total_blocks,
        }
    }

    fn new_content_id(&mut self) -> ContentId {
        let id = self.next_content;
        self.next_content += 1;
        id
    }

    /// Takes a reference on an indexed block found by a hit.
    fn acquire(&mut self, id: BlockId) {
        let state = &mut self.blocks[id as usize];
        if state.ref_count == 0 {
            self.lru.remove(id);
            self.used_blocks += 1;
        }
        state.ref_count += 1;
    }

    /// A block with refcount 1 and no content: from the free list, else by evicting the
    /// least recently used cached block. The caller has checked availability.
    fn allocate_block(&mut self) -> BlockId {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = self
                    .lru
                    .pop_front()
                    .expect("allocating with no free or cached block: this is a bug");
                let state = &mut self.blocks[id as usize];
                let content = state
                    .content
                    .take()
                    .expect("cached block without content: this is a bug");
                state.indexed = false;
                self.index.remove(&content.key());
                self.evictions_total += 1;
                id
            }
        };
        self.blocks[id as usize].ref_count = 1;
        self.used_blocks += 1;
        id
    }

    /// Called on a released sequence's committed block before its reference is dropped.
    /// An unindexed duplicate takes the key if its twin has been evicted meanwhile, or
    /// else refreshes an evictable twin to the recency this block would have had.
    fn offer_duplicate(&mut self, id: BlockId) {
        let state = &self.blocks[id as usize];
        if state.indexed {
            return;
        }
        let content = state
            .content
            .as_ref()
            .expect("committed block without content: this is a bug");
        let key = content.key();
        match self.index.get(&key) {
            None => {
                self.index.insert(key, id);
                self.blocks[id as usize].indexed = true;
            }
            Some(&twin) => {
                let same = self.content_of(twin).content == content.content;
                if same && self.blocks[twin as usize].ref_count == 0 {
                    self.lru.move_to_back(twin);
                }
            }
        }
    }

    /// Panics with a message naming the broken invariant. `live` must be every
    /// [`SeqBlocks`] not yet released. O(total blocks): for tests and debugging.
    pub fn check_invariants(&self, live: &[&SeqBlocks]) {
        let total = self.config.total_blocks;
        let bs = self.block_size();
        assert_eq!(
            self.blocks.len(),
            total,
            "block state count != total_blocks"
        );

        let mut refs = vec![0u32; total];
        for (s, seq) in live.iter().enumerate() {
            check_seq(self, s, seq, &mut refs);
        }
        for (id, state) in self.blocks.iter().enumerate() {
            assert_eq!(
                state.ref_count, refs[id],
                "block {id}: refcount {} but held by {} live sequences",
                state.ref_count, refs[id]
            );
        }

        let mut free = HashSet::new();
        for &id in &self.free {
            assert!(free.insert(id), "block {id} on the free list twice");
            let state = &self.blocks[id as usize];
            assert!(
                state.ref_count == 0 && state.content.is_none() && !state.indexed,
                "free block {id} is referenced or holds content"
            );
            assert!(!self.lru.contains(id), "block {id} both free and cached");
        }
        self.lru.check();
        for id in self.lru.iter() {
            let state = &self.blocks[id as usize];
            assert!(
                state.ref_count == 0 && state.indexed,
                "LRU block {id} is referenced or not indexed"
            );
        }
        let used = self.blocks.iter().filter(|s| s.ref_count > 0).count();
        assert_eq!(used, self.used_blocks, "used_blocks counter is stale");
        for (id, state) in self.blocks.iter().enumerate() {
            if state.ref_count == 0 {
                assert!(
                    free.contains(&(id as BlockId)) || self.lru.contains(id as BlockId),
                    "unreferenced block {id} is neither free nor cached (leaked)"
                );
            }
        }
        assert_eq!(
            self.free.len() + used + self.lru.len(),
            total,
            "free + used + cached != total"
        );

        let mut indexed = 0;
        for (id, state) in self.blocks.iter().enumerate() {
            let Some(c) = &state.content else {
                assert!(!state.indexed, "block {id} indexed without content");
                continue;
            };
            assert!(self.config.enable_prefix_caching, "content while disabled");
            assert_eq!(
                c.tokens.len(),
                bs,
                "block {id} content is not one full block"
            );
            assert_eq!(
                c.hash,
                (self.hasher)(c.parent_hash, &c.tokens, c.salt),
                "block {id} hash does not match its parent hash, tokens and salt"
            );
            assert!(
                c.parent_content < c.content && c.content < self.next_content,
                "block {id} content id out of order"
            );
            let target = self.index.get(&c.key()).copied();
            if state.indexed {
                indexed += 1;
                assert_eq!(
                    target,
                    Some(id as BlockId),
                    "indexed block {id} not under its key"
                );
            } else {
                // A duplicate (or a collision loser) whose key may have been vacated
                // since; `release` offers it to the index again.
                assert!(
                    state.ref_count > 0,
                    "unindexed block {id} kept content at refcount 0"
                );
            }
        }
        assert_eq!(
            indexed,
            self.index.len(),
            "index entries without an indexed block"
        );
    }

    /// Stored tokens of a registered block, for tests.
    #[cfg(test)]
    fn cached_tokens(&self, id: BlockId) -> Option<&[u32]> {
        let state = &self.blocks[id as usize];
        state.indexed.then(|| &*self.content_of(id).tokens)
    }

    /// Cached blocks in eviction order, for tests.
    #[cfg(test)]
    fn lru_order(&self) -> Vec<BlockId> {
        self.lru.iter().collect()
    }
}

fn check_seq(manager: &KvCacheManager, s: usize, seq: &SeqBlocks, refs: &mut [u32]) {
    let bs = manager.block_size();
    assert_eq!(
        seq.blocks.len(),
        seq.num_tokens.div_ceil(bs),
        "live sequence {s}: {} blocks for {} tokens",
        seq.blocks.len(),
        seq.num_tokens
    );
    assert!(
        seq.full.len() <= seq.num_tokens / bs,
        "live sequence {s}: more committed blocks than full blocks"
    );
    assert!(
        seq.num_cached_tokens.is_multiple_of(bs) && seq.num_cached_tokens <= seq.full.len() * bs,
        "live sequence {s}: cached tokens {} not whole committed blocks",
        seq.num_cached_tokens
    );
    let mut own = HashSet::new();
    let mut parent = FullBlock {
        hash: ROOT_HASH,
        content: ROOT_CONTENT,
    };
    for (i, &id) in seq.blocks.iter().enumerate() {
        assert!(
            (id as usize) < refs.len(),
            "live sequence {s}: block id {id} out of range"
        );
        assert!(own.insert(id), "live sequence {s} holds block {id} twice");
        refs[id as usize] += 1;
        let content = manager.blocks[id as usize].content.as_ref();
        match seq.full.get(i) {
            None => assert!(
                content.is_none(),
                "live sequence {s}: uncommitted block {id} holds content"
            ),
            Some(full) => {
                let c = content.unwrap_or_else(|| {
                    panic!("live sequence {s}: committed block {id} has no content")
                });
                assert!(
                    c.hash == full.hash
                        && c.content == full.content
                        && c.parent_hash == parent.hash
                        && c.parent_content == parent.content
                        && c.salt == seq.salt,
                    "live sequence {s}: block {id} content disagrees with its block table"
                );
                parent = *full;
            }
        }
    }
}
