//! Kernel thread ids for `pthread_t` values, without stopping the target. Before 3.11 CPython
//! records only `pthread_t`: on glibc and musl that is the address of the thread's `struct
//! pthread`, which holds the kernel tid at a fixed offset that we find by looking, not by table.

use std::collections::{BTreeSet, HashMap};

use super::memory::{check_pointer, i32_at, Memory};

/// How much of `struct pthread` is searched for the tid (glibc 2.36 keeps it at 0x2d0).
const SEARCH_BYTES: usize = 0x1000;

/// Maps `pthread_t` to kernel tids, learning the tid's offset in `struct pthread`.
#[derive(Default)]
pub struct PthreadTids {
    /// Offsets at which every thread seen so far had its own live tid.
    candidates: Option<BTreeSet<u64>>,
    cache: HashMap<u64, i32>,
}

impl PthreadTids {
    pub fn new() -> PthreadTids {
        PthreadTids::default()
    }

    /// The offset in use, once one is known.
    #[cfg(test)]
    pub fn offset(&self) -> Option<u64> {
        self.candidates.as_ref()?.iter().next().copied()
    }

    /// Resolve `pthreads` against the live task ids (sorted). Unresolvable entries are None.
    pub fn resolve(
        &mut self,
        memory: &dyn Memory,
        pthreads: &[u64],
        live_tids: &[i32],
    ) -> Vec<Option<i32>> {
        let is_live = |tid: i32| live_tids.binary_search(&tid).is_ok();
        self.cache.retain(|_, tid| is_live(*tid));
        let unknown: Vec<u64> = pthreads
            .iter()
            .copied()
            .filter(|p| !self.cache.contains_key(p) && check_pointer(*p, 8).is_ok())
            .collect();
        if !unknown.is_empty() {
            self.learn(memory, &unknown, live_tids);
        }
        pthreads
            .iter()
            .map(|p| self.cache.get(p).copied())
            .collect()
    }

    fn learn(&mut self, memory: &dyn Memory, pthreads: &[u64], live_tids: &[i32]) {
        let is_live = |tid: i32| tid > 0 && live_tids.binary_search(&tid).is_ok();
        let blocks: Vec<(u64, Vec<u8>)> = pthreads
            .iter()
            .filter_map(|&p| Some((p, read_prefix(memory, p)?)))
            .collect();
        if blocks.is_empty() {
            return;
        }
        // An offset survives if, for every thread read now, it holds a live tid that no other
        // thread has (read now, or resolved before). Candidates only shrink: new threads
        // refine an ambiguous guess. In a container tids are small (the main thread's is 1),
        // and a flag or counter holding 1 in every thread would pass for a lone thread's tid:
        // the tids already given out keep it from passing for the next thread's.
        let taken: BTreeSet<i32> = self.cache.values().copied().collect();
        let mut fresh = BTreeSet::new();
        let shortest = blocks.iter().map(|(_, b)| b.len()).min().unwrap_or(0);
        for offset in (0..shortest.saturating_sub(3)).step_by(4) {
            let offset = offset as u64;
            let mut seen = taken.clone();
            let ok = blocks.iter().all(|(_, block)| {
                i32_at(block, offset).is_some_and(|tid| is_live(tid) && seen.insert(tid))
            });
            if ok {
                fresh.insert(offset);
            }
        }
        let candidates = match self.candidates.take() {
            Some(old) => {
                let both: BTreeSet<u64> = old.intersection(&fresh).copied().collect();
                if both.is_empty() {
                    fresh
                } else {
                    both
                }
            }
            None => fresh,
        };
        let offset = candidates.iter().next().copied();
        self.candidates = Some(candidates);
        let Some(offset) = offset else {
            return;
        };
        for (p, block) in &blocks {
            if let Some(tid) = i32_at(block, offset).filter(|t| is_live(*t)) {
                self.cache.insert(*p, tid);
            }
        }
    }
}

