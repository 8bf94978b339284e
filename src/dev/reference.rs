//! The exact GIL reference: uprobes on `take_gil` (entry and return) and `drop_gil` (entry and
//! return) give every acquire and release, and optionally the scheduler's switches and wake-ups
//! of the same threads. Used to measure gilscope's accuracy; it slows GIL hand-offs a little,
//! so it is a tool for test hosts, never part of a normal recording.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::target::elf;

const TRACEFS: &str = "/sys/kernel/tracing";
/// Per-CPU ring buffer: the busiest fixture makes ~10^5 events/s.
const BUFFER_KB: u32 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    TakeEntry,
    TakeReturn,
    DropEntry,
    DropReturn,
}

impl Probe {
    fn event_name(&self) -> &'static str {
        match self {
            Probe::TakeEntry => "take_entry",
            Probe::TakeReturn => "take_return",
            Probe::DropEntry => "drop_entry",
            Probe::DropReturn => "drop_return",
        }
    }
}

/// One probe hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub tid: i32,
    /// CLOCK_MONOTONIC (µs resolution, as ftrace prints it), in ns.
    pub time_ns: u64,
    pub probe: Probe,
}

/// Why a thread left its CPU at a context switch (`prev_state` of `sched_switch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftCpu {
    /// Still runnable: preempted (by a woken task, its time slice, or the sampler).
    Preempted,
    /// Asleep (interruptible, uninterruptible, stopped...), or exiting.
    Slept,
}

/// One scheduler event of a thread of the traced process (with
/// [`Tracer::start_with_scheduler`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedEvent {
    /// `prev` left CPU `cpu` for `next` (either may belong to another process).
    Switch {
        time_ns: u64,
        cpu: u32,
        prev: i32,
        left: LeftCpu,
        next: i32,
    },
    /// `tid` was woken (made runnable) to run on `cpu`.
    Wakeup { time_ns: u64, tid: i32, cpu: u32 },
}

impl SchedEvent {
    pub fn time_ns(&self) -> u64 {
        match self {
            SchedEvent::Switch { time_ns, .. } | SchedEvent::Wakeup { time_ns, .. } => *time_ns,
        }
    }
}

/// Exact per-thread GIL time over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Truth {
    /// Fraction of the window between take_gil's return and drop_gil's entry.
    pub hold: f64,
    /// Fraction of the window inside take_gil or drop_gil.
    pub wait: f64,
}

/// Is uprobe tracing possible here? Err says why not, for a test's skip message.
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("uprobes need root".into());
    }
    let events = Path::new(TRACEFS).join("uprobe_events");
    if !events.exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", TRACEFS])
            .status();
    }
    if !events.exists() {
        return Err(format!(
            "{} is missing: tracefs is not mounted or the kernel lacks CONFIG_UPROBE_EVENTS",
            events.display()
        ));
    }
    Ok(())
}

/// Where to probe: the file offsets of the GIL functions in `binary`.
#[derive(Debug, Clone)]
pub struct ProbeSites {
    pub binary: PathBuf,
    pub take: Vec<u64>,
    pub drop: Vec<u64>,
}

/// Find `take_gil` / `drop_gil` (and 3.14's `drop_gil_impl`, and `PyEval_SaveThread`, which
/// LTO builds make release the GIL inline) with their compiler clones
/// (`take_gil.constprop.0`, `take_gil.lto_priv.0`, ...) in `binary`'s symbol table or in a
/// separate debug file with the same addresses. Split-off cold parts (`.cold`, `.part`) are
/// not entry points.
pub fn probe_sites(binary: &Path, debug_file: Option<&Path>) -> Result<ProbeSites, String> {
    let data = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let symbols = match debug_file {
        Some(path) => {
            let debug = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            elf::function_symbols(&debug)?
        }
        None => elf::function_symbols(&data)?,
    };
    let is_function = |name: &str, base: &str| {
        name == base
            || name.strip_prefix(base).is_some_and(|rest| {
                rest.starts_with('.') && !rest.contains(".cold") && !rest.contains(".part")
            })
    };
    let mut take = Vec::new();
    let mut drop = Vec::new();
    // A build that inlines drop_gil everywhere (3.13t built without LTO keeps no drop_gil
    // symbol) still releases through `_PyEval_ReleaseLock`, which callers in other files
    // cannot inline: probed only then, so that other builds keep the reference they had.
    let mut release_lock = Vec::new();
    let mut has_drop_gil = false;
    for (name, value) in symbols {
        // Releases do not all pass through drop_gil: 3.14+ split out drop_gil_impl, and LTO
        // builds inline the whole release into PyEval_SaveThread (Py_BEGIN_ALLOW_THREADS).
        // Probe all three and count nesting (see `truth`).
        let list = if is_function(&name, "take_gil") {
            &mut take
        } else if is_function(&name, "drop_gil") || is_function(&name, "drop_gil_impl") {
            has_drop_gil = true;
            &mut drop
        } else if name == "PyEval_SaveThread" {
            &mut drop
        } else if name == "_PyEval_ReleaseLock" {
            &mut release_lock
        } else {
            continue;
        };
        let offset = elf::file_offset(&data, value)
            .ok_or_else(|| format!("{name} is outside every loadable segment"))?;
        if !list.contains(&offset) {
            list.push(offset);
        }
    }
    if !has_drop_gil {
        for offset in release_lock {
            if !drop.contains(&offset) {
                drop.push(offset);
            }
        }
    }
    if take.is_empty() || drop.is_empty() {
        return Err(format!(
            "no take_gil/drop_gil symbols in {} (stripped; no debug symbols)",
            debug_file.unwrap_or(binary).display()
        ));
    }
    Ok(ProbeSites {
        binary: binary.to_path_buf(),
        take,
        drop,
    })
}

