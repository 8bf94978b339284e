//! Where each followed thread was in its own code when it last left its CPU: a perf
//! `context-switches` sample (user registers and the top of the user stack) at every
//! switch-out, the kernel's switch-in records, and the unwind of the latest switch-out through
//! the GIL's functions. Nothing is stopped; nothing here knows the classifier's rules.
//!
//! A thread that is runnable but not on a CPU at a tick was either preempted or woken and not
//! yet run: memory and /proc say the same of a thread queued inside the GIL's code and of one
//! preempted a microsecond later in `send()` or a hash (docs/ACCURACY.md, "Known weak spots").
//! Its registers at the switch-out tell them apart. Each switch costs the target the kernel's
//! copy of [`STACK_BYTES`] of its stack into a ring buffer, in its own context switch.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::perf::{
    self, RecordBytes, Ring, UserSample, FLAG_SAMPLE_ID_ALL, FLAG_USE_CLOCKID,
    PERF_COUNT_SW_CONTEXT_SWITCHES, PERF_RECORD_LOST, PERF_RECORD_SAMPLE, REGS_BP_SP_IP,
    SAMPLE_REGS_USER, SAMPLE_STACK_USER, SAMPLE_TID, SAMPLE_TIME,
};
use super::unwind::Modules;
use crate::target::fds::{self, Kept};
use crate::target::memory::Memory;
use crate::target::perf_event::{PerfEventAttr, PERF_ATTR_SIZE_VER3, PERF_TYPE_SOFTWARE};

/// Stack bytes copied at each switch-out: from a futex wait or wake inside glibc up to the
/// GIL function that called it is a few hundred bytes (pthread_cond_timedwait's frames are
/// the deepest); a switch-out deeper in foreign code is decided by its first frame outside
/// glibc, found as early.
pub const STACK_BYTES: u32 = 1024;
/// Ring buffer pages per thread (a power of two): about 28 switch-outs between two readings,
/// more than a thread switches within a tick interval of a few ms. A full ring drops the
/// newest, which the kernel says (PERF_RECORD_LOST): that thread's location is then unknown.
const DATA_PAGES: usize = 8;
/// Threads followed at most: each holds a ring (36 KiB of locked memory) and a file. The others
/// have no known location (the classifier's other rules decide for them).
pub const MAX_FOLLOWED: usize = 256;
/// Switch-outs and switch-ins kept per thread, to find the latest before a tick.
const KEPT: usize = 4;
/// Frames looked at from the innermost: glibc's own frames between a futex system call and its
/// caller are at most four deep.
const FRAMES_LOOKED_AT: usize = 8;
/// `context_switch` in the attr's flags: PERF_RECORD_SWITCH at every switch in and out.
const FLAG_CONTEXT_SWITCH: u64 = 1 << 26;
const PERF_RECORD_SWITCH: u32 = 14;
const PERF_RECORD_MISC_SWITCH_OUT: u16 = 1 << 13;

/// Where a runnable thread that is not on a CPU stopped when it left its CPU last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SwitchedOut {
    /// Inside `take_gil`, or in glibc called from it.
    Taking,
    /// Inside a release (`drop_gil`, `PyEval_SaveThread`), or in glibc called from one.
    Releasing,
    /// Anywhere else: native code, a system call for I/O, Python's own code outside the GIL.
    Elsewhere,
    /// In a release, not located by a sample of where it left its CPU but by when: preempted
    /// at the instant the waiter its release woke began to run ([`crate::sample::handoff`]).
    /// It may have gone on into a forced release's wait since, which the switch mutex counts.
    HandedOff,
}

/// One thread's latest switches.
#[derive(Default)]
struct Switches {
    outs: VecDeque<UserSample>,
    /// CLOCK_MONOTONIC times of its latest switch-ins (ns).
    ins: VecDeque<u64>,
    /// When the kernel last dropped records of this thread (a full ring).
    lost_at: u64,
}

