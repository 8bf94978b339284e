//! Exact per-thread CPU clocks of the target, from perf `task-clock` software counters.
//! schedstat's `sum_exec_runtime` only advances at scheduler ticks (every 4 ms at HZ=250) for
//! a thread that keeps its CPU; a counter read brings it up to date. Nothing is stopped.
//!
//! Each counter's first page (`perf_event_mmap_page`) is mapped too, read-only: the kernel
//! brings it up to date, under its sequence count, each time the thread is put on a CPU (a
//! task clock's `add`). A thread whose count has not moved since it was read off its CPU has
//! not run since, and its clock is what was read then: on targets whose threads mostly sleep
//! (a pool of idle workers), that saves a system call per thread and tick
//! ([`CpuClocks::schedules`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

/// `exclude_kernel` and `exclude_hv` in the attr's flags. A task clock counts the thread's
/// whole time on a CPU all the same (it is no sampling event), and the kernel then opens it
/// with CAP_SYS_PTRACE alone at perf_event_paranoid 2, where counting kernel time would
/// need CAP_PERFMON.
const EXCLUDE_KERNEL_AND_HV: u64 = (1 << 5) | (1 << 6);

/// How far (ns) a clock may move under an unchanged schedule count: the time a thread read on
/// its CPU ran on before it went to sleep (the page is written when a thread is put on a CPU,
/// not when it leaves it), microseconds between the two reads of a tick.
const UNSCHEDULED_SLACK_NS: u64 = 1_000_000;

/// Where `lock`, the sequence count, sits in `perf_event_mmap_page` (after `version` and
/// `compat_version`).
const USER_PAGE_LOCK: usize = 8;

/// A counter's first page, mapped read-only and shared with the kernel.
struct UserPage {
    at: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone (unmapped when it drops) and is only read,
// with volatile loads, from whichever thread owns the value.
unsafe impl Send for UserPage {}

impl UserPage {
    fn map(fd: &OwnedFd) -> Option<UserPage> {
        // SAFETY: sysconf has no preconditions.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        // SAFETY: a new shared read-only mapping of one page of a perf fd we own; the kernel
        // picks the address. Refused (locked-memory limits, old kernels), the thread's clock
        // is read as before.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return None;
        }
        std::ptr::NonNull::new(at.cast()).map(|at| UserPage { at, len })
    }

    /// The page's sequence count: it moves each time the kernel writes the page.
    fn sequence(&self) -> u32 {
        // SAFETY: the page is mapped (len >= 4 KiB) and readable for as long as self lives;
        // the kernel writes it concurrently, hence the volatile, aligned 4-byte load.
        let value =
            unsafe { std::ptr::read_volatile(self.at.as_ptr().add(USER_PAGE_LOCK).cast::<u32>()) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        value
    }
}

impl Drop for UserPage {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value made, once.
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

struct Counter {
    fd: OwnedFd,
    _kept: super::fds::Kept,
    page: Option<UserPage>,
}

/// Open task-clock counters, one per thread.
pub struct CpuClocks {
    counters: HashMap<i32, Counter>,
    /// The kernel was seen not to write a counter's page when its thread was put on a CPU
    /// (a count that moved under an unchanged sequence): pages are not read any more.
    pub pages_untrusted: bool,
    /// Out of file descriptors: open no more counters until one is closed.
    full: bool,
    /// perf_event_open was refused (seccomp in containers, perf_event_paranoid): do not retry.
    pub unavailable: Option<i32>,
    /// Counter reads so far (for `--stats`).
    pub reads: u64,
    /// Map each counter's page (see [`CpuClocks::with_pages`]).
    map_pages: bool,
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
            pages_untrusted: false,
            full: false,
            unavailable: None,
            reads: 0,
            map_pages: false,
        }
    }