/// Live uprobe tracing, in a private ftrace instance; removed on drop.
pub struct Tracer {
    group: String,
    instance: PathBuf,
    events: Arc<Mutex<Vec<Event>>>,
    sched: Arc<Mutex<Vec<SchedEvent>>>,
    births: Arc<Mutex<HashMap<i32, u64>>>,
    /// Set once the end marker is written: the reader stops at an empty pipe after it.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Everything a tracer collected, each list in time order.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub events: Vec<Event>,
    /// Empty unless the scheduler was traced too.
    pub sched: Vec<SchedEvent>,
    /// Events the kernel lost (its buffer full while the reader lagged): a trace that lost
    /// any is not a reference.
    pub lost: u64,
    /// When each thread the process started during the trace was created: before that it
    /// was nowhere, whatever its first event suggests.
    pub births: HashMap<i32, u64>,
}

impl Trace {
    /// Every thread's roles over the trace.
    pub fn roles(&self) -> Roles {
        Roles::with_births(&self.events, &self.births)
    }

    /// Each thread's exact hold and wait fractions over [start_ns, end_ns] (see [`truth`]).
    pub fn truth(&self, start_ns: u64, end_ns: u64) -> HashMap<i32, Truth> {
        self.roles().truth(start_ns, end_ns)
    }

    /// The process's figures over [start_ns, end_ns] (see [`process_truth`]).
    pub fn process_truth(&self, start_ns: u64, end_ns: u64) -> ProcessTruth {
        self.roles().process_truth(start_ns, end_ns)
    }
}

/// Passes over the target's task list when filling `set_event_pid`: threads started while it
/// is being written are caught by the next pass (after that, `event-fork` adds them).
const PID_FILTER_PASSES: usize = 8;

impl Tracer {
    /// Place the probes and start collecting. Only hits from process `pid` are kept.
    pub fn start(sites: &ProbeSites, pid: i32) -> Result<Tracer, String> {
        Tracer::start_with(sites, pid, false)
    }

    /// Like [`Tracer::start`], and also trace the scheduler's switches and wake-ups of the
    /// process's threads (`sched_switch`, `sched_wakeup`): where each thread was, on a CPU,
    /// queued for one, or asleep, at every instant.
    pub fn start_with_scheduler(sites: &ProbeSites, pid: i32) -> Result<Tracer, String> {
        Tracer::start_with(sites, pid, true)
    }

    fn start_with(sites: &ProbeSites, pid: i32, scheduler: bool) -> Result<Tracer, String> {
        available()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let group = format!("gilscope_ref_{}_{serial}", std::process::id());
        remove_stale_groups();
        let mut definitions = Vec::new();
        let path = sites.binary.display();
        for (i, offset) in sites.take.iter().enumerate() {
            definitions.push(format!("p:{group}/take_entry_{i} {path}:{offset:#x}"));
            definitions.push(format!("r:{group}/take_return_{i} {path}:{offset:#x}"));
        }
        for (i, offset) in sites.drop.iter().enumerate() {
            definitions.push(format!("p:{group}/drop_entry_{i} {path}:{offset:#x}"));
            definitions.push(format!("r:{group}/drop_return_{i} {path}:{offset:#x}"));
        }
        for definition in &definitions {
            append(&Path::new(TRACEFS).join("uprobe_events"), definition)?;
        }
        let instance = Path::new(TRACEFS).join("instances").join(&group);
        let tracer = Tracer {
            group: group.clone(),
            instance: instance.clone(),
            events: Arc::new(Mutex::new(Vec::new())),
            sched: Arc::new(Mutex::new(Vec::new())),
            births: Arc::new(Mutex::new(HashMap::new())),
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            reader: None,
        };
        // From here on, Drop cleans up whatever was made.
        if !instance.exists() {
            std::fs::create_dir(&instance).map_err(|e| format!("ftrace instance: {e}"))?;
        }
        write(&instance.join("trace_clock"), "mono")?;
        write(&instance.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        // The kernel keeps only the events of the process's threads and of the tasks they
        // start (child processes too), and says which new tasks are threads (`task_newtask`'s
        // clone flags): a thread that lives a millisecond has ended long before its events are
        // read, so its /proc entry could not say whose it was.
        write(&instance.join("options").join("event-fork"), "1")?;
        write(
            &instance
                .join("events")
                .join("task")
                .join("task_newtask")
                .join("enable"),
            "1",
        )?;
        let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
        let mut filtered: HashSet<i32> = HashSet::new();
        for _ in 0..PID_FILTER_PASSES {
            let tids: Vec<i32> = std::fs::read_dir(&task_dir)
                .map_err(|e| format!("{}: {e}", task_dir.display()))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|tid| !filtered.contains(tid))
                .collect();
            if tids.is_empty() {
                break;
            }
            for tid in tids {
                // Appending adds to the list; a thread that ended meanwhile is refused.
                let _ = append(&instance.join("set_event_pid"), &tid.to_string());
                filtered.insert(tid);
            }
        }
        write(&instance.join("events").join(&group).join("enable"), "1")?;
        if scheduler {
            for event in ["sched_switch", "sched_wakeup"] {
                let enable = instance
                    .join("events")
                    .join("sched")
                    .join(event)
                    .join("enable");
                write(&enable, "1")?;
            }
        }
        write(&instance.join("tracing_on"), "1")?;
        let mut tracer = tracer;
        // Read without blocking, at intervals: a reader asleep on trace_pipe is woken by the
        // next event, on the CPU of the thread that hit the probe, and often preempts it right
        // there, at the entry to take_gil or drop_gil: the reference would then make the very
        // states (queued at the door of the GIL) that it is meant to time.
        let pipe = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(instance.join("trace_pipe"))
            .map_err(|e| format!("trace_pipe: {e}"))?;
        let events = tracer.events.clone();
        let sched = tracer.sched.clone();
        let births = tracer.births.clone();
        let stopping = tracer.stopping.clone();
        // The process's threads: those listed now, and those they start as threads.
        let mut members = filtered;
        tracer.reader = Some(std::thread::spawn(move || {
            // Scheduler events and births are only read after the stop: kept apart until then.
            let mut sched_events = Vec::new();
            let mut born = HashMap::new();
            for line in PolledLines::new(pipe, stopping) {
                if line.contains("### STOP ###") {
                    break;
                }
                if let Some(event) = parse_line(&line) {
                    // `wait_until_known` looks at these while the reader works.
                    if members.contains(&event.tid) {
                        if let Ok(mut all) = events.lock() {
                            all.push(event);
                        }
                    }
                } else if let Some(event) = parse_sched_line(&line) {
                    sched_events.push(event);
                } else if let Some((time_ns, creator, task, thread)) = parse_new_task(&line) {
                    if thread && members.contains(&creator) {
                        members.insert(task);
                        born.insert(task, time_ns);
                    } else {
                        // A tid handed out again (to a child process, say) is not ours.
                        members.remove(&task);
                    }
                }
            }
            // The kernel kept the switches and wake-ups of the process's children too.
            let ours = |tid: i32| members.contains(&tid);
            sched_events.retain(|event| match *event {
                SchedEvent::Switch { prev, next, .. } => ours(prev) || ours(next),
                SchedEvent::Wakeup { tid, .. } => ours(tid),
            });
            if let Ok(mut all) = sched.lock() {
                all.append(&mut sched_events);
            }
            if let Ok(mut all) = births.lock() {
                *all = born;
            }
        }));
        Ok(tracer)
    }

