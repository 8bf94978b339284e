//! The target's OS threads as the kernel sees them: the task list and, per task, its run state,
//! current syscall and CPU accounting. Files stay open and are re-read with pread.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::fds;

/// How long a listing may be reused while nothing suggests a change (ns).
pub const RELIST_NS: u64 = 50_000_000;

/// getdents64 calls per listing at most (32 KiB each: about a million threads).
const MAX_LISTING_CALLS: usize = 1 << 15;

/// x86_64 syscall number of futex(2).
pub const SYS_FUTEX: i64 = 202;

/// What /proc/PID/task/TID/syscall says a thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activity {
    /// Runnable: on a CPU or waiting for one (the kernel cannot tell us which).
    Running,
    /// Blocked in a system call.
    Syscall {
        nr: i64,
        args: [u64; 3],
        sp: u64,
        pc: u64,
    },
    /// Blocked outside a system call (page fault, stopped by a tracer, ...).
    Blocked { sp: u64, pc: u64 },
    /// The file could not be parsed.
    #[default]
    Unknown,
}

impl Activity {
    /// The futex address if the thread sleeps in futex(2).
    pub fn futex_addr(&self) -> Option<u64> {
        match self {
            Activity::Syscall { nr, args, .. } if *nr == SYS_FUTEX => Some(args[0]),
            _ => None,
        }
    }
}

/// One reading of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskReading {
    pub tid: i32,
    pub activity: Activity,
    /// Total time on a CPU (ns), from schedstat.
    pub cpu_ns: u64,
    /// Total time runnable but waiting for a CPU (ns), from schedstat.
    pub runqueue_ns: u64,
}

/// Why a task could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum TaskError {
    /// The thread exited.
    Gone,
    Denied,
    Io(i32),
}

impl From<io::Error> for TaskError {
    fn from(e: io::Error) -> TaskError {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => TaskError::Gone,
            Some(libc::EACCES) | Some(libc::EPERM) => TaskError::Denied,
            Some(errno) => TaskError::Io(errno),
            None => TaskError::Io(libc::EIO),
        }
    }
}

/// A task's files kept open between ticks, each with its share of the open-file budget.
struct TaskFiles {
    syscall: (File, fds::Kept),
    schedstat: Option<(File, fds::Kept)>,
    /// /proc/TID/sched, for threads whose switches are dated (handoffs).
    sched: Option<(File, fds::Kept)>,
}

/// Reads the tasks of one process, keeping each task's files open between ticks.
pub struct Tasks {
    dir: PathBuf,
    open: HashMap<i32, TaskFiles>,
    buf: Vec<u8>,
    /// The task directory, kept open between listings, and a buffer for its entries.
    dir_fd: Option<(File, fds::Kept)>,
    dirents: Vec<u8>,
    /// /proc/PID/stat, kept open for its thread count and its main thread's state.
    stat: Option<(File, fds::Kept)>,
    /// The main thread's state letter at the last read of /proc/PID/stat.
    leader_state: Option<char>,
    /// The last full listing, the thread count then, and when it was taken (ns).
    listed: Vec<i32>,
    listed_count: Option<u64>,
    listed_ns: u64,
    /// Directory listings and file reads so far (for `--stats`).
    pub reads: u64,
    /// Listings answered from the last one (for `--stats`).
    pub listings_reused: u64,
}

impl Tasks {
    pub fn new(pid: i32) -> Tasks {
        Tasks {
            dir: PathBuf::from(format!("/proc/{pid}/task")),
            open: HashMap::new(),
            buf: vec![0; 1024],
            dir_fd: None,
            dirents: vec![0; 32 * 1024],
            stat: None,
            leader_state: None,
            listed: Vec::new(),
            listed_count: None,
            listed_ns: 0,
            listings_reused: 0,
            reads: 0,
        }
    }

