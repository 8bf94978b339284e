//! Exact per-thread CPU clocks of the target, from perf `task-clock` software counters.
//! schedstat's `sum_exec_runtime` only advances at scheduler ticks (every 4 ms at HZ=250) for
//! a thread that keeps its CPU; a counter read brings it up to date. Nothing is stopped.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
/// The first published size of `struct perf_event_attr`: every kernel accepts it.
const PERF_ATTR_SIZE_VER0: u32 = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `struct perf_event_attr` up to PERF_ATTR_SIZE_VER0.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// Open task-clock counters, one per thread.
pub struct CpuClocks {
    counters: HashMap<i32, (OwnedFd, super::fds::Kept)>,
    /// Out of file descriptors: open no more counters until one is closed.
    full: bool,
    /// perf_event_open was refused (seccomp in containers, perf_event_paranoid): do not retry.
    pub unavailable: Option<i32>,
    /// Counter reads so far (for `--stats`).
    pub reads: u64,
}

impl Default for CpuClocks {
    fn default() -> Self {
        CpuClocks::new()
    }
}

impl CpuClocks {
    pub fn new() -> CpuClocks {
        CpuClocks {
            counters: HashMap::new(),
            full: false,
            unavailable: None,
            reads: 0,
        }
    }

    /// CPU time used so far by thread `tid` (ns), or None if no counter can be had.
    pub fn read(&mut self, tid: i32) -> Option<u64> {
        if self.unavailable.is_some() {
            return None;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.counters.entry(tid) {
            if self.full {
                return None;
            }
            // Past the open-file budget, threads go without an exact clock (schedstat).
            let kept = super::fds::keep()?;
            match open_task_clock(tid) {
                Ok(fd) => {
                    slot.insert((fd, kept));
                }
                Err(errno) => {
                    if matches!(
                        errno,
                        libc::EACCES | libc::EPERM | libc::ENOSYS | libc::ENOENT
                    ) {
                        self.unavailable = Some(errno);
                    }
                    // The thread is read from schedstat instead; trying again every tick
                    // would cost a failed system call per thread.
                    self.full |= matches!(errno, libc::EMFILE | libc::ENFILE);
                    return None;
                }
            }
        }
        let (fd, _) = self.counters.get(&tid)?;
        self.reads += 1;
        let mut value = 0u64;
        // SAFETY: reading 8 bytes into a u64 from a perf counter fd we own.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n != 8 {
            self.counters.remove(&tid);
            return None;
        }
        Some(value)
    }

    /// Close the counter of a thread that is gone (its tid may be reused by a new thread).
    pub fn forget(&mut self, tid: i32) {
        self.full &= self.counters.remove(&tid).is_none();
    }

    /// Close the counters of threads that are gone.
    pub fn retain(&mut self, alive: &[i32]) {
        let before = self.counters.len();
        self.counters
            .retain(|tid, _| alive.binary_search(tid).is_ok());
        self.full &= self.counters.len() == before;
    }
}

fn open_task_clock(tid: i32) -> Result<OwnedFd, i32> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: PERF_ATTR_SIZE_VER0,
        config: PERF_COUNT_SW_TASK_CLOCK,
        ..PerfEventAttr::default()
    };
    // SAFETY: perf_event_open with a valid attr of the declared size; the fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            tid,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
