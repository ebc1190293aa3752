use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const BS: usize = 4;

fn manager(total_blocks: usize) -> KvCacheManager {
    KvCacheManager::new(PrefixCacheConfig {
        total_blocks,
        block_size: BS,
        enable_prefix_caching: true,
    })
}

/// `n` distinct tokens starting at `start`.
fn toks(start: u32, n: usize) -> Vec<u32> {
    (start..start + n as u32).collect()
}

/// Admits `prompt`, computes all of it and commits it.
fn admit_computed(m: &mut KvCacheManager, prompt: &[u32], salt: Option<u64>) -> SeqBlocks {
    let mut seq = m.allocate_prompt(prompt, salt).expect("admission");
    m.commit_computed(&mut seq, prompt, prompt.len());
    seq
}

#[test]
fn second_request_hits_committed_prefix() {
    let mut m = manager(16);
    let prompt = toks(100, 10); // 2 full blocks + 2 tokens
    let mut a = m.allocate_prompt(&prompt, None).unwrap();
    assert_eq!(
        (a.num_cached_tokens(), a.blocks().len()),
        (0, 3),
        "cold miss"
    );
    // Not yet computed: nothing to hit.
    let mut b = m.allocate_prompt(&prompt, None).unwrap();
    assert_eq!(b.num_cached_tokens(), 0);
    m.release(&mut b);
    m.commit_computed(&mut a, &prompt, prompt.len());
    assert_eq!(
        a.block_hashes().len(),
        2,
        "the partial block is not committed"
    );

    let mut c = m.allocate_prompt(&prompt, None).unwrap();
    assert_eq!(c.num_cached_tokens(), 8);
    assert_eq!(c.blocks()[..2], a.blocks()[..2], "shares the full blocks");
    assert_ne!(c.blocks()[2], a.blocks()[2], "own partial block");
    assert_eq!(m.cached_tokens(c.blocks()[0]), Some(&prompt[..4]));
    assert_eq!(m.cached_tokens(c.blocks()[1]), Some(&prompt[4..8]));
    assert_eq!(
        c.block_hashes().collect::<Vec<_>>(),
        a.block_hashes().collect::<Vec<_>>()
    );
    m.check_invariants(&[&a, &c]);

    // A different second block: only the first block hits.
    let mut other = prompt.clone();
    other[5] = 7;
    let mut d = m.allocate_prompt(&other, None).unwrap();
    assert_eq!(d.num_cached_tokens(), 4);
    m.check_invariants(&[&a, &c, &d]);
    for s in [&mut a, &mut c, &mut d] {
        m.release(s);
    }
    m.check_invariants(&[]);
    assert_eq!(m.stats().cached_blocks, 2);
}

#[test]
fn salts_never_share_blocks() {
    let mut m = manager(32);
    let prompt = toks(0, 9);
    let mut seqs = vec![
        admit_computed(&mut m, &prompt, None),
        admit_computed(&mut m, &prompt, Some(1)),
        admit_computed(&mut m, &prompt, Some(2)),
    ];
    for salt in [None, Some(1), Some(2), Some(3)] {
        let seq = m.allocate_prompt(&prompt, salt).unwrap();
        let expected = if salt == Some(3) { 0 } else { 8 };
        assert_eq!(seq.num_cached_tokens(), expected, "salt {salt:?}");
        seqs.push(seq);
    }
    let first_blocks: HashSet<_> = seqs[..3].iter().map(|s| s.blocks()[0]).collect();
    assert_eq!(
        first_blocks.len(),
        3,
        "each salt computed its own first block"
    );
    m.check_invariants(&seqs.iter().collect::<Vec<_>>());
    for s in &mut seqs {
        m.release(s);
    }
    m.check_invariants(&[]);
}

#[test]
fn partial_last_block_is_never_cached() {
    let mut m = manager(8);
    let prompt = toks(0, 6);
    let mut a = admit_computed(&mut m, &prompt, None);
    // Decode fills the second block only partly.
    m.append_slots(&mut a, 1).unwrap();
    let mut all = prompt.clone();
    all.push(50);
    m.commit_computed(&mut a, &all, 7);
    assert_eq!(a.block_hashes().len(), 1);
    let partial = a.blocks()[1];
    m.release(&mut a);
    assert_eq!(m.stats().cached_blocks, 1);
    assert_eq!(m.cached_tokens(partial), None);
    assert!(
        m.free.contains(&partial),
        "partial block went to the free list"
    );

    let mut b = m.allocate_prompt(&all, None).unwrap();
    assert_eq!(b.num_cached_tokens(), 4, "only the full block hits");
    m.release(&mut b);
    m.check_invariants(&[]);
}