/// Counts for `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchStats {
    pub switch_outs: u64,
    pub lost: u64,
    /// Locations asked for, and those the unwind could not decide.
    pub located: u64,
    pub undecided: u64,
}

/// Switch-out samples of the followed threads of one process.
pub struct SwitchOuts {
    rings: HashMap<i32, (Ring, Kept)>,
    switches: HashMap<i32, Switches>,
    /// The GIL's functions in the target, sorted, each with whether it takes the GIL.
    gil_code: Vec<(Range<u64>, bool)>,
    /// The code of the modules that hold them (the interpreter or libpython).
    python_code: Vec<Range<u64>>,
    modules: Modules,
    /// perf_event_open was refused for a reason that will not change: do not retry.
    pub unavailable: Option<i32>,
    pub stats: SwitchStats,
}

/// The functions that make up the GIL's code, as the reference probes them
/// (src/dev/reference.rs): `take_gil`, `drop_gil` and 3.14's `drop_gil_impl` with their
/// compiler clones and split-off parts, and `PyEval_SaveThread`, into which LTO builds inline
/// the whole release.
fn is_gil_function(name: &str) -> bool {
    ["take_gil", "drop_gil", "drop_gil_impl"]
        .iter()
        .any(|base| name == *base || name.strip_prefix(base).is_some_and(|r| r.starts_with('.')))
        || name == "PyEval_SaveThread"
}