    /// Counters whose first page is mapped too, for [`CpuClocks::schedules`]. Each page
    /// counts against the locked-memory allowance perf grants a user, which `--native`'s
    /// rings need: ask for this only where that allowance does not bind (CAP_IPC_LOCK).
    pub fn with_pages() -> CpuClocks {
        CpuClocks {
            map_pages: true,
            ..CpuClocks::new()
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
                    let page = self.map_pages.then(|| UserPage::map(&fd)).flatten();
                    slot.insert(Counter {
                        fd,
                        _kept: kept,
                        page,
                    });
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
        let fd = &self.counters.get(&tid)?.fd;
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

    /// How many times thread `tid` has been put on a CPU, as its counter's page counts (in
    /// steps the caller must only compare for equality), if its counter is open and mapped.
    /// Read before its clock: a thread off its CPU when its clock was read whose count is
    /// the same later has not run in between, and its clock has not moved.
    pub fn schedules(&self, tid: i32) -> Option<u32> {
        if self.pages_untrusted {
            return None;
        }
        self.counters
            .get(&tid)?
            .page
            .as_ref()
            .map(UserPage::sequence)
    }

    /// A clock read (`cpu_ns`) under the same [`CpuClocks::schedules`] count as an earlier
    /// read that gave `was_ns`: if it moved, this kernel does not count schedules on the
    /// page, and pages are not read again. (It may move by the few µs a thread ran between
    /// that read and going to sleep: it left its CPU without the page being written.)
    pub fn check_schedules(&mut self, was_ns: u64, cpu_ns: u64) {
        self.pages_untrusted |= cpu_ns.abs_diff(was_ns) > UNSCHEDULED_SLACK_NS;
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
    use super::perf_event::{
        PerfEventAttr, PERF_ATTR_SIZE_VER0, PERF_COUNT_SW_TASK_CLOCK, PERF_TYPE_SOFTWARE,
    };
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: PERF_ATTR_SIZE_VER0,
        config: PERF_COUNT_SW_TASK_CLOCK,
        flags: EXCLUDE_KERNEL_AND_HV,
        ..PerfEventAttr::default()
    };
    super::perf_event::open(&attr, tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's counter page counts the times it is put on a CPU: the same count while it
    /// sleeps (and the same clock), another once it has run.
    #[test]
    fn the_counter_page_counts_schedules() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
        let (woke_tx, woke_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            while wake_rx.recv().is_ok() {
                woke_tx.send(()).unwrap();
            }
        });
        let tid = rx.recv().unwrap();
        let mut clocks = CpuClocks::with_pages();
        let Some(_) = clocks.read(tid) else {
            eprintln!(
                "skipped: no perf task clocks here ({:?})",
                clocks.unavailable
            );
            return;
        };
        let Some(_) = clocks.schedules(tid) else {
            eprintln!("skipped: the counter's page could not be mapped");
            return;
        };
        // Asleep on the channel: let it settle, then nothing moves for 50 ms.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (before, cpu) = (clocks.schedules(tid), clocks.read(tid));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(clocks.schedules(tid), before);
        assert_eq!(clocks.read(tid), cpu);
        // Woken: it ran, and the page says so.
        wake_tx.send(()).unwrap();
        woke_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_ne!(clocks.schedules(tid), before);
        drop(wake_tx);
        worker.join().unwrap();
    }

    /// The counter is opened with kernel time excluded (so that CAP_SYS_PTRACE alone may open
    /// it): it must count a thread's time in system calls all the same, as schedstat does.
    #[test]
    fn a_task_clock_counts_time_spent_in_the_kernel() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (finished_tx, finished_rx) = std::sync::mpsc::channel::<u64>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread_cpu_ns = || {
            let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
                .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
            ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
        };
        let worker = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = go_rx.recv();
            // 200 ms of its own CPU time, however busy the machine, almost all of it in the
            // kernel: a cheap system call in a loop (the calls are counted).
            let until = thread_cpu_ns() + 200_000_000;
            let mut calls = 0u64;
            while thread_cpu_ns() < until {
                for _ in 0..1000 {
                    // SAFETY: getppid has no arguments and no side effects.
                    unsafe { libc::getppid() };
                }
                calls += 1000;
            }
            finished_tx.send(calls).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let schedstat = |tid: i32| {
            let raw = std::fs::read(format!("/proc/self/task/{tid}/schedstat")).unwrap();
            crate::target::task::parse_schedstat(&raw).0
        };
        let mut clocks = CpuClocks::new();
        let opened = clocks.read(tid);
        let before = schedstat(tid);
        go_tx.send(()).unwrap();
        let calls = finished_rx.recv().unwrap();
        // Asleep on `done_rx` now (or within microseconds): schedstat is up to date when a
        // thread leaves its CPU.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let counted = clocks.read(tid);
        let ran = schedstat(tid) - before;
        done_tx.send(()).unwrap();
        worker.join().unwrap();
        let (Some(opened), Some(counted)) = (opened, counted) else {
            eprintln!(
                "skipped: no perf task clocks here ({:?})",
                clocks.unavailable
            );
            return;
        };
        let counted = counted - opened;
        // The loop is a kernel workload (else the test shows nothing), and the counter saw
        // all of it. The two clocks agree to within a tenth: alone, to 0.1%; with other
        // threads contending for the CPU the task clock ran up to 10% ahead of schedstat,
        // with kernel time excluded or not (measured both ways). A counter that left out
        // kernel time would have less than half.
        assert!(ran >= 200_000_000, "the worker ran {ran} ns");
        // Each round of the loop is a system call and a few instructions around it in user
        // mode (a few ns): at 20 ns or more a call (65 ns on the test machine), three
        // quarters of the time at least was spent in the kernel, which a counter without
        // kernel time would miss. (The kernel's utime/stime split is sampled a tick at a
        // time and told nothing here: beside CPU hogs it read 11 user and 8 system ticks
        // once, 20 and 0 another time.)
        let per_call = ran / calls.max(1);
        assert!(
            per_call >= 20,
            "{calls} calls in {ran} ns ({per_call} ns each): not a kernel workload"
        );
        let ratio = counted as f64 / ran as f64;
        assert!(
            (0.9..1.15).contains(&ratio),
            "task clock {counted} ns, schedstat {ran} ns"
        );
    }
}