#[test]
fn hits_leave_at_least_one_token_to_compute() {
    let mut m = manager(16);
    let prompt = toks(0, 12); // exactly 3 full blocks
    let mut a = admit_computed(&mut m, &prompt, None);
    assert_eq!(a.block_hashes().len(), 3);

    let mut b = m.allocate_prompt(&prompt, None).unwrap();
    assert_eq!(b.num_cached_tokens(), 8, "all but the last block hit");
    assert_eq!(b.blocks()[..2], a.blocks()[..2]);
    assert_ne!(
        b.blocks()[2],
        a.blocks()[2],
        "the last block is computed again"
    );
    // That recomputed block is identical to a's: committed but not indexed twice.
    m.commit_computed(&mut b, &prompt, 12);
    assert!(!m.blocks[b.blocks()[2] as usize].indexed);
    m.check_invariants(&[&a, &b]);

    let mut longer = prompt.clone();
    longer.push(99);
    let mut c = m.allocate_prompt(&longer, None).unwrap();
    assert_eq!(
        c.num_cached_tokens(),
        12,
        "one more token: all three blocks hit"
    );
    let mut single = m.allocate_prompt(&prompt[..4], None).unwrap();
    assert_eq!(
        single.num_cached_tokens(),
        0,
        "a one-block prompt computes its block"
    );
    let mut empty = m.allocate_prompt(&[], None).unwrap();
    assert_eq!((empty.blocks().len(), empty.num_cached_tokens()), (0, 0));
    m.check_invariants(&[&a, &b, &c, &single, &empty]);
    for s in [&mut a, &mut b, &mut c, &mut single, &mut empty] {
        m.release(s);
    }
    m.check_invariants(&[]);
}

#[test]
fn eviction_is_lru_across_sequences_and_tail_first_within_one() {
    let mut m = manager(6);
    let mut a = admit_computed(&mut m, &toks(0, 8), None);
    let mut b = admit_computed(&mut m, &toks(100, 8), None);
    let (a0, a1, b0, b1) = (a.blocks()[0], a.blocks()[1], b.blocks()[0], b.blocks()[1]);
    m.release(&mut a);
    m.release(&mut b);
    assert_eq!(m.lru_order(), [a1, a0, b1, b0]);
    assert_eq!(m.stats().free_blocks, 2);

    // Two free blocks go first, then cached blocks in LRU order.
    let mut fillers = Vec::new();
    let mut reused = Vec::new();
    for i in 0..6 {
        let seq = m.allocate_prompt(&toks(1000 + 10 * i, 1), None).unwrap();
        reused.push(seq.blocks()[0]);
        fillers.push(seq);
        m.check_invariants(&fillers.iter().collect::<Vec<_>>());
    }
    assert_eq!(reused[2..], [a1, a0, b1, b0]);
    assert_eq!(m.stats().evictions_total, 4);
    assert!(m.allocate_prompt(&toks(5000, 1), None).is_err());
    for s in &mut fillers {
        m.release(s);
    }
    m.check_invariants(&[]);
}

#[test]
fn hit_takes_block_out_of_lru_and_release_refreshes_it() {
    let mut m = manager(6);
    let mut a = admit_computed(&mut m, &toks(0, 8), None);
    let mut b = admit_computed(&mut m, &toks(100, 8), None);
    let (a0, a1, b0, b1) = (a.blocks()[0], a.blocks()[1], b.blocks()[0], b.blocks()[1]);
    m.release(&mut a);
    m.release(&mut b);
    // Reuse a's head: it leaves the LRU while referenced...
    let mut c = m.allocate_prompt(&toks(0, 5), None).unwrap();
    assert_eq!(c.blocks()[0], a0);
    assert_eq!(m.lru_order(), [a1, b1, b0]);
    assert_eq!(m.stats().cached_blocks, 3);
    m.check_invariants(&[&c]);
    // ...and comes back as the most recent one.
    m.release(&mut c);
    assert_eq!(m.lru_order(), [a1, b1, b0, a0]);
    m.check_invariants(&[]);
}

