//! Native stacks of threads asleep in a system call, from /proc/PID/task/TID/syscall (user stack
//! pointer and program counter) and one read of the stack: nothing is stopped or signalled.
//! A thread that ran while its stack was read is reported as moved, never with a torn stack.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::unwind::Modules;
use super::{Capture, CaptureError, NativeStack, Registers};
use crate::target::memory::{Memory, ReadError};
use crate::target::task::{parse_syscall, Activity};

/// Bytes of stack read at once: a few calls cover the usual depth of an interpreter's stack.
const CHUNK: u64 = 16 * 1024;
/// Deepest stack read below its top: a garbage stack pointer must not read megabytes.
const MAX_STACK_READ: u64 = 1 << 20;
/// Threads whose last stack is remembered; past this the memory starts over.
const MAX_REMEMBERED: usize = 65_536;

/// Reads of a thread's stack, a chunk at a time, only where the unwind looks.
struct RemoteStack<'a> {
    memory: &'a dyn Memory,
    /// Lowest and one past the highest address that may be read.
    low: u64,
    high: u64,
    /// (chunk start, bytes) read so far.
    chunks: Vec<(u64, Vec<u8>)>,
    failed: bool,
}

impl RemoteStack<'_> {
    fn read(&mut self, addr: u64) -> Option<u64> {
        if addr < self.low || addr.checked_add(8)? > self.high || addr % 8 != 0 {
            return None;
        }
        let start = self.low + (addr - self.low) / CHUNK * CHUNK;
        if !self.chunks.iter().any(|(s, _)| *s == start) {
            if self.failed {
                return None;
            }
            let len = CHUNK.min(self.high - start) as usize;
            match self.memory.read_bytes(start, len) {
                Ok(bytes) => self.chunks.push((start, bytes)),
                Err(_) => {
                    self.failed = true;
                    return None;
                }
            }
        }
        let (start, bytes) = self.chunks.iter().find(|(s, _)| *s == start)?;
        let at = (addr - start) as usize;
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    }
}

/// The files of one thread, kept open between reads.
struct ThreadFiles {
    syscall: File,
    schedstat: File,
}

/// How many times a thread had run when its stack was last read, and that stack.
struct Remembered {
    runs: u64,
    stack: NativeStack,
}

/// Native stacks of the sleeping threads of one process.
pub struct Sleepers {
    pid: i32,
    files: HashMap<i32, ThreadFiles>,
    last: HashMap<i32, Remembered>,
    buf: Vec<u8>,
    /// Stacks read from the target, and stacks answered from the last read (the thread had
    /// not run since), for `--stats`.
    pub read: u64,
    pub reused: u64,
}

impl Sleepers {
    pub fn new(pid: i32) -> Sleepers {
        Sleepers {
            pid,
            files: HashMap::new(),
            last: HashMap::new(),
            buf: vec![0; 512],
            read: 0,
            reused: 0,
        }
    }

    /// Open the thread's files, the first time they are needed.
    fn open_files(&mut self, tid: i32) -> Result<(), CaptureError> {
        if !self.files.contains_key(&tid) {
            let dir = format!("/proc/{}/task/{tid}", self.pid);
            let open = |name: &str| File::open(format!("{dir}/{name}")).map_err(gone_or_failed);
            let files = ThreadFiles {
                syscall: open("syscall")?,
                schedstat: open("schedstat")?,
            };
            self.files.insert(tid, files);
        }
        Ok(())
    }

    /// How many times the thread was put on a CPU (schedstat's third field). It counts each
    /// arrival on a CPU, so a count unchanged between two reads means the thread did not run
    /// in between: its registers and stack are as they were.
    fn runs(&mut self, tid: i32) -> Result<u64, CaptureError> {
        self.open_files(tid)?;
        let files = self.files.get(&tid).ok_or(CaptureError::Gone)?;
        let n = files
            .schedstat
            .read_at(&mut self.buf, 0)
            .map_err(gone_or_failed)?;
        std::str::from_utf8(&self.buf[..n])
            .ok()
            .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
            .ok_or_else(|| CaptureError::Failed("unreadable schedstat".into()))
    }

    /// What the thread is doing now (its system call, with its stack pointer and program
    /// counter).
    fn activity(&mut self, tid: i32) -> Result<Activity, CaptureError> {
        self.open_files(tid)?;
        let files = self.files.get(&tid).ok_or(CaptureError::Gone)?;
        let n = files
            .syscall
            .read_at(&mut self.buf, 0)
            .map_err(gone_or_failed)?;
        Ok(parse_syscall(&self.buf[..n]))
    }

