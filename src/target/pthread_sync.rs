//! glibc's pthread mutexes read from outside, as raw words: which thread owns one, and how many
//! threads are inside it, condition waits included. Interpretation only; never writes to the
//! target, and the caller checks the libc is glibc before trusting a count.
//!
//! The GIL is a mutex and condition variables (CPython's `gil->mutex`, `gil->cond`,
//! `switch_mutex`, `switch_cond`). A thread that owns a mutex, or is inside a condition wait,
//! is inside `take_gil` or `drop_gil`, whether it is asleep there or runnable and queued for a
//! CPU; the kernel's /proc files only show the first case.

use super::memory::u32_at;

/// `sizeof(pthread_cond_t)` and `sizeof(pthread_mutex_t)` on x86_64 glibc.
pub const COND_BYTES: usize = 48;
pub const MUTEX_BYTES: usize = 40;

/// A glibc `pthread_mutex_t` (x86_64): `__lock` at 0, `__owner` (the owner's kernel tid, set
/// after locking and cleared before unlocking) at 8, `__nusers` at 12. Unchanged since glibc
/// 2.3 (2.41 changed only the condition variable).
///
/// `__nusers` counts the threads between a `pthread_mutex_lock` and its `pthread_mutex_unlock`:
/// a condition wait releases and takes the mutex back without changing it, so the threads
/// asleep in a wait on a condition that uses the mutex, woken and queued for a CPU, or
/// blocked taking the mutex back, all count. CPython's `take_gil` holds `gil->mutex` from its
/// start to its end around its condition wait, and a forced release holds `switch_mutex`
/// around its wait on `switch_cond`: the two counts are the threads inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MutexWords {
    lock: u32,
    owner: u32,
    users: u32,
}

impl MutexWords {
    pub fn from_bytes(bytes: &[u8]) -> Option<MutexWords> {
        Some(MutexWords {
            lock: u32_at(bytes, 0)?,
            owner: u32_at(bytes, 8)?,
            users: u32_at(bytes, 12)?,
        })
    }

    /// The kernel tid of the thread that owns the mutex, if it is locked and says by whom.
    pub fn owner(&self) -> Option<i32> {
        let owner = self.owner as i32;
        (self.lock != 0 && owner > 0).then_some(owner)
    }

    /// Threads between locking the mutex and unlocking it, condition waits included.
    pub fn users(&self) -> u32 {
        self.users
    }
}

/// Is `offset` (from the start of a condition variable) where glibc's waiters sleep? 2.25 to
/// 2.40 keep the futex words `__g_signals[2]` at 40 and 44; 2.41 moved them to 32 and 36. A
/// GIL waiter seen asleep there shows the target's mutexes are glibc's too (musl's waiters
/// sleep on their own stacks).
pub fn glibc_cond_sleeper(offset: u64) -> bool {
    matches!(offset, 32 | 36 | 40 | 44)
}

/// The GIL's two mutexes at one instant (its condition variables are not needed: the mutexes
/// count their waiters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GilSync {
    pub mutex: MutexWords,
    pub switch_mutex: MutexWords,
}

impl GilSync {
    /// From the four objects laid end to end (`cond`, `mutex`, `switch_cond`, `switch_mutex`,
    /// as in `struct _gil_runtime_state` from 3.7 on).
    pub fn from_bytes(bytes: &[u8]) -> Option<GilSync> {
        let mutex_at = COND_BYTES;
        let switch_mutex_at = mutex_at + MUTEX_BYTES + COND_BYTES;
        Some(GilSync {
            mutex: MutexWords::from_bytes(bytes.get(mutex_at..mutex_at + MUTEX_BYTES)?)?,
            switch_mutex: MutexWords::from_bytes(
                bytes.get(switch_mutex_at..switch_mutex_at + MUTEX_BYTES)?,
            )?,
        })
    }

    /// Bytes of [`GilSync::from_bytes`]'s input.
    pub const BYTES: usize = 2 * (COND_BYTES + MUTEX_BYTES);

    /// Does thread `tid` own the GIL's mutex or its switch mutex?
    pub fn owned_by(&self, tid: i32) -> bool {
        self.mutex.owner() == Some(tid) || self.switch_mutex.owner() == Some(tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutex_is_owned_only_while_locked_by_a_named_thread() {
        let mut bytes = [0u8; MUTEX_BYTES];
        assert_eq!(MutexWords::from_bytes(&bytes).unwrap().owner(), None);
        bytes[0] = 2; // locked, with waiters
        bytes[8..12].copy_from_slice(&4242i32.to_le_bytes());
        assert_eq!(MutexWords::from_bytes(&bytes).unwrap().owner(), Some(4242));
        // Unlocked: a stale owner is nobody (glibc clears it first, but a read may race).
        bytes[0] = 0;
        assert_eq!(MutexWords::from_bytes(&bytes).unwrap().owner(), None);
        assert!(MutexWords::from_bytes(&bytes[..8]).is_none());
    }

    #[test]
    fn glibc_waiters_sleep_on_the_signal_words() {
        for offset in [32, 36, 40, 44] {
            assert!(glibc_cond_sleeper(offset));
        }
        assert!(!glibc_cond_sleeper(0) && !glibc_cond_sleeper(48));
    }

    #[test]
    fn the_gil_mutexes_are_read_end_to_end() {
        let mut bytes = vec![0u8; GilSync::BYTES];
        // mutex: 3 users, unlocked; switch_mutex: owned by 7, 1 user.
        bytes[COND_BYTES + 12..COND_BYTES + 16].copy_from_slice(&3u32.to_le_bytes());
        let switch_mutex = 2 * COND_BYTES + MUTEX_BYTES;
        bytes[switch_mutex] = 1;
        bytes[switch_mutex + 8..switch_mutex + 12].copy_from_slice(&7i32.to_le_bytes());
        bytes[switch_mutex + 12..switch_mutex + 16].copy_from_slice(&1u32.to_le_bytes());
        let sync = GilSync::from_bytes(&bytes).unwrap();
        assert_eq!((sync.mutex.users(), sync.switch_mutex.users()), (3, 1));
        assert!(sync.owned_by(7) && !sync.owned_by(8));
        assert_eq!(sync.mutex.owner(), None);
        assert!(GilSync::from_bytes(&bytes[..GilSync::BYTES - 1]).is_none());
    }
}