#[test]
fn shared_prefix_outlives_tails_of_its_sequences() {
    let mut m = manager(8);
    let system = toks(0, 4);
    let prompt = |suffix: u32| [system.clone(), toks(suffix, 5)].concat();
    let mut a = admit_computed(&mut m, &prompt(100), None);
    let mut b = admit_computed(&mut m, &prompt(200), None);
    assert_eq!(b.num_cached_tokens(), 4);
    let (head, a1, b1) = (a.blocks()[0], a.blocks()[1], b.blocks()[1]);
    assert_eq!(b.blocks()[0], head);
    m.release(&mut a);
    assert_eq!(m.lru_order(), [a1], "the head is still held by b");
    m.release(&mut b);
    assert_eq!(
        m.lru_order(),
        [a1, b1, head],
        "b's tail goes before the shared head"
    );
    m.check_invariants(&[]);
}

#[test]
fn counters_count_queried_and_hit_tokens() {
    let mut m = manager(16);
    let prompt = toks(0, 10);
    let mut a = admit_computed(&mut m, &prompt, None);
    let mut b = m.allocate_prompt(&prompt, None).unwrap();
    let stats = m.stats();
    assert_eq!(
        stats,
        KvCacheStats {
            total_blocks: 16,
            free_blocks: 12,
            used_blocks: 4,
            cached_blocks: 0,
            prefix_queries_total: 20,
            prefix_hits_total: 8,
            evictions_total: 0,
        }
    );
    m.release(&mut a);
    m.release(&mut b);
    let stats = m.stats();
    assert_eq!(
        (stats.free_blocks, stats.used_blocks, stats.cached_blocks),
        (14, 0, 2)
    );
}

#[test]
fn failed_allocation_changes_nothing() {
    let mut m = manager(5);
    let prompt = toks(0, 9); // 3 blocks, 2 full
    let mut a = admit_computed(&mut m, &prompt, None);
    let (a0, a1) = (a.blocks()[0], a.blocks()[1]);
    m.release(&mut a);
    let mut hog = m.allocate_prompt(&toks(500, 12), None).unwrap(); // the 3 free blocks
    let before = m.stats();
    let order = m.lru_order();
    assert_eq!((before.free_blocks, before.cached_blocks), (0, 2));

    // Hits the 2 cached blocks (taking them from the evictable set) and needs 2 fresh
    // ones: 4 > 2 available.
    let longer = [prompt.clone(), toks(900, 7)].concat();
    assert_eq!(m.blocks_needed_for_prompt(&longer, None), 4);
    let err = m.allocate_prompt(&longer, None).unwrap_err();
    assert_eq!(
        err,
        KvCacheError::OutOfBlocks {
            needed: 4,
            free: 2,
            total: 5
        }
    );
    assert_eq!(m.stats(), before, "counters and pool unchanged");
    assert_eq!(m.lru_order(), order, "no hit kept, nothing evicted");
    m.check_invariants(&[&hog]);

    let err = m.append_slots(&mut hog, 13).unwrap_err();
    assert_eq!(
        err,
        KvCacheError::OutOfBlocks {
            needed: 4,
            free: 2,
            total: 5
        }
    );
    assert_eq!((hog.num_tokens(), hog.blocks().len()), (12, 3));
    assert_eq!(m.stats(), before);
    m.check_invariants(&[&hog]);

    // Exactly enough succeeds: one hit on a0, one fresh block by evicting a1.
    let short = &prompt[..8];
    assert_eq!(m.blocks_needed_for_prompt(short, None), 2);
    let mut again = m.allocate_prompt(short, None).unwrap();
    assert_eq!(again.blocks(), [a0, a1]);
    assert_eq!(again.num_cached_tokens(), 4);
    assert_eq!((m.available_blocks(), m.stats().evictions_total), (0, 1));
    m.check_invariants(&[&hog, &again]);
    m.release(&mut hog);
    m.release(&mut again);
    m.check_invariants(&[]);
}