    /// The native stack of thread `tid` if it is asleep (in a system call or a page fault).
    /// A thread that has not run since its stack was last read costs one small file read; one
    /// that has, three and a read of its stack.
    pub fn capture(
        &mut self,
        tid: i32,
        memory: &dyn Memory,
        modules: &mut Modules,
        now_ns: u64,
    ) -> Result<NativeStack, CaptureError> {
        let result = self.capture_open(tid, memory, modules, now_ns);
        if matches!(result, Err(CaptureError::Gone)) {
            self.forget(tid);
        }
        result
    }

    fn capture_open(
        &mut self,
        tid: i32,
        memory: &dyn Memory,
        modules: &mut Modules,
        now_ns: u64,
    ) -> Result<NativeStack, CaptureError> {
        let runs = self.runs(tid)?;
        // Not run since its stack was last read: the same stack (it cannot have moved without
        // arriving on a CPU), for one file read.
        if let Some(last) = self.last.get(&tid) {
            if last.runs == runs {
                self.reused += 1;
                return Ok(last.stack.clone());
            }
        }
        let regs = match self.activity(tid)? {
            Activity::Syscall { sp, pc, .. } | Activity::Blocked { sp, pc } => {
                Registers { pc, sp, bp: None }
            }
            Activity::Running => return Err(CaptureError::Running),
            Activity::Unknown => return Err(CaptureError::Failed("unreadable syscall".into())),
        };
        let (frames, end) = unwind_asleep(regs, memory, modules, now_ns);
        self.read += 1;
        // Still the same count of runs: it did not run from before its registers were read
        // until after its stack was, so the two belong together.
        if self.runs(tid)? != runs {
            self.last.remove(&tid);
            return Err(CaptureError::Moved);
        }
        let stack = NativeStack {
            frames,
            end,
            capture: Capture::Syscall,
        };
        if self.last.len() >= MAX_REMEMBERED {
            self.last.clear();
        }
        self.last.insert(
            tid,
            Remembered {
                runs,
                stack: stack.clone(),
            },
        );
        Ok(stack)
    }

    /// The native stack of a thread a tick saw asleep with registers `regs`, where `still`
    /// says whether it is still as it was then (it has not run since: its exact CPU clock has
    /// not moved, read before its registers were). No file is read: the tick read them.
    pub fn capture_since_tick(
        &mut self,
        regs: Registers,
        still: &mut dyn FnMut() -> bool,
        memory: &dyn Memory,
        modules: &mut Modules,
        now_ns: u64,
    ) -> Result<NativeStack, CaptureError> {
        let (frames, end) = unwind_asleep(regs, memory, modules, now_ns);
        self.read += 1;
        if !still() {
            return Err(CaptureError::Moved);
        }
        Ok(NativeStack {
            frames,
            end,
            capture: Capture::Syscall,
        })
    }

    /// Close the files of a thread that is gone (its tid may be reused).
    pub fn forget(&mut self, tid: i32) {
        self.files.remove(&tid);
        self.last.remove(&tid);
    }

    /// Forget threads not in `alive` (sorted).
    pub fn retain(&mut self, alive: &[i32]) {
        self.files.retain(|t, _| alive.binary_search(t).is_ok());
        self.last.retain(|t, _| alive.binary_search(t).is_ok());
    }
}

/// Unwind a sleeping thread from `regs`, reading its stack where the unwind looks.
fn unwind_asleep(
    regs: Registers,
    memory: &dyn Memory,
    modules: &mut Modules,
    now_ns: u64,
) -> (Vec<super::NativeFrame>, super::StackEnd) {
    if modules.mapping_at(regs.sp).is_none() || modules.module_at(regs.pc).is_none() {
        // A thread started (its stack mapped) or a library loaded since the map was read.
        modules.refresh_for(regs.pc, memory, now_ns);
        if modules.mapping_at(regs.sp).is_none() {
            let _ = modules.refresh(memory, now_ns);
        }
    }
    let high = modules
        .mapping_at(regs.sp)
        .map(|m| m.end)
        .unwrap_or(regs.sp.saturating_add(CHUNK))
        .min(regs.sp.saturating_add(MAX_STACK_READ));
    let mut stack = RemoteStack {
        memory,
        low: regs.sp,
        high,
        chunks: Vec::new(),
        failed: false,
    };
    modules.unwind(regs, &mut |addr| stack.read(addr))
}

fn gone_or_failed(e: std::io::Error) -> CaptureError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => CaptureError::Gone,
        _ => CaptureError::Failed(e.to_string()),
    }
}

/// One capture of thread `tid` of process `pid`, with no memory of earlier ones.
pub fn capture(
    pid: i32,
    tid: i32,
    memory: &dyn Memory,
    modules: &mut Modules,
) -> Result<NativeStack, CaptureError> {
    Sleepers::new(pid).capture(tid, memory, modules, super::monotonic_ns())
}

impl From<ReadError> for CaptureError {
    fn from(e: ReadError) -> CaptureError {
        match e {
            ReadError::Gone => CaptureError::Gone,
            other => CaptureError::Failed(other.to_string()),
        }
    }
}
