//! The budget of files the sampler keeps open from tick to tick, within this process's limit
//! on open files: past it, a file is opened for one read and closed again. It opens nothing.
//!
//! Each thread of a target costs a kept file or two (its /proc syscall file, its CPU counter):
//! a target with 5,000 threads under a limit of 1,024 ran out, and every tick failed with
//! EMFILE. Kept files now take from this budget, which leaves [`RESERVE`] files free for the
//! reads of the moment, the output files and everything else.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Files left free beyond the kept ones.
pub const RESERVE: usize = 64;

static KEPT: AtomicUsize = AtomicUsize::new(0);

/// One kept file's share of the budget, given back when dropped (with the file it goes with).
#[derive(Debug)]
pub struct Kept(());

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A share of the budget for one more kept file, if any is left.
pub fn keep() -> Option<Kept> {
    let budget = limits().0.saturating_sub(RESERVE as u64) as usize;
    KEPT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
        (kept < budget).then_some(kept + 1)
    })
    .ok()
    .map(|_| Kept(()))
}

/// Files kept now (for tests and `--stats`).
pub fn kept() -> usize {
    KEPT.load(Ordering::Relaxed)
}

/// This process's (soft, hard) limits on open files.
pub fn limits() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return (1024, 1024);
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// What the error of running out of files says: which limit, and how high it is.
pub fn exhausted(errno: i32) -> String {
    let (soft, hard) = limits();
    if errno == libc::ENFILE {
        "the system's limit on open files (fs.file-max) is reached".to_string()
    } else {
        format!(
            "gilscope's limit on open files (RLIMIT_NOFILE) is reached: {soft}, its hard limit \
             {hard}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_short_of_the_limit_and_is_given_back() {
        let (soft, _) = limits();
        let budget = soft as usize - RESERVE;
        let mut taken = Vec::new();
        // Other tests of this binary may hold some of it: take what is left.
        while let Some(kept) = keep() {
            taken.push(kept);
            assert!(taken.len() <= budget, "more than the budget was given");
        }
        assert!(kept() <= budget);
        let before = kept();
        taken.pop();
        assert_eq!(kept(), before - 1);
        assert!(keep().is_some(), "a share given back can be taken again");
    }
}