    /// Wait until each of `tids` has entered take_gil at least once since tracing started
    /// (or `timeout` passes): from then on every thread's state is known. Returns the tids
    /// still unknown.
    pub fn wait_until_known(&self, tids: &[i32], timeout: std::time::Duration) -> Vec<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen: HashSet<i32> = self
                .events
                .lock()
                .map(|e| {
                    e.iter()
                        .filter(|e| e.probe == Probe::TakeEntry)
                        .map(|e| e.tid)
                        .collect()
                })
                .unwrap_or_default();
            let unknown: Vec<i32> = tids.iter().copied().filter(|t| !seen.contains(t)).collect();
            if unknown.is_empty() || std::time::Instant::now() >= deadline {
                return unknown;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stop tracing and return every GIL event, in time order.
    pub fn stop(self) -> Vec<Event> {
        self.stop_all().events
    }

    /// Stop tracing and return everything collected, in time order.
    pub fn stop_all(mut self) -> Trace {
        // Stop the probes, then mark the end of the stream for the reader.
        let _ = write(
            &self
                .instance
                .join("events")
                .join(&self.group)
                .join("enable"),
            "0",
        );
        let _ = write(
            &self.instance.join("events").join("sched").join("enable"),
            "0",
        );
        let _ = write(&self.instance.join("tracing_on"), "1");
        let _ = append(&self.instance.join("trace_marker"), "### STOP ###");
        // The marker is behind every event: once it is written, an empty pipe is the end.
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let lost = lost_events(&self.instance);
        let mut events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        events.sort_by_key(|e| e.time_ns);
        let mut sched = self.sched.lock().map(|e| e.clone()).unwrap_or_default();
        sched.sort_by_key(|e| e.time_ns());
        let births = self.births.lock().map(|b| b.clone()).unwrap_or_default();
        Trace {
            events,
            sched,
            lost,
            births,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = write(&self.instance.join("tracing_on"), "0");
        let group_dir = self.instance.join("events").join(&self.group);
        let _ = write(&group_dir.join("enable"), "0");
        // The instance must go first: its events keep the probes busy.
        let _ = std::fs::remove_dir(&self.instance);
        remove_group(&self.group);
    }
}

/// How long the reader sleeps when trace_pipe is empty.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// The lines of a non-blocking trace_pipe, read in chunks, sleeping [`POLL_INTERVAL`] whenever
/// it is empty. Ends on a read error other than "empty", or once `stopping` is set and the
/// pipe is empty.
struct PolledLines {
    pipe: std::fs::File,
    buf: Vec<u8>,
    start: usize,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl PolledLines {
    fn new(pipe: std::fs::File, stopping: Arc<std::sync::atomic::AtomicBool>) -> PolledLines {
        PolledLines {
            pipe,
            buf: Vec::with_capacity(1 << 20),
            start: 0,
            stopping,
        }
    }
}

impl Iterator for PolledLines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[self.start..self.start + at]);
                self.start += at + 1;
                return Some(line.into_owned());
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let len = self.buf.len();
            self.buf.resize(len + (1 << 20), 0);
            match self.pipe.read(&mut self.buf[len..]) {
                Ok(n) if n > 0 => self.buf.truncate(len + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return None,
                // Empty.
                _ => {
                    self.buf.truncate(len);
                    if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        return None;
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }
}

/// Events an ftrace instance overwrote or dropped, over all CPUs.
fn lost_events(instance: &Path) -> u64 {
    let Ok(cpus) = std::fs::read_dir(instance.join("per_cpu")) else {
        return 0;
    };
    cpus.filter_map(|cpu| std::fs::read_to_string(cpu.ok()?.path().join("stats")).ok())
        .flat_map(|stats| {
            stats
                .lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    matches!(key.trim(), "overrun" | "dropped events")
                        .then(|| value.trim().parse::<u64>().ok())?
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Remove every probe of `group` (one by one: not every kernel takes a wildcard).
fn remove_group(group: &str) {
    let events = Path::new(TRACEFS).join("uprobe_events");
    let Ok(defs) = std::fs::read_to_string(&events) else {
        return;
    };
    for line in defs.lines() {
        let Some(name) = line
            .split_whitespace()
            .next()
            .and_then(|d| d.split_once(':'))
            .map(|(_, name)| name.to_string())
        else {
            continue;
        };
        if name.split('/').next() == Some(group) {
            let _ = append(&events, &format!("-:{name}"));
        }
    }
}

/// Remove probe groups left by earlier runs whose process is gone.
fn remove_stale_groups() {
    let Ok(defs) = std::fs::read_to_string(Path::new(TRACEFS).join("uprobe_events")) else {
        return;
    };
    let mut stale = HashSet::new();
    for line in defs.lines() {
        let Some(group) = line
            .split_whitespace()
            .next()
            .and_then(|d| d.split_once(':'))
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(group, _)| group.to_string())
        else {
            continue;
        };
        if let Some(pid) = group
            .strip_prefix("gilscope_ref_")
            .and_then(|rest| rest.split('_').next())
        {
            if !Path::new("/proc").join(pid).exists() {
                stale.insert(group);
            }
        }
    }
    for group in stale {
        let _ = std::fs::remove_dir(Path::new(TRACEFS).join("instances").join(&group));
        remove_group(&group);
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

fn append(path: &Path, line: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("{}: {line}: {e}", path.display()))
}

/// What every trace_pipe line starts with: `comm-TID [CPU] flags SECONDS.MICROS` (with the
/// `record-tgid` option, `(TGID)` before the CPU: skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    tid: i32,
    cpu: u32,
    time_ns: u64,
}

fn parse_head(head: &str) -> Option<Head> {
    let stamp = head.split_whitespace().next_back()?.trim_end_matches(':');
    let (secs, micros) = stamp.split_once('.')?;
    let time_ns = secs.parse::<u64>().ok()? * 1_000_000_000 + micros.parse::<u64>().ok()? * 1000;
    let (task, rest) = head.rsplit_once(" [")?;
    let cpu = rest.split(']').next()?.trim().parse().ok()?;
    let mut task = task.trim_end();
    if let Some(open) = task.strip_suffix(')').and_then(|t| t.rfind('(')) {
        task = task[..open].trim_end();
    }
    // The task is "comm-TID"; comm may itself contain '-' or spaces, the TID never does.
    let tid = task.rsplit('-').next()?.parse().ok()?;
    Some(Head { tid, cpu, time_ns })
}

/// Parse a trace_pipe line: `comm-TID [CPU] flags SECONDS.MICROS: take_entry_0: (...)`.
pub fn parse_line(line: &str) -> Option<Event> {
    let (head, rest) = line.split_once(": ")?;
    let event = rest.split(':').next()?.trim();
    let probe = [
        Probe::TakeEntry,
        Probe::TakeReturn,
        Probe::DropEntry,
        Probe::DropReturn,
    ]
    .into_iter()
    .find(|p| {
        event
            .strip_prefix(p.event_name())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
    })?;
    let head = parse_head(head)?;
    Some(Event {
        tid: head.tid,
        time_ns: head.time_ns,
        probe,
    })
}

/// Parse a trace_pipe line of `task_newtask`: (when, the creating thread, the new task, whether
/// the new task is a thread of the creator's process: `CLONE_THREAD`).
fn parse_new_task(line: &str) -> Option<(u64, i32, i32, bool)> {
    const CLONE_THREAD: u64 = 0x10000;
    let (head, body) = line.split_once(": task_newtask: ")?;
    let head = parse_head(head)?;
    let task = body
        .strip_prefix("pid=")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let flags = body
        .rsplit_once(" clone_flags=")?
        .1
        .split_whitespace()
        .next()?;
    let flags = u64::from_str_radix(flags, 16).ok()?;
    Some((head.time_ns, head.tid, task, flags & CLONE_THREAD != 0))
}

/// Parse a trace_pipe line of `sched_switch` or `sched_wakeup`. Command names may hold spaces
/// and `=`, so fields are found from the right.
pub fn parse_sched_line(line: &str) -> Option<SchedEvent> {
    let (head, rest) = line.split_once(": sched_")?;
    let head = parse_head(head)?;
    let (time_ns, cpu) = (head.time_ns, head.cpu);
    fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        let at = text.rfind(key)? + key.len();
        text[at..].split_whitespace().next()
    }
    fn number<T: std::str::FromStr>(text: Option<&str>) -> Option<T> {
        text?.parse().ok()
    }
    if let Some(body) = rest.strip_prefix("switch: ") {
        let (before, after) = body.split_once(" ==> ")?;
        let left = match field(before, " prev_state=")? {
            "R" | "R+" => LeftCpu::Preempted,
            _ => LeftCpu::Slept,
        };
        Some(SchedEvent::Switch {
            time_ns,
            cpu,
            prev: number(field(before, " prev_pid="))?,
            left,
            next: number(field(after, " next_pid="))?,
        })
    } else if let Some(body) = rest.strip_prefix("wakeup: ") {
        Some(SchedEvent::Wakeup {
            time_ns,
            tid: number(field(body, " pid="))?,
            cpu: number(field(body, " target_cpu="))?,
        })
    } else {
        None
    }
}

/// Where the reference puts a thread at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GilRole {
    /// Between take_gil's return and the start of the next release.
    Hold,
    /// Inside take_gil or a release (drop_gil and the functions that inline it).
    Wait,
    /// Anywhere else: running without the GIL, or asleep.
    Elsewhere,
}

/// Each thread's roles in time order: `(from_ns, role)`, the first from 0 (before a thread's
/// first event, its role follows from that event).
#[derive(Debug, Clone, Default)]
pub struct Roles {
    by_thread: HashMap<i32, Vec<(u64, GilRole)>>,
}

impl Roles {
    /// Follow every thread through `events` (in time order): waiting while inside any probed
    /// function (calls may nest: drop_gil -> drop_gil_impl), holding from take_gil's return
    /// until the next release starts, elsewhere otherwise.
    pub fn new(events: &[Event]) -> Roles {
        Roles::with_births(events, &HashMap::new())
    }

    /// [`Roles::new`] for threads some of which were created at known instants (`births`):
    /// elsewhere until then, whatever their first event suggests.
    pub fn with_births(events: &[Event], births: &HashMap<i32, u64>) -> Roles {
        #[derive(Clone, Copy)]
        struct Thread {
            depth: u32,
            holding: bool,
        }
        impl Thread {
            fn role(&self) -> GilRole {
                match (self.depth > 0, self.holding) {
                    (true, _) => GilRole::Wait,
                    (false, true) => GilRole::Hold,
                    (false, false) => GilRole::Elsewhere,
                }
            }
        }
        let mut threads: HashMap<i32, Thread> = HashMap::new();
        let mut by_thread: HashMap<i32, Vec<(u64, GilRole)>> = HashMap::new();
        for event in events {
            let thread = threads.entry(event.tid).or_insert_with(|| {
                // A return probe armed while the thread was already inside take_gil never
                // fires, so start tracing well before the window.
                let (depth, holding) = match event.probe {
                    Probe::TakeEntry => (0, false),
                    Probe::TakeReturn | Probe::DropReturn => (1, false),
                    Probe::DropEntry => (0, true),
                };
                Thread { depth, holding }
            });
            let roles = by_thread.entry(event.tid).or_default();
            if roles.is_empty() {
                match births.get(&event.tid) {
                    Some(&born) => {
                        roles.push((0, GilRole::Elsewhere));
                        if thread.role() != GilRole::Elsewhere {
                            roles.push((born.min(event.time_ns), thread.role()));
                        }
                    }
                    None => roles.push((0, thread.role())),
                }
            }
            match event.probe {
                Probe::TakeEntry => thread.depth += 1,
                Probe::TakeReturn => {
                    thread.depth = thread.depth.saturating_sub(1);
                    thread.holding = true;
                }
                Probe::DropEntry => {
                    thread.depth += 1;
                    thread.holding = false;
                }
                Probe::DropReturn => thread.depth = thread.depth.saturating_sub(1),
            }
            let role = thread.role();
            if roles.last().is_some_and(|&(_, last)| last != role) {
                roles.push((event.time_ns, role));
            }
        }
        Roles { by_thread }
    }

    /// Every thread the events name.
    pub fn threads(&self) -> impl Iterator<Item = i32> + '_ {
        self.by_thread.keys().copied()
    }

    /// Thread `tid`'s role at `time_ns` (elsewhere for a thread without events).
    pub fn at(&self, tid: i32, time_ns: u64) -> GilRole {
        let Some(roles) = self.by_thread.get(&tid) else {
            return GilRole::Elsewhere;
        };
        match roles.partition_point(|&(from, _)| from <= time_ns) {
            0 => GilRole::Elsewhere,
            i => roles[i - 1].1,
        }
    }

    /// Thread `tid`'s time in each role within [start_ns, end_ns] (ns): (hold, wait).
    fn times(&self, tid: i32, start_ns: u64, end_ns: u64) -> (u64, u64) {
        let Some(roles) = self.by_thread.get(&tid) else {
            return (0, 0);
        };
        let (mut hold, mut wait) = (0, 0);
        for (i, &(from, role)) in roles.iter().enumerate() {
            let to = roles.get(i + 1).map_or(u64::MAX, |&(next, _)| next);
            let (a, b) = (from.max(start_ns), to.min(end_ns));
            if b > a {
                match role {
                    GilRole::Hold => hold += b - a,
                    GilRole::Wait => wait += b - a,
                    GilRole::Elsewhere => {}
                }
            }
        }
        (hold, wait)
    }
}

/// Each thread's exact hold and wait fractions over [start_ns, end_ns]: waiting while inside
/// any probed function (calls may nest: drop_gil -> drop_gil_impl), holding from take_gil's
/// return until the next release starts, elsewhere otherwise.
pub fn truth(events: &[Event], start_ns: u64, end_ns: u64) -> HashMap<i32, Truth> {
    Roles::new(events).truth(start_ns, end_ns)
}

impl Roles {
    /// See [`truth`].
    pub fn truth(&self, start_ns: u64, end_ns: u64) -> HashMap<i32, Truth> {
        let span = end_ns.saturating_sub(start_ns).max(1) as f64;
        self.threads()
            .map(|tid| {
                let (hold, wait) = self.times(tid, start_ns, end_ns);
                (
                    tid,
                    Truth {
                        hold: hold as f64 / span,
                        wait: wait as f64 / span,
                    },
                )
            })
            .collect()
    }
}

/// The process's exact GIL figures over a window, in the report's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessTruth {
    /// Share of the window in which some thread held the GIL.
    pub held: f64,
    /// Share of the window in which at least one thread waited.
    pub contended: f64,
    /// Waiting threads, averaged over the window.
    pub mean_waiting: f64,
}

/// The process's held, contended and mean waiting figures over [start_ns, end_ns], from
/// every thread's roles (one GIL: a process whose subinterpreters own GILs needs them apart).
pub fn process_truth(events: &[Event], start_ns: u64, end_ns: u64) -> ProcessTruth {
    Roles::new(events).process_truth(start_ns, end_ns)
}

impl Roles {
    /// See [`process_truth`].
    pub fn process_truth(&self, start_ns: u64, end_ns: u64) -> ProcessTruth {
        let changes = self.changes(start_ns, end_ns);
        let span = end_ns.saturating_sub(start_ns).max(1) as f64;
        let (mut holders, mut waiters) = (0i64, 0i64);
        let (mut held, mut contended, mut waiting) = (0u64, 0u64, 0u64);
        let mut since = start_ns;
        for (at, d_hold, d_wait) in changes {
            let ns = at.saturating_sub(since);
            held += ns * (holders > 0) as u64;
            contended += ns * (waiters > 0) as u64;
            waiting += ns * waiters.max(0) as u64;
            since = since.max(at);
            holders += d_hold;
            waiters += d_wait;
        }
        let ns = end_ns.saturating_sub(since);
        held += ns * (holders > 0) as u64;
        contended += ns * (waiters > 0) as u64;
        waiting += ns * waiters.max(0) as u64;
        ProcessTruth {
            held: held as f64 / span,
            contended: contended as f64 / span,
            mean_waiting: waiting as f64 / span,
        }
    }