    /// The thread ids of the process now, sorted. The directory stays open: a listing is a
    /// rewind and a getdents64 or two, not an open, a stat and a close per tick.
    pub fn list(&mut self) -> io::Result<Vec<i32>> {
        self.reads += 1;
        let result = self.list_open();
        if result.is_err() {
            self.dir_fd = None;
        }
        result
    }

    /// Like [`Tasks::list`], but answered from the last listing when nothing suggests a
    /// change: the caller saw the same Python threads as at the last call
    /// (`same_python_threads`), the process's thread count (one read of /proc/PID/stat) is
    /// the same, and the listing is younger than [`RELIST_NS`]. A listing costs the kernel a
    /// dentry lookup per thread (a millisecond at 1,000 threads); the count costs one read.
    /// What can slip through is a native thread ending while another starts between two
    /// ticks: seen within [`RELIST_NS`].
    pub fn list_unless_unchanged(
        &mut self,
        same_python_threads: bool,
        now_ns: u64,
    ) -> io::Result<Vec<i32>> {
        let count = self.thread_count();
        let fresh = now_ns.saturating_sub(self.listed_ns) < RELIST_NS;
        if same_python_threads && fresh && count.is_some() && count == self.listed_count {
            self.listings_reused += 1;
            return Ok(self.listed.clone());
        }
        let tids = self.list()?;
        self.listed.clone_from(&tids);
        self.listed_count = count.filter(|&n| n == tids.len() as u64);
        self.listed_ns = now_ns;
        Ok(tids)
    }

    /// num_threads from /proc/PID/stat (kept open if the budget allows), or None if it
    /// cannot be read.
    fn thread_count(&mut self) -> Option<u64> {
        let path = self.dir.with_file_name("stat");
        if self.stat.is_none() {
            if let Some(kept) = fds::keep() {
                self.stat = File::open(&path).ok().map(|f| (f, kept));
            }
        }
        self.reads += 1;
        let n = match &self.stat {
            Some((file, _)) => file.read_at(&mut self.buf, 0),
            None => File::open(&path).and_then(|f| f.read_at(&mut self.buf, 0)),
        };
        match n {
            Ok(n) => {
                self.leader_state = stat_state(&self.buf[..n]);
                crate::target::process::stat_field(&self.buf[..n], 20)
            }
            Err(_) => {
                self.stat = None;
                self.leader_state = None;
                None
            }
        }
    }

    /// The main thread's state letter as of the last listing (R, S, D, T, t, Z...).
    pub fn leader_state(&self) -> Option<char> {
        self.leader_state
    }

    fn list_open(&mut self) -> io::Result<Vec<i32>> {
        if self.dir_fd.is_none() {
            if let Some(kept) = fds::keep() {
                self.dir_fd = Some((File::open(&self.dir)?, kept));
            }
        }
        // Without a share of the budget, the directory is opened for this listing alone.
        let transient;
        let dir = match self.dir_fd.as_ref() {
            Some((dir, _)) => dir,
            None => {
                transient = File::open(&self.dir)?;
                &transient
            }
        };
        let fd = dir.as_raw_fd();
        // SAFETY: lseek on a directory fd we own.
        if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut tids = Vec::with_capacity(self.open.len() + 1);
        // Each call returns at least one entry until the end: bounded by the thread count.
        for _ in 0..MAX_LISTING_CALLS {
            // SAFETY: getdents64 writes at most `len` bytes into our buffer.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd,
                    self.dirents.as_mut_ptr(),
                    self.dirents.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            tids.extend(dirent_tids(&self.dirents[..n as usize]));
        }
        tids.sort_unstable();
        Ok(tids)
    }