#[test]
fn append_slots_grows_by_blocks() {
    let mut m = manager(4);
    let mut seq = m.allocate_prompt(&toks(0, 3), None).unwrap();
    m.append_slots(&mut seq, 1).unwrap();
    assert_eq!(seq.blocks().len(), 1);
    m.append_slots(&mut seq, 1).unwrap();
    assert_eq!((seq.num_tokens(), seq.blocks().len()), (5, 2));
    m.append_slots(&mut seq, 0).unwrap();
    m.append_slots(&mut seq, 11).unwrap();
    assert_eq!((seq.num_tokens(), seq.blocks().len()), (16, 4));
    assert!(m.append_slots(&mut seq, 1).is_err());
    m.check_invariants(&[&seq]);
    m.release(&mut seq);
    assert_eq!(m.stats().free_blocks, 4);
}

#[test]
fn commit_is_idempotent_and_incremental() {
    let mut m = manager(8);
    let prompt = toks(0, 11);
    let mut a = m.allocate_prompt(&prompt, None).unwrap();
    m.commit_computed(&mut a, &prompt, 3);
    assert_eq!(a.block_hashes().len(), 0);
    m.commit_computed(&mut a, &prompt, 9);
    let hashes: Vec<_> = a.block_hashes().collect();
    assert_eq!(hashes.len(), 2);
    m.commit_computed(&mut a, &prompt, 9);
    m.commit_computed(&mut a, &prompt, 5);
    assert_eq!(a.block_hashes().collect::<Vec<_>>(), hashes);
    assert_eq!(m.index.len(), 2);
    m.check_invariants(&[&a]);
    m.release(&mut a);
    m.check_invariants(&[]);
}

#[test]
fn truncate_frees_only_uncommitted_tail_blocks() {
    let mut m = manager(8);
    let prompt = toks(0, 9);
    let mut a = admit_computed(&mut m, &prompt, None);
    // b hits a's two committed blocks; its token 77 is followed by slots for 7 drafts.
    let mut b = m
        .allocate_prompt(&[&prompt[..8], &[77]].concat(), None)
        .unwrap();
    assert_eq!(b.num_cached_tokens(), 8);
    m.append_slots(&mut b, 7).unwrap();
    let tail = b.blocks()[2..].to_vec();
    assert_eq!((b.num_tokens(), tail.len()), (16, 2));
    let free = m.stats().free_blocks;

    m.truncate_slots(&mut b, 13);
    assert_eq!(
        (b.num_tokens(), b.blocks().len()),
        (13, 4),
        "no block emptied"
    );
    assert_eq!(m.stats().free_blocks, free);
    m.truncate_slots(&mut b, 9);
    assert_eq!((b.num_tokens(), b.blocks().len()), (9, 3));
    assert_eq!(m.stats().free_blocks, free + 1);
    assert!(m.free.contains(&tail[1]), "the emptied block is free");
    m.check_invariants(&[&a, &b]);
    // Down to the committed blocks, which a still shares.
    m.truncate_slots(&mut b, 8);
    m.truncate_slots(&mut b, 8);
    assert_eq!(b.blocks(), &a.blocks()[..2]);
    assert_eq!(m.stats().free_blocks, free + 2);
    assert_eq!(m.index.len(), 2, "committed blocks stay indexed");
    m.check_invariants(&[&a, &b]);

    m.append_slots(&mut b, 1).unwrap();
    assert!(tail.contains(&b.blocks()[2]), "freed blocks are reused");
    m.check_invariants(&[&a, &b]);
    m.release(&mut a);
    m.release(&mut b);
    m.check_invariants(&[]);
    assert_eq!(m.stats().cached_blocks, 2);
}

#[test]
#[should_panic(expected = "would cut into 2 committed blocks")]
fn truncate_refuses_to_cut_committed_blocks() {
    let mut m = manager(8);
    let mut a = admit_computed(&mut m, &toks(0, 9), None);
    m.truncate_slots(&mut a, 7);
}

#[test]
#[should_panic(expected = "cannot grow")]
fn truncate_refuses_to_grow() {
    let mut m = manager(8);
    let mut a = m.allocate_prompt(&toks(0, 5), None).unwrap();
    m.truncate_slots(&mut a, 6);
}