    /// The process's figures as a sampler sees them at `instants` (in time order): the share
    /// of instants at which some thread held the GIL, at which some thread waited, and the
    /// waiters averaged over them. Beside [`Roles::process_truth`] over the same window, the
    /// difference is the sampling error of those instants alone, whatever any classifier
    /// said at them.
    pub fn process_at(&self, instants: &[u64]) -> ProcessTruth {
        let (Some(&first), Some(&last)) = (instants.first(), instants.last()) else {
            return ProcessTruth::default();
        };
        let changes = self.changes(first, last);
        let (mut holders, mut waiters) = (0i64, 0i64);
        let (mut held, mut contended, mut waiting) = (0u64, 0u64, 0u64);
        let mut next = changes.iter().peekable();
        for &at in instants {
            while let Some(&&(when, d_hold, d_wait)) = next.peek() {
                if when > at {
                    break;
                }
                holders += d_hold;
                waiters += d_wait;
                next.next();
            }
            held += (holders > 0) as u64;
            contended += (waiters > 0) as u64;
            waiting += waiters.max(0) as u64;
        }
        let n = instants.len() as f64;
        ProcessTruth {
            held: held as f64 / n,
            contended: contended as f64 / n,
            mean_waiting: waiting as f64 / n,
        }
    }

    /// Every change of any thread's role up to `end_ns`, in time order, as (time, +-holders,
    /// +-waiters); those before `start_ns` are moved to it.
    fn changes(&self, start_ns: u64, end_ns: u64) -> Vec<(u64, i64, i64)> {
        let roles = self;
        let mut changes: Vec<(u64, i64, i64)> = Vec::new();
        for list in roles.by_thread.values() {
            let mut previous = GilRole::Elsewhere;
            for &(from, role) in list {
                let at = from.max(start_ns);
                if at > end_ns {
                    break;
                }
                let count = |r: GilRole, which: GilRole| (r == which) as i64;
                changes.push((
                    at,
                    count(role, GilRole::Hold) - count(previous, GilRole::Hold),
                    count(role, GilRole::Wait) - count(previous, GilRole::Wait),
                ));
                previous = role;
            }
        }
        changes.sort_by_key(|&(at, _, _)| at);
        changes
    }
}

/// A stay in take_gil/drop_gil that no GIL ever keeps a thread in: longer than `min_ns`
/// while other threads took the GIL at least `min_takes` times. Such a stay means a probe
/// hit was lost (the reference, not gilscope, is wrong there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImplausibleWait {
    pub tid: i32,
    pub ns: u64,
    pub takes_by_others: u64,
}