    /// The scheduler's run and queue totals of one task now (/proc/TID/schedstat: ns on a
    /// CPU, ns queued for one), opened for this read alone: read only on the ticks that need
    /// them ([`crate::sample::handoff`]).
    pub fn run_totals(&mut self, tid: i32) -> Option<(u64, u64)> {
        self.reads += 1;
        // Kept open with the task's other files where the budget allows: the GIL's sleepers
        // are read again at each sleep.
        let n = read_task_file(
            &self.dir,
            &mut self.open,
            tid,
            "schedstat",
            |f| &mut f.schedstat,
            &mut self.buf,
        )?;
        let text = self.buf.get(..n)?;
        // An empty or junk file parses as zeros: no reading.
        let (run, queued) = parse_schedstat(text);
        (run > 0).then_some((run, queued))
    }

    /// When the task last stopped or was last accounted on its CPU, and its run total then,
    /// both in its CPU's scheduler clock (/proc/TID/sched, [`SchedClocks`]). None where the
    /// kernel has no such file (no CONFIG_SCHED_DEBUG) or it does not parse.
    pub fn last_accounted(&mut self, tid: i32) -> Option<SchedClocks> {
        self.reads += 1;
        // Kept open with the task's other files where the budget allows: a GIL waiter's is
        // read again at each of its runs. The fields wanted are in the first 20 lines; the
        // rest of the file is not needed.
        let mut buf = [0u8; 2048];
        let n = read_task_file(
            &self.dir,
            &mut self.open,
            tid,
            "sched",
            |f| &mut f.sched,
            &mut buf,
        )?;
        parse_sched_clocks(buf.get(..n)?)
    }

    /// Read one task; its CPU clock too if `with_cpu` (callers with a better clock skip it).
    /// A task that is gone is forgotten.
    pub fn read(&mut self, tid: i32, with_cpu: bool) -> Result<TaskReading, TaskError> {
        let result = self.read_open(tid, with_cpu);
        if result.is_err() {
            self.open.remove(&tid);
        }
        result
    }

    fn read_open(&mut self, tid: i32, with_cpu: bool) -> Result<TaskReading, TaskError> {
        let task_dir = self.dir.join(tid.to_string());
        if let std::collections::hash_map::Entry::Vacant(slot) = self.open.entry(tid) {
            if let Some(kept) = fds::keep() {
                let syscall = File::open(task_dir.join("syscall"))?;
                slot.insert(TaskFiles {
                    syscall: (syscall, kept),
                    schedstat: None,
                    sched: None,
                });
            }
        }
        // schedstat only for threads without an exact clock: opened the first time it is needed.
        if let Some(files) = self.open.get_mut(&tid) {
            if with_cpu && files.schedstat.is_none() {
                if let Some(kept) = fds::keep() {
                    files.schedstat = File::open(task_dir.join("schedstat"))
                        .ok()
                        .map(|f| (f, kept));
                }
            }
        }
        // Past the budget, a file is opened for this read alone.
        let files = self.open.get(&tid);
        self.reads += 1;
        let n = match files {
            Some(TaskFiles { syscall, .. }) => syscall.0.read_at(&mut self.buf, 0)?,
            None => File::open(task_dir.join("syscall"))?.read_at(&mut self.buf, 0)?,
        };
        let activity = parse_syscall(&self.buf[..n]);
        let (cpu_ns, runqueue_ns) = if with_cpu {
            self.reads += 1;
            let n = match files.and_then(|f| f.schedstat.as_ref()) {
                Some((file, _)) => file.read_at(&mut self.buf, 0)?,
                None => File::open(task_dir.join("schedstat"))?.read_at(&mut self.buf, 0)?,
            };
            parse_schedstat(&self.buf[..n])
        } else {
            (0, 0)
        };
        Ok(TaskReading {
            tid,
            activity,
            cpu_ns,
            runqueue_ns,
        })
    }

    /// Forget tasks not in `alive` (their files would only return errors).
    pub fn retain(&mut self, alive: &[i32]) {
        self.open.retain(|tid, _| alive.binary_search(tid).is_ok());
    }

