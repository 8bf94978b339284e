//! The exact GIL reference: uprobes on `take_gil` (entry and return) and `drop_gil` (entry and
//! return) give every acquire and release. Used to measure gilscope's accuracy; it slows GIL
//! hand-offs a little, so it is a tool for test hosts, never part of a normal recording.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
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
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tracer {
    /// Place the probes and start collecting. Only hits from process `pid` are kept.
    pub fn start(sites: &ProbeSites, pid: i32) -> Result<Tracer, String> {
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
            reader: None,
        };
        // From here on, Drop cleans up whatever was made.
        if !instance.exists() {
            std::fs::create_dir(&instance).map_err(|e| format!("ftrace instance: {e}"))?;
        }
        write(&instance.join("trace_clock"), "mono")?;
        write(&instance.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        write(&instance.join("events").join(&group).join("enable"), "1")?;
        write(&instance.join("tracing_on"), "1")?;
        let mut tracer = tracer;
        let pipe = std::fs::File::open(instance.join("trace_pipe"))
            .map_err(|e| format!("trace_pipe: {e}"))?;
        let events = tracer.events.clone();
        let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
        tracer.reader = Some(std::thread::spawn(move || {
            let mut belongs: HashMap<i32, bool> = HashMap::new();
            for line in BufReader::with_capacity(1 << 20, pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("### STOP ###") {
                    break;
                }
                let Some(event) = parse_line(&line) else {
                    continue;
                };
                let ours = *belongs
                    .entry(event.tid)
                    .or_insert_with(|| task_dir.join(event.tid.to_string()).exists());
                if ours {
                    if let Ok(mut all) = events.lock() {
                        all.push(event);
                    }
                }
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

    /// Stop tracing and return every event, in time order.
    pub fn stop(mut self) -> Vec<Event> {
        // Stop the probes, then mark the end of the stream for the reader.
        let _ = write(
            &self
                .instance
                .join("events")
                .join(&self.group)
                .join("enable"),
            "0",
        );
        let _ = write(&self.instance.join("tracing_on"), "1");
        let _ = append(&self.instance.join("trace_marker"), "### STOP ###");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        events.sort_by_key(|e| e.time_ns);
        events
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
    let mut fields = head.split_whitespace().rev();
    let stamp = fields.next()?;
    let (secs, micros) = stamp.split_once('.')?;
    let time_ns = secs.parse::<u64>().ok()? * 1_000_000_000 + micros.parse::<u64>().ok()? * 1000;
    // The task is "comm-TID"; comm may itself contain '-' or spaces, the TID never does.
    let task = head.split(" [").next()?.trim_end();
    let tid = task.rsplit('-').next()?.parse().ok()?;
    Some(Event {
        tid,
        time_ns,
        probe,
    })
}

/// Each thread's exact hold and wait fractions over [start_ns, end_ns]: waiting while inside
/// any probed function (calls may nest: drop_gil -> drop_gil_impl), holding from take_gil's
/// return until the next release starts, elsewhere otherwise.
pub fn truth(events: &[Event], start_ns: u64, end_ns: u64) -> HashMap<i32, Truth> {
    #[derive(Clone, Copy)]
    struct Thread {
        depth: u32,
        holding: bool,
        since: u64,
    }
    impl Thread {
        fn state(&self) -> (bool, bool) {
            (self.depth == 0 && self.holding, self.depth > 0)
        }
    }
    let span = end_ns.saturating_sub(start_ns).max(1) as f64;
    let mut threads: HashMap<i32, Thread> = HashMap::new();
    let mut totals: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut add = |tid: i32, thread: &Thread, to: u64| {
        let (a, b) = (thread.since.max(start_ns), to.min(end_ns));
        let entry = totals.entry(tid).or_insert((0, 0));
        if b > a {
            match thread.state() {
                (true, _) => entry.0 += b - a,
                (_, true) => entry.1 += b - a,
                _ => {}
            }
        }
    };
    for event in events {
        let thread = threads.entry(event.tid).or_insert_with(|| {
            // Before a thread's first event, its state follows from that event. (A return
            // probe armed while the thread was already inside take_gil never fires, so start
            // tracing well before the window.)
            let (depth, holding) = match event.probe {
                Probe::TakeEntry => (0, false),
                Probe::TakeReturn | Probe::DropReturn => (1, false),
                Probe::DropEntry => (0, true),
            };
            Thread {
                depth,
                holding,
                since: 0,
            }
        });
        add(event.tid, thread, event.time_ns);
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
        thread.since = event.time_ns;
    }
    for (tid, thread) in &threads {
        add(*tid, thread, end_ns);
    }
    totals
        .into_iter()
        .map(|(tid, (hold, wait))| {
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