/// Read as much of the struct as is mapped (it may sit near the end of a mapping).
fn read_prefix(memory: &dyn Memory, addr: u64) -> Option<Vec<u8>> {
    let mut len = SEARCH_BYTES;
    while len >= 0x100 {
        if let Ok(block) = memory.read_bytes(addr, len) {
            return Some(block);
        }
        len /= 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::memory::MemoryImage;

    fn fake_pthread(tid: i32, tid_offset: usize, decoy: Option<(usize, i32)>) -> Vec<u8> {
        let mut block = vec![0u8; SEARCH_BYTES];
        block[tid_offset..tid_offset + 4].copy_from_slice(&tid.to_le_bytes());
        if let Some((at, value)) = decoy {
            block[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        block
    }

    #[test]
    fn finds_the_tid_offset_from_several_threads() {
        let mut image = MemoryImage::new();
        image.add(0x10000, fake_pthread(100, 0x2d0, Some((0x40, 100))));
        image.add(0x20000, fake_pthread(101, 0x2d0, Some((0x40, 100))));
        let mut map = PthreadTids::new();
        let tids = map.resolve(&image, &[0x10000, 0x20000], &[100, 101]);
        assert_eq!(tids, vec![Some(100), Some(101)]);
        assert_eq!(map.offset(), Some(0x2d0));
    }

    #[test]
    fn one_thread_is_ambiguous_until_a_second_one_appears() {
        let mut image = MemoryImage::new();
        image.add(0x10000, fake_pthread(100, 0x2d0, Some((0x40, 100))));
        let mut map = PthreadTids::new();
        map.resolve(&image, &[0x10000], &[100]);
        assert_eq!(map.offset(), Some(0x40));
        image.add(0x20000, fake_pthread(101, 0x2d0, Some((0x40, 7))));
        let tids = map.resolve(&image, &[0x10000, 0x20000], &[100, 101]);
        assert_eq!(map.offset(), Some(0x2d0));
        assert_eq!(tids, vec![Some(100), Some(101)]);
    }

    #[test]
    fn a_flag_that_matched_a_lone_threads_tid_is_not_taken_for_the_next_threads() {
        // In a container: the main thread is tid 1, and a field before the tid holds 1 in
        // every thread. Alone, the main thread cannot tell them apart (either answer is 1).
        let mut image = MemoryImage::new();
        image.add(0x10000, fake_pthread(1, 0x2d0, Some((0x18, 1))));
        let mut map = PthreadTids::new();
        assert_eq!(map.resolve(&image, &[0x10000], &[1]), vec![Some(1)]);
        image.add(0x20000, fake_pthread(2, 0x2d0, Some((0x18, 1))));
        let tids = map.resolve(&image, &[0x10000, 0x20000], &[1, 2]);
        assert_eq!(tids, vec![Some(1), Some(2)]);
        assert_eq!(map.offset(), Some(0x2d0));
    }

    #[test]
    fn unreadable_or_bogus_pthreads_resolve_to_nothing() {
        let image = MemoryImage::new();
        let mut map = PthreadTids::new();
        assert_eq!(map.resolve(&image, &[0, 0x10000], &[100]), vec![None, None]);
    }

    #[test]
    fn a_dead_tid_is_looked_up_again() {
        let mut image = MemoryImage::new();
        image.add(0x10000, fake_pthread(100, 0x2d0, None));
        image.add(0x20000, fake_pthread(101, 0x2d0, None));
        let mut map = PthreadTids::new();
        map.resolve(&image, &[0x10000, 0x20000], &[100, 101]);
        // Thread 101 exits and glibc reuses its struct pthread for a new thread 102.
        let mut image = MemoryImage::new();
        image.add(0x10000, fake_pthread(100, 0x2d0, None));
        image.add(0x20000, fake_pthread(102, 0x2d0, None));
        let tids = map.resolve(&image, &[0x10000, 0x20000], &[100, 102]);
        assert_eq!(tids, vec![Some(100), Some(102)]);
    }
}