    /// The kernel's name for a thread (what `pthread_setname_np` or `prctl` set).
    pub fn name(&self, tid: i32) -> Option<String> {
        let raw = std::fs::read(self.dir.join(tid.to_string()).join("comm")).ok()?;
        Some(
            String::from_utf8_lossy(&raw)
                .trim_end_matches('\n')
                .to_string(),
        )
    }

    /// The one-letter scheduler state from /proc/PID/task/TID/stat (R, S, D, T, Z, ...).
    pub fn state_letter(&self, tid: i32) -> Option<char> {
        let raw = std::fs::read(self.dir.join(tid.to_string()).join("stat")).ok()?;
        stat_state(&raw)
    }
}

/// Read task `tid`'s file `name` from its start into `buf`: through the handle in its `slot`
/// of the task's kept files (opened there the first time, where the budget allows), else
/// opened for this read alone. The bytes read, None where it cannot be read.
fn read_task_file(
    dir: &Path,
    open: &mut HashMap<i32, TaskFiles>,
    tid: i32,
    name: &str,
    slot: fn(&mut TaskFiles) -> &mut Option<(File, fds::Kept)>,
    buf: &mut [u8],
) -> Option<usize> {
    let path = dir.join(tid.to_string()).join(name);
    if let Some(files) = open.get_mut(&tid) {
        let kept = slot(files);
        if kept.is_none() {
            if let Some(budget) = fds::keep() {
                *kept = File::open(&path).ok().map(|f| (f, budget));
            }
        }
        if let Some((file, _)) = kept.as_ref() {
            return file.read_at(buf, 0).ok();
        }
    }
    File::open(&path).ok()?.read_at(buf, 0).ok()
}

/// The numeric names in a getdents64 buffer: records of d_ino (8 bytes), d_off (8), d_reclen
/// (2), d_type (1) and a NUL-terminated name.
fn dirent_tids(mut entries: &[u8]) -> impl Iterator<Item = i32> + '_ {
    std::iter::from_fn(move || loop {
        let reclen = u16::from_le_bytes(entries.get(16..18)?.try_into().ok()?) as usize;
        let record = entries.get(..reclen.max(19))?;
        entries = &entries[record.len()..];
        let name = &record[19..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if let Some(tid) = std::str::from_utf8(name).ok().and_then(|n| n.parse().ok()) {
            return Some(tid);
        }
    })
}

/// The state letter of a stat line: the first field after the ")" that closes the name.
pub fn stat_state(stat: &[u8]) -> Option<char> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).map(|&b| b as char)
}

/// Parse /proc/TID/syscall: "running", "NR a0 a1 a2 a3 a4 a5 SP PC" or "-1 SP PC".
pub fn parse_syscall(text: &[u8]) -> Activity {
    let Ok(text) = std::str::from_utf8(text) else {
        return Activity::Unknown;
    };
    let text = text.trim();
    if text == "running" {
        return Activity::Running;
    }
    let mut fields = text.split(' ');
    let Some(Ok(nr)) = fields.next().map(str::parse::<i64>) else {
        return Activity::Unknown;
    };
    let values: Vec<u64> = fields.filter_map(parse_hex).collect();
    match (nr, values.as_slice()) {
        (nr, [sp, pc]) if nr < 0 => Activity::Blocked { sp: *sp, pc: *pc },
        (nr, [a0, a1, a2, _, _, _, sp, pc]) if nr >= 0 => Activity::Syscall {
            nr,
            args: [*a0, *a1, *a2],
            sp: *sp,
            pc: *pc,
        },
        _ => Activity::Unknown,
    }
}

fn parse_hex(field: &str) -> Option<u64> {
    u64::from_str_radix(field.strip_prefix("0x")?, 16).ok()
}