#[test]
fn rejected_drafts_are_never_registered() {
    let mut m = manager(8);
    // Six computed tokens; then the sampled token 60 (position 6) and the drafts 61, 62
    // and 63, computed together in one forward.
    let mut tokens = toks(0, 6);
    let mut seq = admit_computed(&mut m, &tokens, None);
    tokens.extend([60, 61, 62, 63]);
    m.append_slots(&mut seq, 4).unwrap();
    assert_eq!(seq.blocks().len(), 3);

    // Verification rejects the first draft: block 1 now mixes accepted positions (4..=6)
    // with a rejected one (7), and block 2 holds only rejected ones.
    let computed = 7;
    tokens.truncate(computed);
    m.commit_computed(&mut seq, &tokens, computed);
    m.truncate_slots(&mut seq, computed);
    assert_eq!(seq.blocks().len(), 2, "the all-rejected block is freed");
    assert_eq!(
        seq.block_hashes().len(),
        1,
        "the mixed block is not committed"
    );
    assert_eq!(m.cached_tokens(seq.blocks()[1]), None);
    m.check_invariants(&[&seq]);

    // A request that continues with the rejected draft hits only the accepted, full
    // block before it.
    let with_draft = [toks(0, 6), vec![60, 61, 9]].concat();
    let mut other = m.allocate_prompt(&with_draft, None).unwrap();
    assert_eq!(other.num_cached_tokens(), 4);
    m.check_invariants(&[&seq, &other]);
    m.release(&mut other);

    // The model's own token takes the rejected position; once computed, the block is
    // registered with it, and only with it.
    tokens.push(70);
    m.append_slots(&mut seq, 1).unwrap();
    m.commit_computed(&mut seq, &tokens, 8);
    assert_eq!(m.cached_tokens(seq.blocks()[1]), Some(&[4, 5, 60, 70][..]));
    let mut hit = m
        .allocate_prompt(&[&tokens[..], &[1]].concat(), None)
        .unwrap();
    assert_eq!(hit.num_cached_tokens(), 8);
    let mut miss = m.allocate_prompt(&with_draft, None).unwrap();
    assert_eq!(miss.num_cached_tokens(), 4, "the rejected draft never hits");
    m.check_invariants(&[&seq, &hit, &miss]);
    for s in [&mut seq, &mut hit, &mut miss] {
        m.release(s);
    }
    m.check_invariants(&[]);
}

#[test]
fn identical_concurrent_blocks_are_indexed_once_and_never_swapped() {
    let mut m = manager(16);
    let prompt = toks(0, 9);
    let mut a = m.allocate_prompt(&prompt, None).unwrap();
    let mut b = m.allocate_prompt(&prompt, None).unwrap();
    let b_table = b.blocks().to_vec();
    m.commit_computed(&mut a, &prompt, 9);
    m.commit_computed(&mut b, &prompt, 9);
    assert_eq!(b.blocks(), b_table, "b keeps its own blocks");
    assert_eq!(m.index.len(), 2, "no duplicate registered");
    assert_eq!(
        b.block_hashes().collect::<Vec<_>>(),
        a.block_hashes().collect::<Vec<_>>()
    );
    // b's continuation is indexed under the shared prefix, so it is reachable.
    let mut b_all = prompt.clone();
    m.append_slots(&mut b, 4).unwrap();
    b_all.extend([7, 7, 7, 7]);
    m.commit_computed(&mut b, &b_all, 13);
    let mut c = m
        .allocate_prompt(&[b_all.clone(), vec![1]].concat(), None)
        .unwrap();
    assert_eq!(c.num_cached_tokens(), 12);
    assert_eq!(c.blocks()[..2], a.blocks()[..2]);
    assert_eq!(c.blocks()[2], b.blocks()[2]);
    m.check_invariants(&[&a, &b, &c]);
    m.release(&mut c);

    // a's copies are evicted while b still holds its twins...
    m.release(&mut a);
    let mut filler = m.allocate_prompt(&toks(500, 4 * 12), None).unwrap();
    assert_eq!(m.stats().evictions_total, 2);
    m.check_invariants(&[&b, &filler]);
    m.release(&mut filler);
    // ...so releasing b indexes its twins instead of dropping them.
    m.release(&mut b);
    m.check_invariants(&[]);
    let c = m
        .allocate_prompt(&[b_all.clone(), vec![1]].concat(), None)
        .unwrap();
    assert_eq!(c.num_cached_tokens(), 12);
    assert_eq!(c.blocks()[..3], b_table[..3]);
}