/// glibc, the dynamic loader and the vDSO: code the GIL's functions call into, looked through
/// to find their caller.
fn is_libc(name: &str) -> bool {
    ["libc.so", "libc-", "libpthread", "ld-linux", "[vdso]"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl SwitchOuts {
    /// Find the GIL's functions among the target's modules. Fails where none has their
    /// symbols (a stripped interpreter): then no location could be told.
    pub fn new(pid: i32, memory: &dyn Memory, now_ns: u64) -> Result<SwitchOuts, String> {
        let modules = Modules::new(pid, memory, now_ns).map_err(|e| e.to_string())?;
        let mut gil_code = Vec::new();
        let mut python_code = Vec::new();
        for module in modules.modules() {
            let bias = module.file.load_bias;
            let gil_functions = |file: &crate::target::elf::ElfFile| {
                file.symbols_matching(is_gil_function)
                    .filter(|(_, s)| s.size > 0)
                    .map(|(name, s)| {
                        let start = s.value.wrapping_add(bias);
                        (
                            start..start.saturating_add(s.size),
                            name.starts_with("take_gil"),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            let mut found = gil_functions(&module.file);
            // A stripped interpreter still exports PyEval_SaveThread; its take_gil is in its
            // separate debug file, where one is installed (Debian's python3-dbg, a build-id
            // directory), at the same link-time addresses.
            if !found.is_empty() && !found.iter().any(|(_, takes)| *takes) {
                if let Some(debug) = super::symbols::debug_file(pid, &module.file, &module.path) {
                    found.extend(gil_functions(&debug));
                }
            }
            if !found.is_empty() {
                python_code.push(module.code.clone());
            }
            gil_code.extend(found);
        }
        // Without take_gil's own symbol (a stripped libpython still exports PyEval_SaveThread)
        // a thread queued inside it could not be told from one preempted elsewhere.
        if !gil_code.iter().any(|(_, takes)| *takes) {
            return Err(
                "no take_gil symbol (a stripped interpreter without its debug file)".into(),
            );
        }
        // With glibc linked into the interpreter, its futex frames would be the interpreter's
        // own and end the search before the GIL function above them.
        let glibc = |name: &str| name.starts_with("libc.so") || name.starts_with("libc-");
        if !modules.modules().iter().any(|m| glibc(&m.name)) {
            return Err("no shared C library (a statically linked interpreter)".into());
        }
        gil_code.sort_by_key(|(r, _)| r.start);
        Ok(SwitchOuts {
            rings: HashMap::new(),
            switches: HashMap::new(),
            gil_code,
            python_code,
            modules,
            unavailable: None,
            stats: SwitchStats::default(),
        })
    }

    /// Follow exactly the threads in `alive` (sorted): open what is missing, up to
    /// [`MAX_FOLLOWED`] and the open-file budget, and close the rest.
    pub fn follow(&mut self, alive: &[i32]) {
        self.rings.retain(|t, _| alive.binary_search(t).is_ok());
        self.switches.retain(|t, _| alive.binary_search(t).is_ok());
        if self.unavailable.is_some() {
            return;
        }
        for &tid in alive {
            if self.rings.len() >= MAX_FOLLOWED {
                break;
            }
            if self.rings.contains_key(&tid) {
                continue;
            }
            let Some(kept) = fds::keep() else { break };
            match open(tid) {
                Ok(ring) => {
                    self.rings.insert(tid, (ring, kept));
                }
                Err(errno) => {
                    if matches!(
                        errno,
                        libc::EACCES | libc::EPERM | libc::ENOSYS | libc::ENOENT | libc::EINVAL
                    ) {
                        self.unavailable = Some(errno);
                        self.rings.clear();
                        return;
                    }
                    // ESRCH (it ended), ENOMEM / EMFILE (a limit): tried again next tick.
                }
            }
        }
    }

    /// Read every ring: the switches since the last call join those kept.
    pub fn drain(&mut self) {
        let switches = &mut self.switches;
        let stats = &mut self.stats;
        for (&tid, (ring, _)) in self.rings.iter_mut() {
            let kept = switches.entry(tid).or_default();
            ring.drain(|record| match perf::record_kind(record) {
                Some(PERF_RECORD_SAMPLE) => {
                    // The stack buffer of the oldest kept switch-out is used again.
                    let buffer = match kept.outs.len() == KEPT {
                        true => kept.outs.pop_front().map(|s| s.stack).unwrap_or_default(),
                        false => Vec::new(),
                    };
                    if let Some(sample) =
                        perf::parse_sample(record, buffer).filter(|s| s.tid == tid)
                    {
                        stats.switch_outs += 1;
                        kept.outs.push_back(sample);
                    }
                }
                Some(PERF_RECORD_SWITCH) => {
                    if let Some((misc, time)) = parse_switch(record) {
                        if misc & PERF_RECORD_MISC_SWITCH_OUT == 0 {
                            if kept.ins.len() == KEPT {
                                kept.ins.pop_front();
                            }
                            kept.ins.push_back(time);
                        }
                    }
                }
                Some(PERF_RECORD_LOST) => {
                    if let Some((count, _, time)) = perf::parse_lost(record) {
                        stats.lost += count;
                        kept.lost_at = kept.lost_at.max(time);
                    }
                }
                _ => {}
            });
        }
    }

    /// Where thread `tid` was when it last left its CPU, if it has not been back on one by
    /// `at_ns` (CLOCK_MONOTONIC) and its switch-out can be unwound to a GIL function, a
    /// module other than glibc, or the interpreter's other code. None for a thread on a CPU,
    /// not followed, or whose records were lost.
    pub fn located(&mut self, tid: i32, at_ns: u64, memory: &dyn Memory) -> Option<SwitchedOut> {
        let kept = self.switches.get(&tid)?;
        let out = kept
            .outs
            .iter()
            .filter(|s| s.time_ns <= at_ns)
            .max_by_key(|s| s.time_ns)?;
        let back_in = kept.ins.iter().any(|&t| t > out.time_ns && t <= at_ns);
        if back_in || out.time_ns <= kept.lost_at {
            return None;
        }
        self.stats.located += 1;
        let sample = out.clone();
        let found = self.locate(&sample, at_ns, memory);
        if found.is_none() {
            self.stats.undecided += 1;
        }
        found
    }

    fn locate(
        &mut self,
        sample: &UserSample,
        now_ns: u64,
        memory: &dyn Memory,
    ) -> Option<SwitchedOut> {
        let base = sample.regs.sp;
        let bytes = &sample.stack;
        let (frames, _) = self.modules.unwind(sample.regs, &mut |addr| {
            let at = usize::try_from(addr.checked_sub(base)?).ok()?;
            Some(u64::from_le_bytes(
                bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
            ))
        });
        for frame in frames.iter().take(FRAMES_LOOKED_AT) {
            let addr = frame.lookup_address();
            if let Some(taking) = self.gil_function_at(addr) {
                return Some(if taking {
                    SwitchedOut::Taking
                } else {
                    SwitchedOut::Releasing
                });
            }
            if self.python_code.iter().any(|r| r.contains(&addr)) {
                return Some(SwitchedOut::Elsewhere);
            }
            let libc = match self.modules.module_at(addr) {
                Some(module) => is_libc(&module.name),
                None => {
                    // A module mapped since the last reading of the memory map.
                    self.modules.refresh_for(addr, memory, now_ns);
                    return None;
                }
            };
            if !libc {
                return Some(SwitchedOut::Elsewhere);
            }
        }
        None
    }

    /// Is `addr` in one of the GIL's functions, and is that `take_gil`?
    fn gil_function_at(&self, addr: u64) -> Option<bool> {
        let at = self.gil_code.partition_point(|(r, _)| r.start <= addr);
        let (range, taking) = self.gil_code.get(at.checked_sub(1)?)?;
        range.contains(&addr).then_some(*taking)
    }

    pub fn followed(&self) -> usize {
        self.rings.len()
    }
}

/// The context-switches event of thread `tid`, sampling every switch-out and recording every
/// switch, with its ring mapped.
fn open(tid: i32) -> Result<Ring, i32> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: PERF_ATTR_SIZE_VER3,
        config: PERF_COUNT_SW_CONTEXT_SWITCHES,
        sample_period: 1,
        sample_type: SAMPLE_TID | SAMPLE_TIME | SAMPLE_REGS_USER | SAMPLE_STACK_USER,
        // Records of switches and of lost samples carry the thread and the time too.
        flags: FLAG_USE_CLOCKID | FLAG_SAMPLE_ID_ALL | FLAG_CONTEXT_SWITCH,
        sample_regs_user: REGS_BP_SP_IP,
        sample_stack_user: STACK_BYTES,
        clockid: libc::CLOCK_MONOTONIC,
        ..PerfEventAttr::default()
    };
    let fd: OwnedFd = crate::target::perf_event::open(&attr, tid)?;
    Ring::map(fd, DATA_PAGES)
}

/// A PERF_RECORD_SWITCH: its misc bits and the time of its sample_id (pid, tid, time).
fn parse_switch<R: RecordBytes + ?Sized>(record: &R) -> Option<(u16, u64)> {
    let mut misc = [0u8; 2];
    record.read(4, &mut misc).then_some(())?;
    Some((u16::from_le_bytes(misc), record.u64_at(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gil_functions_are_those_the_reference_probes() {
        for name in [
            "take_gil",
            "take_gil.constprop.0",
            "drop_gil",
            "drop_gil.lto_priv.0",
            "drop_gil_impl",
            "drop_gil.cold",
            "PyEval_SaveThread",
        ] {
            assert!(is_gil_function(name), "{name}");
        }
        for name in [
            "take_gil_x",
            "PyEval_RestoreThread",
            "drop",
            "_PyEval_SaveThread",
        ] {
            assert!(!is_gil_function(name), "{name}");
        }
    }

    #[test]
    fn a_switch_record_gives_its_direction_and_time() {
        let mut r = Vec::new();
        r.extend(PERF_RECORD_SWITCH.to_le_bytes());
        r.extend(PERF_RECORD_MISC_SWITCH_OUT.to_le_bytes());
        r.extend(24u16.to_le_bytes());
        r.extend(7u32.to_le_bytes());
        r.extend(42u32.to_le_bytes());
        r.extend(1234u64.to_le_bytes());
        assert_eq!(
            parse_switch(&r[..]),
            Some((PERF_RECORD_MISC_SWITCH_OUT, 1234))
        );
        assert_eq!(parse_switch(&r[..20]), None);
    }
}