/// Parse /proc/TID/schedstat: "cpu_ns runqueue_ns timeslices".
pub fn parse_schedstat(text: &[u8]) -> (u64, u64) {
    let text = std::str::from_utf8(text).unwrap_or("");
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

/// A task's scheduler clocks (/proc/TID/sched), ns of its CPU's scheduler clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedClocks {
    /// `se.exec_start`: when its time on a CPU was last accounted. Off its CPU, the instant it
    /// left it (preempted, or gone to sleep).
    pub accounted_ns: u64,
    /// `se.sum_exec_runtime`: its total time on a CPU, as of that instant.
    pub run_ns: u64,
    /// `se.avg.last_update_time`: when its load average was last brought up to date (in 1,024
    /// ns steps). Also on every wake-up: later than `accounted_ns` by its sleep for a task
    /// woken since it left its CPU, not for one preempted there.
    pub load_updated_ns: u64,
}

/// The [`SchedClocks`] of a /proc/TID/sched text. The kernel prints the first two as
/// milliseconds with six decimals ("%Ld.%06ld"), the third in ns; any missing or malformed
/// gives None.
pub fn parse_sched_clocks(text: &[u8]) -> Option<SchedClocks> {
    let text = std::str::from_utf8(text).ok().or_else(|| {
        // Cut at a read's end inside a character: keep what is whole.
        let valid = std::str::from_utf8(text).err()?.valid_up_to();
        std::str::from_utf8(text.get(..valid)?).ok()
    })?;
    let field = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))?;
        let value = line.rsplit(':').next()?.trim();
        let (ms, frac) = value.split_once('.')?;
        if frac.len() != 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let ms: u64 = ms.parse().ok()?;
        let ns: u64 = frac.parse().ok()?;
        ms.checked_mul(1_000_000)?.checked_add(ns)
    };
    let load_updated_ns = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("se.avg.last_update_time"))?
        .rsplit(':')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(SchedClocks {
        accounted_ns: field("se.exec_start")?,
        run_ns: field("se.sum_exec_runtime")?,
        load_updated_ns,
    })
}

/// What the kernel says of a thread at one moment, for the findings about stuck threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The scheduler state letter (R running, S asleep, D uninterruptible, T stopped by a
    /// signal, t stopped by a tracer, ...).
    pub state: char,
    /// The system call it is blocked in: its number and its six arguments.
    pub syscall: Option<(i64, [u64; 6])>,
    /// The process tracing it (ptrace): its pid and name.
    pub tracer: Option<(i32, String)>,
}

/// Thread `tid` of process `pid` now, from its stat, syscall and status files; None if it
/// has exited.
pub fn condition(pid: i32, tid: i32) -> Option<Condition> {
    let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
    let state = stat_state(&std::fs::read(dir.join("stat")).ok()?)?;
    let syscall = std::fs::read(dir.join("syscall"))
        .ok()
        .and_then(|text| syscall_arguments(&text));
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    let tracer = status
        .lines()
        .find_map(|line| line.strip_prefix("TracerPid:"))
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 0)
        .map(|pid| {
            let name = std::fs::read(format!("/proc/{pid}/comm"))
                .map(|raw| String::from_utf8_lossy(&raw).trim_end().to_string())
                .unwrap_or_default();
            (pid, name)
        });
    Some(Condition {
        state,
        syscall,
        tracer,
    })
}

/// The system call number and six arguments of a syscall file's "NR a0 .. a5 SP PC" line.
fn syscall_arguments(text: &[u8]) -> Option<(i64, [u64; 6])> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_whitespace();
    let nr = fields.next()?.parse::<i64>().ok().filter(|&nr| nr >= 0)?;
    let values: Vec<u64> = fields.filter_map(parse_hex).collect();
    let args: [u64; 6] = values.get(..6)?.try_into().ok()?;
    (values.len() == 8).then_some((nr, args))
}