/// Stays in the GIL code overlapping [start_ns, end_ns] that the GIL's hand-off rules make
/// impossible: a waiter asks for the GIL after one switch interval, so it cannot sit in
/// take_gil through hundreds of hand-offs to others.
pub fn implausible_waits(
    events: &[Event],
    start_ns: u64,
    end_ns: u64,
    min_ns: u64,
    min_takes: u64,
) -> Vec<ImplausibleWait> {
    let mut depth: HashMap<i32, u32> = HashMap::new();
    // For each thread inside the GIL code: when it entered, and the takes counted then.
    let mut inside: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut takes = 0u64;
    let mut found = Vec::new();
    let mut check = |tid: i32, (began, takes_then): (u64, u64), at: u64, takes_now: u64| {
        let ns = at.min(end_ns).saturating_sub(began.max(start_ns));
        // The thread's own take ends the stay, so every take counted since is another's.
        let takes_by_others = takes_now.saturating_sub(takes_then);
        if ns >= min_ns && takes_by_others >= min_takes {
            found.push(ImplausibleWait {
                tid,
                ns,
                takes_by_others,
            });
        }
    };
    for event in events {
        let d = depth.entry(event.tid).or_insert(0);
        let was = *d;
        match event.probe {
            Probe::TakeEntry | Probe::DropEntry => *d += 1,
            Probe::TakeReturn | Probe::DropReturn => *d = d.saturating_sub(1),
        }
        if was == 0 && *d > 0 {
            inside.insert(event.tid, (event.time_ns, takes));
        } else if was > 0 && *d == 0 {
            if let Some(stay) = inside.remove(&event.tid) {
                check(event.tid, stay, event.time_ns, takes);
            }
        }
        if event.probe == Probe::TakeReturn {
            takes += 1;
        }
    }
    for (tid, stay) in inside {
        check(tid, stay, end_ns, takes);
    }
    found
}

