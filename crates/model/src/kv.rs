//! K/V storage for every block of the pool, every layer.
//!
//! Layout `[layer][block][slot][kv_dim]` in f32: one layer's blocks are contiguous,
//! so attention for a layer walks one region. f32 keeps the cache exact while the
//! kernels are being proven; a narrower type is a later memory optimisation.

/// Storage for `num_blocks` blocks of `block_size` tokens across `n_layers` layers.
pub struct KvStore {
    pub n_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvStore {
    pub fn new(n_layers: usize, num_blocks: usize, block_size: usize, kv_dim: usize) -> Self {
        let len = n_layers * num_blocks * block_size * kv_dim;
        KvStore {
            n_layers,
            num_blocks,
            block_size,
            kv_dim,
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Bytes one token takes across all layers (K and V).
    pub fn bytes_per_token(n_layers: usize, kv_dim: usize) -> usize {
        2 * n_layers * kv_dim * std::mem::size_of::<f32>()
    }

    #[inline]
    fn offset(&self, layer: usize, block: u32, slot: usize) -> usize {
        ((layer * self.num_blocks + block as usize) * self.block_size + slot) * self.kv_dim
    }

    /// Index of position `pos` of a sequence with `table` in this layer's storage.
    #[inline]
    pub fn row_offset(&self, layer: usize, table: &[u32], pos: usize) -> usize {
        self.offset(layer, table[pos / self.block_size], pos % self.block_size)
    }

    pub fn write(&mut self, layer: usize, table: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let o = self.row_offset(layer, table, pos);
        self.k[o..o + self.kv_dim].copy_from_slice(k);
        self.v[o..o + self.kv_dim].copy_from_slice(v);
    }

    pub fn k(&self) -> &[f32] {
        &self.k
    }

    pub fn v(&self) -> &[f32] {
        &self.v
    }
}
