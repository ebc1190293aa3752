//! KV-cache bookkeeping: a pool of fixed-size blocks and per-sequence block tables.
//!
//! Pure data structures, no tensors and no async, so plain `#[test]`s drive them.
//! The model never owns the cache layout decisions: it is handed a block table
//! (block ids in position order) and reads/writes the K/V rows those blocks hold.
//! Position `p` of a sequence lives in block `table[p / block_size]`, slot
//! `p % block_size`.
//!
//! Two allocators share these conventions:
//! - [`BlockPool`] + [`BlockTable`]: the simple one (free list, exclusive ownership).
//! - [`KvCacheManager`] + [`SeqBlocks`] (module [`prefix`]): reference-counted blocks
//!   with hash-chained prefix caching and LRU eviction of unreferenced blocks.

pub mod prefix;

pub use prefix::{stable_hash_bytes, KvCacheManager, KvCacheStats, PrefixCacheConfig, SeqBlocks};

/// Index of a block in the pool.
pub type BlockId = u32;

/// Default tokens per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvCacheError {
    #[error("out of KV cache blocks: need {needed}, {free} free of {total}")]
    OutOfBlocks {
        needed: usize,
        free: usize,
        total: usize,
    },
}

pub type Result<T> = std::result::Result<T, KvCacheError>;

/// A free list over `total` blocks. Each allocated block has exactly one owner.
#[derive(Debug)]
pub struct BlockPool {
    total: usize,
    free: Vec<BlockId>,
    block_size: usize,
}

impl BlockPool {
    /// A pool of `total_blocks` blocks of `block_size` tokens each.
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        // Reverse so that low ids are handed out first (easier to read in tests).
        let free = (0..total_blocks as BlockId).rev().collect();
        BlockPool {
            total: total_blocks,
            free,
            block_size,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total_blocks(&self) -> usize {
        self.total
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn used_blocks(&self) -> usize {
        self.total - self.free.len()
    }

    fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>> {
        if n > self.free.len() {
            return Err(KvCacheError::OutOfBlocks {
                needed: n,
                free: self.free.len(),
                total: self.total,
            });
        }
        Ok(self.free.split_off(self.free.len() - n))
    }

    fn release(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for b in blocks {
            debug_assert!(
                (b as usize) < self.total && !self.free.contains(&b),
                "double free of block {b}: this is a bug"
            );
            self.free.push(b);
        }
    }
}

/// The blocks of one sequence, in position order, and how many tokens they hold.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    num_tokens: usize,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Blocks needed beyond those held to store `new_tokens` more tokens.
    pub fn blocks_needed(&self, pool: &BlockPool, new_tokens: usize) -> usize {
        (self.num_tokens + new_tokens)
            .div_ceil(pool.block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Makes room for `new_tokens` more tokens and counts them as stored; on error
    /// nothing changes.
    pub fn append(&mut self, pool: &mut BlockPool, new_tokens: usize) -> Result<()> {
        let need = self.blocks_needed(pool, new_tokens);
        self.blocks.extend(pool.allocate(need)?);
        self.num_tokens += new_tokens;
        Ok(())
    }

    /// Returns every block to the pool.
    pub fn release(&mut self, pool: &mut BlockPool) {
        pool.release(self.blocks.drain(..));
        self.num_tokens = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

    #[test]
    fn append_allocates_by_block() {
        let mut pool = BlockPool::new(4, 16);
        let mut t = BlockTable::new();
        t.append(&mut pool, 1).unwrap();
        assert_eq!(t.blocks().len(), 1);
        t.append(&mut pool, 15).unwrap();
        assert_eq!(t.blocks().len(), 1);
        t.append(&mut pool, 1).unwrap();
        assert_eq!(t.blocks().len(), 2);
        let err = t.append(&mut pool, 64).unwrap_err();
        assert_eq!(
            err,
            KvCacheError::OutOfBlocks {
                needed: 4,
                free: 2,
                total: 4
            }
        );
        assert_eq!(
            (t.num_tokens(), t.blocks().len()),
            (17, 2),
            "failed append changes nothing"
        );
        t.release(&mut pool);
        assert_eq!(pool.free_blocks(), 4);
    }

    #[test]
    fn random_operations_never_leak_or_double_own() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut pool = BlockPool::new(64, 16);
        let mut tables: Vec<BlockTable> = (0..8).map(|_| BlockTable::new()).collect();
        for _ in 0..5000 {
            let t = &mut tables[rng.gen_range(0..8)];
            if rng.gen_bool(0.2) {
                t.release(&mut pool);
            } else {
                let _ = t.append(&mut pool, rng.gen_range(1..40));
            }
            let mut owned = HashSet::new();
            for t in &tables {
                assert_eq!(t.blocks().len(), t.num_tokens().div_ceil(16));
                for &b in t.blocks() {
                    assert!(owned.insert(b), "block {b} owned twice");
                }
            }
            assert_eq!(owned.len() + pool.free_blocks(), pool.total_blocks());
        }
        for t in &mut tables {
            t.release(&mut pool);
        }
        assert_eq!(pool.free_blocks(), 64);
    }
}