/// A drop_gil return followed by take_gil within this (ns) is the eval loop handing the GIL
/// over and asking it back, with nothing run in between (it takes a microsecond or two; the
/// margin covers a preemption between the two calls).
pub const HAND_BACK_NS: u64 = 100_000;

/// Every thread's waits for the GIL wholly inside [start_ns, end_ns], as (since, until) in ns:
/// each take_gil stay (entry to return), begun at drop_gil's entry where the thread was made to
/// let go and asked straight back (CPython holds it in drop_gil until another has taken the
/// GIL, then it asks again: one wait). The exact counterpart of gilscope's wait episodes
/// (tests/latency.rs, examples/compare's `--latency`).
pub fn wait_episodes(
    events: &[Event],
    start_ns: u64,
    end_ns: u64,
) -> HashMap<i32, Vec<(u64, u64)>> {
    let mut entered: HashMap<i32, u64> = HashMap::new();
    // Each thread's drop_gil stay under way (its entry), and its last one (entry, return).
    let mut dropping: HashMap<i32, u64> = HashMap::new();
    let mut dropped: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut waits: HashMap<i32, Vec<(u64, u64)>> = HashMap::new();
    for event in events {
        match event.probe {
            Probe::DropEntry => {
                dropping.insert(event.tid, event.time_ns);
            }
            Probe::DropReturn => {
                if let Some(since) = dropping.remove(&event.tid) {
                    dropped.insert(event.tid, (since, event.time_ns));
                }
            }
            Probe::TakeEntry => {
                if entered.contains_key(&event.tid) {
                    continue;
                }
                let since = match dropped.remove(&event.tid) {
                    Some((since, until)) if event.time_ns.saturating_sub(until) < HAND_BACK_NS => {
                        since
                    }
                    _ => event.time_ns,
                };
                entered.insert(event.tid, since);
            }
            Probe::TakeReturn => {
                if let Some(since) = entered.remove(&event.tid) {
                    if since >= start_ns && event.time_ns <= end_ns {
                        waits
                            .entry(event.tid)
                            .or_default()
                            .push((since, event.time_ns));
                    }
                }
            }
        }
    }
    waits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_through_hundreds_of_hand_offs_is_implausible() {
        let event = |tid, ms: u64, probe| Event {
            tid,
            time_ns: ms * 1_000_000,
            probe,
        };
        let mut events = vec![event(1, 0, Probe::TakeEntry)];
        for i in 0..400 {
            events.push(event(2, 1 + 5 * i, Probe::TakeEntry));
            events.push(event(2, 2 + 5 * i, Probe::TakeReturn));
            events.push(event(2, 4 + 5 * i, Probe::DropEntry));
            events.push(event(2, 5 + 5 * i, Probe::DropReturn));
        }
        let found = implausible_waits(&events, 0, 2_000_000_000, 1_000_000_000, 100);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].tid, found[0].takes_by_others), (1, 400));
        // A long wait behind one holder that never lets go is real.
        let events = vec![
            event(2, 0, Probe::TakeEntry),
            event(2, 1, Probe::TakeReturn),
            event(1, 2, Probe::TakeEntry),
            event(2, 1900, Probe::DropEntry),
            event(1, 1901, Probe::TakeReturn),
        ];
        assert!(implausible_waits(&events, 0, 2_000_000_000, 1_000_000_000, 100).is_empty());
    }

    #[test]
    fn parses_trace_pipe_lines() {
        let line = "     python3-my-app-4242    [001] d..1.  7351.123456: take_return_1: (0x7f00 <- 0x7f11)";
        let event = parse_line(line).unwrap();
        assert_eq!(event.tid, 4242);
        assert_eq!(event.time_ns, 7_351_123_456_000);
        assert_eq!(event.probe, Probe::TakeReturn);
        assert!(parse_line("# tracer: nop").is_none());
    }

    #[test]
    fn parses_scheduler_and_new_task_lines() {
        let line =
            "  opt cgu.1-3317    [000] d..2.   642.893733: sched_switch: prev_comm=opt cgu.1 \
                    prev_pid=3317 prev_prio=120 prev_state=R+ ==> next_comm=sleep next_pid=3316 \
                    next_prio=120";
        assert_eq!(
            parse_sched_line(line),
            Some(SchedEvent::Switch {
                time_ns: 642_893_733_000,
                cpu: 0,
                prev: 3317,
                left: LeftCpu::Preempted,
                next: 3316
            })
        );
        let line = "  sleep-3316  [001] dN.6.   642.893943: sched_wakeup: comm=bash pid=3312 \
                    prio=120 target_cpu=000";
        assert_eq!(
            parse_sched_line(line),
            Some(SchedEvent::Wakeup {
                time_ns: 642_893_943_000,
                tid: 3312,
                cpu: 0
            })
        );
        // With record-tgid the process id sits before the CPU.
        let line = "  bash-559  (    559) [000] d..2.  2033.702365: sched_switch: prev_comm=bash \
                    prev_pid=559 prev_prio=120 prev_state=S ==> next_comm=x next_pid=534 \
                    next_prio=120";
        assert!(matches!(
            parse_sched_line(line),
            Some(SchedEvent::Switch {
                prev: 559,
                left: LeftCpu::Slept,
                ..
            })
        ));
        let thread = "  python3-100  [001] .....  10.000001: task_newtask: pid=101 comm=python3 \
                      clone_flags=3d0f00 oom_score_adj=0";
        assert_eq!(
            parse_new_task(thread),
            Some((10_000_001_000, 100, 101, true))
        );
        let process = "  python3-100  [001] .....  10.000002: task_newtask: pid=102 \
                       comm=python3 clone_flags=1200000 oom_score_adj=0";
        assert_eq!(
            parse_new_task(process),
            Some((10_000_002_000, 100, 102, false))
        );
        assert!(parse_sched_line("# tracer: nop").is_none());
    }

    #[test]
    fn the_process_figures_follow_every_thread() {
        let ev = |tid, t: u64, probe| Event {
            tid,
            time_ns: t,
            probe,
        };
        // Thread 1 holds 0-50 and drops; thread 2 waits 10-50 and holds 50-80; nobody holds
        // 80-100. Held 80%, contended 40% (10-50), one waiter on average over 40%.
        let events = [
            ev(1, 0, Probe::TakeReturn),
            ev(2, 10, Probe::TakeEntry),
            ev(1, 50, Probe::DropEntry),
            ev(2, 50, Probe::TakeReturn),
            ev(1, 50, Probe::DropReturn),
            ev(2, 80, Probe::DropEntry),
            ev(2, 80, Probe::DropReturn),
        ];
        let p = process_truth(&events, 0, 100);
        assert!((p.held - 0.8).abs() < 1e-9, "{p:?}");
        assert!((p.contended - 0.4).abs() < 1e-9, "{p:?}");
        assert!((p.mean_waiting - 0.4).abs() < 1e-9, "{p:?}");
        let roles = Roles::new(&events);
        assert_eq!(roles.at(2, 30), GilRole::Wait);
        assert_eq!(roles.at(2, 60), GilRole::Hold);
        assert_eq!(roles.at(3, 60), GilRole::Elsewhere);
    }

    #[test]
    fn a_thread_born_during_the_trace_was_nowhere_before() {
        let ev = |t: u64, probe| Event {
            tid: 9,
            time_ns: t,
            probe,
        };
        // Its first event is a release: before it, it held, unless it was born at 60.
        let events = [ev(70, Probe::DropEntry), ev(80, Probe::DropReturn)];
        let before = Roles::new(&events).truth(0, 100)[&9];
        assert!((before.hold - 0.7).abs() < 1e-9, "{before:?}");
        let births = HashMap::from([(9, 60)]);
        let born = Roles::with_births(&events, &births).truth(0, 100)[&9];
        assert!((born.hold - 0.1).abs() < 1e-9, "{born:?}");
        assert!((born.wait - 0.1).abs() < 1e-9, "{born:?}");
    }

    #[test]
    fn truth_splits_time_into_hold_and_wait() {
        let ev = |t: u64, probe| Event {
            tid: 1,
            time_ns: t,
            probe,
        };
        // Waits 0-10, holds 10-60, drops 60-70, is elsewhere 70-100.
        let events = [
            ev(0, Probe::TakeEntry),
            ev(10, Probe::TakeReturn),
            ev(60, Probe::DropEntry),
            ev(70, Probe::DropReturn),
        ];
        let t = truth(&events, 0, 100)[&1];
        assert!((t.hold - 0.5).abs() < 1e-9 && (t.wait - 0.2).abs() < 1e-9);
        // A window that starts while the thread holds counts the hold from the window start.
        let t = truth(&events, 20, 70)[&1];
        assert!((t.hold - 0.8).abs() < 1e-9 && (t.wait - 0.2).abs() < 1e-9);
    }

    #[test]
    fn nested_release_calls_count_as_one_wait() {
        let ev = |t: u64, probe| Event {
            tid: 1,
            time_ns: t,
            probe,
        };
        // drop_gil (10-40) calls drop_gil_impl (15-20), then waits on switch_cond until 40.
        let events = [
            ev(0, Probe::TakeReturn),
            ev(10, Probe::DropEntry),
            ev(15, Probe::DropEntry),
            ev(20, Probe::DropReturn),
            ev(40, Probe::DropReturn),
        ];
        let t = truth(&events, 0, 100)[&1];
        assert!((t.hold - 0.1).abs() < 1e-9, "{t:?}");
        assert!((t.wait - 0.3).abs() < 1e-9, "{t:?}");
    }
}