#[test]
fn released_duplicate_refreshes_its_cached_twin() {
    let mut m = manager(16);
    let prompt = toks(0, 9);
    let mut a = m.allocate_prompt(&prompt, None).unwrap();
    let mut b = m.allocate_prompt(&prompt, None).unwrap();
    m.commit_computed(&mut a, &prompt, 9);
    m.commit_computed(&mut b, &prompt, 9);
    let (a0, a1) = (a.blocks()[0], a.blocks()[1]);
    m.release(&mut a);
    let mut x = admit_computed(&mut m, &toks(100, 4), None);
    let x0 = x.blocks()[0];
    m.release(&mut x);
    assert_eq!(m.lru_order(), [a1, a0, x0]);
    m.release(&mut b);
    assert_eq!(m.lru_order(), [x0, a1, a0], "b's twins took b's recency");
    m.check_invariants(&[]);
}

#[test]
fn disabled_caching_is_a_plain_allocator() {
    let mut m = KvCacheManager::new(PrefixCacheConfig {
        total_blocks: 8,
        block_size: BS,
        enable_prefix_caching: false,
    });
    let prompt = toks(0, 9);
    let mut a = admit_computed(&mut m, &prompt, None);
    assert_eq!(a.block_hashes().len(), 0);
    let mut b = m.allocate_prompt(&prompt, None).unwrap();
    assert_eq!(b.num_cached_tokens(), 0);
    assert_eq!(m.blocks_needed_for_prompt(&prompt, None), 3);
    m.check_invariants(&[&a, &b]);
    m.release(&mut a);
    m.release(&mut b);
    assert_eq!(
        m.stats(),
        KvCacheStats {
            total_blocks: 8,
            free_blocks: 8,
            ..Default::default()
        }
    );
    m.check_invariants(&[]);
}

#[test]
fn hash_collisions_never_return_another_prefix() {
    // Every block hashes alike: only the stored tokens, salt and parent tell them apart.
    let mut m = KvCacheManager::with_hasher(
        PrefixCacheConfig {
            total_blocks: 16,
            block_size: BS,
            enable_prefix_caching: true,
        },
        |_, _, _| 42,
    );
    let mut a = admit_computed(&mut m, &toks(0, 9), None);
    let mut b = m.allocate_prompt(&toks(100, 9), None).unwrap();
    assert_eq!(b.num_cached_tokens(), 0, "different tokens, same hash");
    let mut c = m.allocate_prompt(&toks(0, 9), Some(1)).unwrap();
    assert_eq!(c.num_cached_tokens(), 0, "different salt, same hash");
    // Same second block after a different first one: the parent differs.
    let mut d = m
        .allocate_prompt(&[toks(100, 4), toks(4, 5)].concat(), None)
        .unwrap();
    assert_eq!(d.num_cached_tokens(), 0);
    let mut e = m.allocate_prompt(&toks(0, 9), None).unwrap();
    assert_eq!(e.num_cached_tokens(), 8, "the genuine prefix still hits");
    m.check_invariants(&[&a, &b, &c, &d, &e]);
    for s in [&mut a, &mut b, &mut c, &mut d, &mut e] {
        m.release(s);
    }
    m.check_invariants(&[]);
}

/// What each block's K/V rows stand for in the random test: the salt and the whole
/// token prefix up to the last position written into the block.
type KvRows = HashMap<BlockId, (Option<u64>, Vec<u32>)>;

/// A sequence in the random test, with what the model has "computed" so far.
struct Live {
    blocks: SeqBlocks,
    tokens: Vec<u32>,
    computed: usize,
}

/// The model writes position `p`'s K/V. A committed block's rows are what every hit on
/// it reads, so they must never change: a write may only land past the committed blocks.
fn write_kv(kv: &mut KvRows, s: &Live, p: usize) {
    assert!(
        p >= s.blocks.block_hashes().len() * BS,
        "writing position {p} into a committed block"
    );
    let b = s.blocks.blocks()[p / BS];
    kv.insert(b, (s.blocks.salt(), s.tokens[..=p].to_vec()));
}

