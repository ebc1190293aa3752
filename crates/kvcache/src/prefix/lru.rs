//! Least-recently-used order over block ids: an intrusive doubly-linked list stored
//! in a `Vec` indexed by block id, so insert, remove and pop are O(1) and nothing
//! allocates after construction.

use crate::BlockId;

const NIL: BlockId = BlockId::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: BlockId,
    next: BlockId,
    linked: bool,
}

/// Front = least recently used (evicted first), back = most recently used.
#[derive(Debug)]
pub(super) struct Lru {
    links: Vec<Link>,
    front: BlockId,
    back: BlockId,
    len: usize,
}

impl Lru {
    /// An empty order over block ids `0..capacity`.
    pub(super) fn new(capacity: usize) -> Self {
        assert!(
            capacity < NIL as usize,
            "at most {} blocks, got {capacity}",
            NIL
        );
        let unlinked = Link {
            prev: NIL,
            next: NIL,
            linked: false,
        };
        Lru {
            links: vec![unlinked; capacity],
            front: NIL,
            back: NIL,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn contains(&self, id: BlockId) -> bool {
        self.links[id as usize].linked
    }

    /// Makes `id` the most recently used.
    pub(super) fn push_back(&mut self, id: BlockId) {
        assert!(
            !self.contains(id),
            "block {id} already in the LRU: this is a bug"
        );
        self.links[id as usize] = Link {
            prev: self.back,
            next: NIL,
            linked: true,
        };
        match self.back {
            NIL => self.front = id,
            back => self.links[back as usize].next = id,
        }
        self.back = id;
        self.len += 1;
    }

    pub(super) fn remove(&mut self, id: BlockId) {
        let Link { prev, next, linked } = self.links[id as usize];
        assert!(linked, "block {id} not in the LRU: this is a bug");
        match prev {
            NIL => self.front = next,
            prev => self.links[prev as usize].next = next,
        }
        match next {
            NIL => self.back = prev,
            next => self.links[next as usize].prev = prev,
        }
        self.links[id as usize] = Link {
            prev: NIL,
            next: NIL,
            linked: false,
        };
        self.len -= 1;
    }

    pub(super) fn move_to_back(&mut self, id: BlockId) {
        self.remove(id);
        self.push_back(id);
    }

    /// Removes and returns the least recently used id.
    pub(super) fn pop_front(&mut self) -> Option<BlockId> {
        let id = self.front;
        if id == NIL {
            return None;
        }
        self.remove(id);
        Some(id)
    }

    /// Ids from least to most recently used.
    pub(super) fn iter(&self) -> impl Iterator<Item = BlockId> + '_ {
        let mut cur = self.front;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let id = cur;
            cur = self.links[id as usize].next;
            Some(id)
        })
    }

    /// Panics unless the links form one consistent list of `len` ids.
    pub(super) fn check(&self) {
        let mut prev = NIL;
        let mut count = 0;
        for id in self.iter() {
            let link = self.links[id as usize];
            assert!(
                link.linked,
                "LRU: block {id} reachable but not marked linked"
            );
            assert_eq!(link.prev, prev, "LRU: block {id} has a wrong prev link");
            prev = id;
            count += 1;
            assert!(count <= self.len, "LRU: list longer than len {}", self.len);
        }
        assert_eq!(prev, self.back, "LRU: back is not the last element");
        assert_eq!(count, self.len, "LRU: len does not match the list");
        let marked = self.links.iter().filter(|l| l.linked).count();
        assert_eq!(
            marked, self.len,
            "LRU: {marked} marked linked, {count} in the list"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recency_order() {
        let mut lru = Lru::new(5);
        for id in [3, 1, 4, 0] {
            lru.push_back(id);
        }
        lru.move_to_back(1);
        lru.remove(4);
        lru.check();
        assert_eq!(lru.iter().collect::<Vec<_>>(), [3, 0, 1]);
        assert_eq!(lru.pop_front(), Some(3));
        assert_eq!(lru.pop_front(), Some(0));
        assert_eq!(lru.pop_front(), Some(1));
        assert_eq!(lru.pop_front(), None);
        lru.check();
        assert!(!lru.contains(1));
    }
}