/// Total CPU time (ns) of each thread of `pid` now, by tid (schedstat).
pub fn cpu_times(pid: i32) -> HashMap<i32, u64> {
    let mut tasks = Tasks::new(pid);
    let tids = tasks.list().unwrap_or_default();
    tids.into_iter()
        .filter_map(|tid| {
            let raw = std::fs::read(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
            Some((tid, parse_schedstat(&raw).0))
        })
        .collect()
}

/// The x86_64 name of the system calls a thread is commonly found blocked in.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    Some(match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        19 => "readv",
        23 => "select",
        34 => "pause",
        35 => "nanosleep",
        43 => "accept",
        42 => "connect",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        247 => "waitid",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_condition_has_every_syscall_argument_and_its_tracer() {
        let text =
            b"202 0x7f10c9d41b28 0x189 0x0 0x0 0x0 0xffffffff 0x7ffd2c1a8e30 0x7f10c9e3a1f6\n";
        assert_eq!(
            syscall_arguments(text),
            Some((202, [0x7f10c9d41b28, 0x189, 0, 0, 0, 0xffffffff]))
        );
        assert_eq!(syscall_arguments(b"running\n"), None);
        assert_eq!(syscall_arguments(b"-1 0x7ffd 0x55d0\n"), None);
        assert_eq!(syscall_arguments(b"202 0x1 0x2\n"), None);
        let me = nix::unistd::gettid().as_raw();
        let condition = condition(std::process::id() as i32, me).unwrap();
        // Reading its own files, the thread is running; nothing traces a test.
        assert_eq!(condition.state, 'R');
        assert_eq!(condition.tracer, None);
        assert!(cpu_times(std::process::id() as i32).contains_key(&me));
    }

    #[test]
    fn parses_each_form_of_the_syscall_file() {
        assert_eq!(parse_syscall(b"running\n"), Activity::Running);
        let futex = parse_syscall(
            b"202 0x7f10c9d41b28 0x189 0x0 0x0 0x0 0xffffffff 0x7ffd2c1a8e30 0x7f10c9e3a1f6\n",
        );
        assert_eq!(futex.futex_addr(), Some(0x7f10c9d41b28));
        assert_eq!(
            parse_syscall(b"-1 0x7ffd2c1a8e30 0x55d0c8a01234\n"),
            Activity::Blocked {
                sp: 0x7ffd2c1a8e30,
                pc: 0x55d0c8a01234
            }
        );
        assert_eq!(parse_syscall(b"garbage"), Activity::Unknown);
        assert_eq!(parse_syscall(&[0xff, 0xfe]), Activity::Unknown);
        let sleep = parse_syscall(b"230 0x1 0x1 0x7f 0x0 0x0 0x0 0x7ffd 0x7f11\n");
        assert_eq!(sleep.futex_addr(), None);
    }

    #[test]
    fn parses_the_scheduler_clocks_of_a_sched_file() {
        let text = b"cat (7294, #threads: 1)\n-----\nse.exec_start                                :        542729.482086\nse.vruntime                                  :        299582.376412\nse.sum_exec_runtime                          :             0.118576\nnr_switches : 1\nse.avg.last_update_time                      :         542729481216\n";
        assert_eq!(
            parse_sched_clocks(text),
            Some(SchedClocks {
                accounted_ns: 542_729_482_086,
                run_ns: 118_576,
                load_updated_ns: 542_729_481_216,
            })
        );
        // Cut short, junk, or a field that does not parse: nothing.
        assert_eq!(parse_sched_clocks(&text[..90]), None);
        assert_eq!(
            parse_sched_clocks(
                b"se.exec_start : 1.5\nse.sum_exec_runtime : 2.000001\nse.avg.last_update_time : 1\n"
            ),
            None
        );
        assert_eq!(parse_sched_clocks(b"\xff\xfe"), None);
        assert_eq!(
            parse_sched_clocks(
                b"se.exec_start : 99999999999999999999.000000\nse.sum_exec_runtime : 0.000001\nse.avg.last_update_time : 1\n"
            ),
            None
        );
    }

    #[test]
    fn parses_schedstat_and_tolerates_junk() {
        assert_eq!(parse_schedstat(b"261005311 20767 6\n"), (261005311, 20767));
        assert_eq!(parse_schedstat(b""), (0, 0));
    }

    #[test]
    fn reads_the_state_letter_after_names_with_parentheses() {
        assert_eq!(stat_state(b"42 (a) b)) S 1 2 3"), Some('S'));
        assert_eq!(stat_state(b"42 (python3) R 1"), Some('R'));
        assert_eq!(stat_state(b"42 (x"), None);
    }

    #[test]
    fn reads_its_own_threads() {
        let mut tasks = Tasks::new(std::process::id() as i32);
        let tids = tasks.list().unwrap();
        assert!(tids.contains(&(std::process::id() as i32)));
        let me = nix::unistd::gettid().as_raw();
        let reading = tasks.read(me, true).unwrap();
        // A thread reading its own syscall file is caught in the act: pread64 (17).
        assert!(matches!(reading.activity, Activity::Syscall { nr: 17, .. }));
        // The main thread has run and been switched out: its CPU clock is up to date and not
        // zero. (A brand-new thread's may still read 0: it advances at scheduler events.)
        let main = tasks.read(std::process::id() as i32, true).unwrap();
        assert!(main.cpu_ns > 0);
        assert_eq!(tasks.read(i32::MAX, true), Err(TaskError::Gone));
    }

    #[test]
    fn a_listing_sees_threads_started_and_ended_since_the_last() {
        let mut tasks = Tasks::new(std::process::id() as i32);
        let before = tasks.list().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let during = tasks.list().unwrap();
        assert!(!before.contains(&tid) && during.contains(&tid));
        assert!(during.windows(2).all(|w| w[0] < w[1]));
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        // join() returns once the thread's tid word is cleared, which the kernel does before
        // it unhashes the task: the tid may still be listed for a moment after.
        let gone = (0..2000).any(|_| {
            let listed = tasks.list().unwrap().contains(&tid);
            if listed {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            !listed
        });
        assert!(gone, "thread {tid} still listed 2 s after it was joined");
    }

    #[test]
    fn a_listing_is_reused_only_while_the_thread_count_and_python_threads_stand_still() {
        // A process of its own, whose thread count nothing else changes (this test binary's
        // other tests start threads).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut tasks = Tasks::new(child.id() as i32);
        let first = tasks.list_unless_unchanged(true, 1_000).unwrap();
        assert_eq!(first, [child.id() as i32]);
        assert_eq!(tasks.listings_reused, 0);
        // Same count, same Python threads, young: the same listing, not read again.
        assert_eq!(tasks.list_unless_unchanged(true, 2_000).unwrap(), first);
        assert_eq!(tasks.listings_reused, 1);
        // The caller saw Python threads come or go; or the listing is old: listed again.
        tasks.list_unless_unchanged(false, 3_000).unwrap();
        tasks
            .list_unless_unchanged(true, 3_000 + RELIST_NS)
            .unwrap();
        assert_eq!(tasks.listings_reused, 1);
        // Gone: the count cannot be read, so the directory is, and it is empty or gone.
        child.kill().unwrap();
        child.wait().unwrap();
        let after = tasks.list_unless_unchanged(true, 4_000 + RELIST_NS);
        assert!(after.map_or(true, |tids| tids.is_empty()));
        assert_eq!(tasks.listings_reused, 1);
    }

    #[test]
    fn dirent_records_give_their_numeric_names() {
        let mut buf = Vec::new();
        for name in [".", "..", "4242", "17"] {
            let reclen = (19 + name.len() + 1).next_multiple_of(8);
            let mut record = vec![0u8; reclen];
            record[16..18].copy_from_slice(&(reclen as u16).to_le_bytes());
            record[19..19 + name.len()].copy_from_slice(name.as_bytes());
            buf.extend(record);
        }
        assert_eq!(dirent_tids(&buf).collect::<Vec<_>>(), vec![4242, 17]);
        assert_eq!(dirent_tids(&buf[..30]).count(), 0);
    }
}