/// Drives the manager like a scheduler would and checks every invariant after every
/// operation. `kv` stands in for the K/V rows: for each block, the salt and the whole
/// token prefix up to the last position written into it, so a hit is proven to hand
/// out exactly the data the prompt needs.
fn random_operations(seed: u64, hasher: BlockHasher) -> KvCacheStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = KvCacheManager::with_hasher(
        PrefixCacheConfig {
            total_blocks: 48,
            block_size: BS,
            enable_prefix_caching: true,
        },
        hasher,
    );
    // Shared prefixes, including one that extends another.
    let prefixes: Vec<Vec<u32>> = vec![
        vec![],
        toks(0, 13),
        toks(0, 24),
        toks(1000, 8),
        [toks(2000, 5), toks(0, 10)].concat(),
    ];
    let salts = [None, Some(1), Some(2)];
    let mut kv = KvRows::new();
    let mut live: Vec<Live> = Vec::new();
    let mut preempted: Vec<(Option<u64>, Vec<u32>)> = Vec::new();

    for _ in 0..5000 {
        let op = rng.gen_range(0..100);
        if op < 25 || live.is_empty() {
            // Admit a new prompt, or re-admit a preempted sequence.
            let (salt, prompt) = if !preempted.is_empty() && rng.gen_bool(0.3) {
                preempted.swap_remove(rng.gen_range(0..preempted.len()))
            } else {
                let mut prompt = prefixes[rng.gen_range(0..prefixes.len())].clone();
                // A small vocabulary makes equal suffixes (more sharing) likely.
                let n = rng.gen_range(0..12);
                prompt.extend((0..n).map(|_| rng.gen_range(0..3)));
                (salts[rng.gen_range(0..salts.len())], prompt)
            };
            let needed = m.blocks_needed_for_prompt(&prompt, salt);
            let before = m.stats();
            match m.allocate_prompt(&prompt, salt) {
                Ok(seq) => {
                    assert!(needed <= before.free_blocks + before.cached_blocks);
                    let hit_blocks = seq.num_cached_tokens() / BS;
                    assert!(prompt.is_empty() || seq.num_cached_tokens() < prompt.len());
                    for (i, &b) in seq.blocks().iter().enumerate() {
                        if i < hit_blocks {
                            let want = (salt, prompt[..(i + 1) * BS].to_vec());
                            assert_eq!(kv.get(&b), Some(&want), "hit block {b} holds other data");
                            assert_eq!(m.cached_tokens(b), Some(&prompt[i * BS..(i + 1) * BS]));
                        } else {
                            kv.remove(&b); // fresh block: whatever it held is gone
                        }
                    }
                    let after = m.stats();
                    assert_eq!(
                        after.prefix_queries_total - before.prefix_queries_total,
                        prompt.len() as u64
                    );
                    assert_eq!(
                        after.prefix_hits_total - before.prefix_hits_total,
                        seq.num_cached_tokens() as u64
                    );
                    let computed = seq.num_cached_tokens();
                    live.push(Live {
                        blocks: seq,
                        tokens: prompt,
                        computed,
                    });
                }
                Err(KvCacheError::OutOfBlocks {
                    needed: n, free, ..
                }) => {
                    assert_eq!(
                        (n, free),
                        (needed, before.free_blocks + before.cached_blocks)
                    );
                    assert!(needed > free);
                    assert_eq!(m.stats(), before, "failed admission changed something");
                    preempted.push((salt, prompt)); // retry later
                }
            }
        } else {
            let i = rng.gen_range(0..live.len());
            let s = &mut live[i];
            match op {
                25..=69 if s.computed < s.tokens.len() => {
                    // Prefill chunk or decode step: the model writes K/V, then commit.
                    let end = (s.computed + rng.gen_range(1..=10)).min(s.tokens.len());
                    for p in s.computed..end {
                        write_kv(&mut kv, s, p);
                    }
                    s.computed = end;
                    m.commit_computed(&mut s.blocks, &s.tokens, s.computed);
                }
                25..=69 if rng.gen_bool(0.4) => speculative_step(&mut m, s, &mut kv, &mut rng),
                25..=69 => {
                    // Sample one token, or append a few at once.
                    let n = if rng.gen_bool(0.8) {
                        1
                    } else {
                        rng.gen_range(2..5)
                    };
                    let before = (m.stats(), s.blocks.blocks().to_vec());
                    if m.append_slots(&mut s.blocks, n).is_ok() {
                        for &b in &s.blocks.blocks()[before.1.len()..] {
                            kv.remove(&b);
                        }
                        s.tokens.extend((0..n).map(|_| rng.gen_range(0..3)));
                    } else {
                        assert_eq!((m.stats(), s.blocks.blocks().to_vec()), before);
                    }
                }
                70..=79 => {
                    // Re-commit (idempotent) with the same progress.
                    let hashes: Vec<_> = s.blocks.block_hashes().collect();
                    m.commit_computed(&mut s.blocks, &s.tokens, s.computed);
                    assert_eq!(s.blocks.block_hashes().collect::<Vec<_>>(), hashes);
                }
                80..=89 => {
                    // Preempt by recompute: release now, re-admit everything later.
                    let mut s = live.swap_remove(i);
                    let salt = s.blocks.salt();
                    m.release(&mut s.blocks);
                    assert!(s.blocks.blocks().is_empty());
                    preempted.push((salt, s.tokens));
                }
                _ => {
                    // Finish or cancel.
                    let mut s = live.swap_remove(i);
                    m.release(&mut s.blocks);
                }
            }
        }
        let seqs: Vec<&SeqBlocks> = live.iter().map(|s| &s.blocks).collect();
        m.check_invariants(&seqs);
        let st = m.stats();
        assert_eq!(
            st.free_blocks + st.used_blocks + st.cached_blocks,
            st.total_blocks
        );
    }
    for s in &mut live {
        m.release(&mut s.blocks);
    }
    m.check_invariants(&[]);
    let st = m.stats();
    assert_eq!(st.used_blocks, 0);
    assert_eq!(st.free_blocks + st.cached_blocks, st.total_blocks);
    st
}

/// A speculative decode step of a fully computed sequence, as the scheduler drives it:
/// slots for a sampled token and `k` drafts, one forward writing K/V for all of them,
/// then verification accepts the first few drafts; only those are committed, the
/// rejected ones' slots are cut off and the model's own token takes the first rejected
/// position. Were a block holding a rejected draft committed, writing the model's token
/// there would change a committed block's K/V, which `write_kv` refuses.
fn speculative_step(m: &mut KvCacheManager, s: &mut Live, kv: &mut KvRows, rng: &mut StdRng) {
    let k = rng.gen_range(1..=5);
    let before = (m.stats(), s.blocks.blocks().to_vec());
    if m.append_slots(&mut s.blocks, 1 + k).is_err() {
        assert_eq!((m.stats(), s.blocks.blocks().to_vec()), before);
        return;
    }
    for &b in &s.blocks.blocks()[before.1.len()..] {
        kv.remove(&b);
    }
    s.tokens.extend((0..=k).map(|_| rng.gen_range(0..3)));
    for p in s.computed..s.tokens.len() {
        write_kv(kv, s, p);
    }
    let accepted = rng.gen_range(0..=k);
    s.computed += 1 + accepted;
    let rejected = s.tokens.get(s.computed).copied();
    s.tokens.truncate(s.computed);
    m.commit_computed(&mut s.blocks, &s.tokens, s.computed);
    m.truncate_slots(&mut s.blocks, s.computed);
    assert_eq!(s.blocks.num_tokens(), s.computed);
    // The model's token differs from the draft it rejected.
    let own = match rejected {
        Some(d) => (d + rng.gen_range(1..3)) % 3,
        None => rng.gen_range(0..3),
    };
    match m.append_slots(&mut s.blocks, 1) {
        Ok(()) => s.tokens.push(own),
        Err(_) => assert!(
            rejected.is_none(),
            "the rejected drafts' slots make room for the model's token"
        ),
    }
}

#[test]
fn random_operations_keep_invariants() {
    for seed in 0..3 {
        let st = random_operations(seed, hash_block);
        assert!(
            st.prefix_hits_total > 0,
            "seed {seed}: the test never hit: {st:?}"
        );
        assert!(
            st.evictions_total > 0,
            "seed {seed}: the test never evicted: {st:?}"
        );
    }
}

#[test]
fn random_operations_keep_invariants_under_hash_collisions() {
    let st = random_operations(3, |_, tokens, _| u64::from(tokens[0] % 2));
    assert!(st.prefix_hits_total > 0, "the test never hit: {st:?}");
}
