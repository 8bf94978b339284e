//! Developer tool: the instant-by-instant comparison of gilscope's ticks with the exact
//! reference (uprobes on take_gil/drop_gil) and the scheduler's own record (`sched_switch`,
//! `sched_wakeup`) of the same threads over the same window. It is how a misclassification is
//! found: for every tick at which gilscope's state differs from the reference's, it says what
//! the tick saw (held, asleep on the GIL, runnable...), which classifier rule decided, where
//! the scheduler had the thread (on a CPU, queued after a preemption or a wake-up, asleep), and
//! it tallies the mismatches by those causes. Needs root and tracefs; never used by gilscope.
//!
//! Usage (docs/ACCURACY.md, "Finding a misclassification"):
//!
//!   cargo run --release --features dev-tools --example compare -- [OPTIONS] --pid PID
//!   cargo run --release --features dev-tools --example compare -- [OPTIONS] -- python3 fixtures/spinners.py
//!
//! Options: `--duration S` (5), `--rate HZ` (1000), `--debug-file F` (symbols of a stripped
//! interpreter), `--list N` (mismatched ticks to print, 40), `--thread TID` (print only this
//! thread's ticks; repeatable), `--dump DIR` (the recording, replayable, and every tick of every
//! thread as TSV), `--replay DIR` (classify a dumped recording again: after changing the
//! classifier, no new recording is needed), `--without-mutexes` (classify as where the GIL's
//! mutexes cannot be read), `--without-reference` (record without the probes, to see what
//! they change), `--switch-sites` (record where runnable threads left their CPU, as `record
//! --switch-sites` does) and `--without-switch-sites` (classify as if that were unknown; it
//! also drops the releases the scheduler's clocks located, src/sample/handoff.rs: a replay with
//! it is the classifier without both).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gilscope::dev::reference::{self, Event, GilRole, LeftCpu, Probe, SchedEvent, Trace};
use gilscope::recorder::{RecordOptions, Recorder, Source};
use gilscope::sample::classify::{Classifier, Rule};
use gilscope::sample::observe::{Observation, ThreadObservation};
use gilscope::sample::{Sample, ThreadState};

struct Options {
    pid: Option<i32>,
    command: Vec<String>,
    secs: f64,
    rate: f64,
    debug_file: Option<PathBuf>,
    list: usize,
    threads: Vec<i32>,
    dump: Option<PathBuf>,
    replay: Option<PathBuf>,
    /// Record without the reference: to see how much its probes change what gilscope sees.
    without_reference: bool,
    /// Classify as if the GIL's mutexes could not be read (musl, 2.7): the rules from history
    /// alone, for comparison.
    without_mutexes: bool,
    /// Record with `--switch-sites` (where runnable threads left their CPU).
    switch_sites: bool,
    /// Classify as if those locations were unknown, for comparison on the same ticks.
    without_switch_sites: bool,
    /// Set each thread's wait episodes beside the reference's waits.
    latency: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: compare [--duration S] [--rate HZ] [--debug-file F] [--list N] [--thread TID] \
         [--dump DIR] [--switch-sites] [--without-switch-sites] [--latency] (--pid PID | --replay DIR | -- COMMAND...)"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        pid: None,
        command: Vec::new(),
        secs: 5.0,
        rate: 1000.0,
        debug_file: None,
        list: 40,
        threads: Vec::new(),
        dump: None,
        replay: None,
        without_reference: false,
        without_mutexes: false,
        switch_sites: false,
        without_switch_sites: false,
        latency: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--pid" => o.pid = Some(value().parse().unwrap_or_else(|_| usage())),
            "--duration" => o.secs = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => o.rate = value().parse().unwrap_or_else(|_| usage()),
            "--debug-file" => o.debug_file = Some(PathBuf::from(value())),
            "--list" => o.list = value().parse().unwrap_or_else(|_| usage()),
            "--thread" => o.threads.push(value().parse().unwrap_or_else(|_| usage())),
            "--dump" => o.dump = Some(PathBuf::from(value())),
            "--replay" => o.replay = Some(PathBuf::from(value())),
            "--without-reference" => o.without_reference = true,
            "--without-mutexes" => o.without_mutexes = true,
            "--switch-sites" => o.switch_sites = true,
            "--without-switch-sites" => o.without_switch_sites = true,
            "--latency" => o.latency = true,
            "--" => {
                o.command = args.by_ref().collect();
                break;
            }
            _ => usage(),
        }
    }
    let targets = o.pid.is_some() as usize + !o.command.is_empty() as usize;
    if targets + o.replay.is_some() as usize != 1 {
        usage();
    }
    o
}

/// Where the scheduler had a thread at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Place {
    OnCpu,
    /// Runnable, not on a CPU, since it was preempted.
    QueuedPreempted,
    /// Runnable, not on a CPU, since it was woken.
    QueuedWoken,
    Asleep,
    /// No scheduler event of it yet.
    Unknown,
}

/// Each thread's places in time order, from the scheduler's events.
struct Places {
    by_thread: HashMap<i32, Vec<(u64, Place)>>,
}

impl Places {
    fn new(events: &[SchedEvent]) -> Places {
        let mut by_thread: HashMap<i32, Vec<(u64, Place)>> = HashMap::new();
        let mut set = |tid: i32, time_ns: u64, place: Place| {
            let list = by_thread.entry(tid).or_default();
            if list.last().is_none_or(|&(_, last)| last != place) {
                list.push((time_ns, place));
            }
        };
        for event in events {
            match *event {
                SchedEvent::Switch {
                    time_ns,
                    prev,
                    left,
                    next,
                    ..
                } => {
                    let place = match left {
                        LeftCpu::Preempted => Place::QueuedPreempted,
                        LeftCpu::Slept => Place::Asleep,
                    };
                    set(prev, time_ns, place);
                    set(next, time_ns, Place::OnCpu);
                }
                SchedEvent::Wakeup { time_ns, tid, .. } => set(tid, time_ns, Place::QueuedWoken),
            }
        }
        Places { by_thread }
    }

    /// Where `tid` was at `time_ns`, and since when.
    fn at(&self, tid: i32, time_ns: u64) -> (Place, u64) {
        let Some(list) = self.by_thread.get(&tid) else {
            return (Place::Unknown, 0);
        };
        match list.partition_point(|&(from, _)| from <= time_ns) {
            0 => (Place::Unknown, 0),
            i => (list[i - 1].1, list[i - 1].0),
        }
    }
}

/// What a tick saw of a thread, in one word.
fn seen(t: &ThreadObservation) -> &'static str {
    if t.gil_futex {
        "gil-futex"
    } else if t.gil_requested == Some(true) {
        "requested"
    } else if t.holder {
        "holder"
    } else if t.runnable {
        "runnable"
    } else {
        "asleep"
    }
}

fn role_of(state: ThreadState) -> GilRole {
    match state {
        ThreadState::Hold => GilRole::Hold,
        ThreadState::Wait => GilRole::Wait,
        _ => GilRole::Elsewhere,
    }
}

fn short(role: GilRole) -> &'static str {
    match role {
        GilRole::Hold => "hold",
        GilRole::Wait => "wait",
        GilRole::Elsewhere => "else",
    }
}

/// CPU time (µs) a thread used between two ticks, where both readings are of one clock.
fn cpu_between(a: Option<&ThreadObservation>, b: Option<&ThreadObservation>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (a.cpu_exact == b.cpu_exact && a.thread_id == b.thread_id)
        .then(|| b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e3)
}

fn find(tick: Option<&Observation>, tid: i32) -> Option<&ThreadObservation> {
    let tick = tick?;
    let i = tick.threads.binary_search_by_key(&tid, |t| t.tid).ok()?;
    tick.threads.get(i)
}

/// One recording with its reference, live or read back from a `--dump` directory.
struct Run {
    observations: Vec<Observation>,
    trace: Trace,
    names: HashMap<i32, String>,
    start_ns: u64,
    end_ns: u64,
    /// The interpreter's waits can be seen (the classifier to replay them with).
    measures_wait: bool,
}

fn main() {
    let o = options();
    let run = match &o.replay {
        Some(dir) => load_run(dir),
        None => record_run(&o),
    };
    if let (Some(dir), None) = (&o.dump, &o.replay) {
        save_run(&run, dir);
    }
    analyze(&run, &o);
}

/// Record the target with gilscope's own sampler while the reference traces it.
fn record_run(o: &Options) -> Run {
    let stop = AtomicBool::new(false);
    let source = match o.pid {
        Some(pid) => Source::Pid(pid),
        None => Source::Command(o.command.clone()),
    };
    let mut recorder = Recorder::open(&source, false, &stop).expect("attach");
    if o.pid.is_none() {
        std::thread::sleep(Duration::from_millis(500));
    }
    let pid = recorder.root;
    let target = recorder.target().expect("a Python process");
    let binary = PathBuf::from(format!("/proc/{pid}/root{}", target.binary));
    let tracer = if o.without_reference {
        None
    } else {
        let sites = reference::probe_sites(&binary, o.debug_file.as_deref()).expect("probe sites");
        Some(reference::Tracer::start_with_scheduler(&sites, pid).expect("tracer"))
    };
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let unknown = tracer
        .as_ref()
        .map(|t| t.wait_until_known(&tids, Duration::from_secs(5)))
        .unwrap_or_default();
    if !unknown.is_empty() {
        eprintln!("threads not seen entering take_gil before the window: {unknown:?}");
    }
    let options = RecordOptions {
        rate_hz: o.rate,
        duration: Some(Duration::from_secs_f64(o.secs)),
        stacks: true,
        native: false,
        switch_sites: o.switch_sites,
        timeline: false,
        progress: None,
    };
    let mut observations: Vec<Observation> = Vec::new();
    let mut sink = |_: i32, tick: &Observation| observations.push(tick.clone());
    let (recording, _) = recorder
        .run(&options, &stop, Some(&mut sink), None)
        .pop()
        .expect("a recording");
    let trace = tracer.map(|t| t.stop_all()).unwrap_or_default();
    drop(recorder);
    let profile = &recording.profile;
    Run {
        observations,
        trace,
        names: profile
            .threads()
            .iter()
            .map(|t| (t.tid, t.name().to_string()))
            .collect(),
        start_ns: profile.start_ns.unwrap_or(0),
        end_ns: profile.end_ns,
        measures_wait: target.wait_measured,
    }
}

/// Write a run to `dir` for `--replay`: the ticks as `record --observations` writes them, the
/// reference's events as TSV.
fn save_run(run: &Run, dir: &Path) {
    std::fs::create_dir_all(dir).expect("dump directory");
    let mut f = std::fs::File::create(dir.join("observations.jsonl")).expect("observations");
    for tick in &run.observations {
        let _ = serde_json::to_writer(&mut f, tick);
        let _ = f.write_all(b"\n");
    }
    let about = serde_json::json!({
        "start_ns": run.start_ns, "end_ns": run.end_ns, "measures_wait": run.measures_wait,
        "names": run.names.iter().map(|(t, n)| (t.to_string(), n.clone())).collect::<HashMap<_, _>>(),
        "lost": run.trace.lost,
    });
    std::fs::write(dir.join("run.json"), about.to_string()).expect("run.json");
    let mut f = std::fs::File::create(dir.join("gil_events.tsv")).expect("gil_events.tsv");
    for e in &run.trace.events {
        let _ = writeln!(f, "{}\t{}\t{:?}", e.time_ns, e.tid, e.probe);
    }
    let mut f = std::fs::File::create(dir.join("sched_events.tsv")).expect("sched_events.tsv");
    for e in &run.trace.sched {
        let _ = match *e {
            SchedEvent::Switch {
                time_ns,
                cpu,
                prev,
                left,
                next,
            } => writeln!(f, "switch\t{time_ns}\t{cpu}\t{prev}\t{left:?}\t{next}"),
            SchedEvent::Wakeup { time_ns, tid, cpu } => {
                writeln!(f, "wakeup\t{time_ns}\t{cpu}\t{tid}")
            }
        };
    }
    let mut f = std::fs::File::create(dir.join("births.tsv")).expect("births.tsv");
    for (tid, at) in &run.trace.births {
        let _ = writeln!(f, "{tid}\t{at}");
    }
    eprintln!("wrote {}", dir.display());
}

fn load_run(dir: &Path) -> Run {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
    };
    let observations = read("observations.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut tick: Observation = serde_json::from_str(l).expect("observation");
            // The GIL's reading is not written whole: its fields (the switch counter that
            // splits wait episodes) are, so the replay sees what the recording saw.
            tick.gil = gilscope::python::interpreter::GilState {
                created: true,
                locked: tick.locked,
                holder: tick.holder,
                switch_number: tick.switch_number,
                interval_us: tick.interval_us,
                current: None,
                enabled: None,
            };
            tick
        })
        .collect();
    let about: serde_json::Value = serde_json::from_str(&read("run.json")).expect("run.json");
    let probe = |name: &str| match name {
        "TakeEntry" => Probe::TakeEntry,
        "TakeReturn" => Probe::TakeReturn,
        "DropEntry" => Probe::DropEntry,
        _ => Probe::DropReturn,
    };
    let events = read("gil_events.tsv")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some(Event {
                time_ns: f.first()?.parse().ok()?,
                tid: f.get(1)?.parse().ok()?,
                probe: probe(f.get(2)?),
            })
        })
        .collect();
    let sched = read("sched_events.tsv")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            Some(match *f.first()? {
                "switch" => SchedEvent::Switch {
                    time_ns: n(1)?,
                    cpu: n(2)? as u32,
                    prev: f.get(3)?.parse().ok()?,
                    left: if *f.get(4)? == "Preempted" {
                        LeftCpu::Preempted
                    } else {
                        LeftCpu::Slept
                    },
                    next: f.get(5)?.parse().ok()?,
                },
                _ => SchedEvent::Wakeup {
                    time_ns: n(1)?,
                    cpu: n(2)? as u32,
                    tid: f.get(3)?.parse().ok()?,
                },
            })
        })
        .collect();
    let births = read("births.tsv")
        .lines()
        .filter_map(|l| {
            let (tid, at) = l.split_once('\t')?;
            Some((tid.parse().ok()?, at.parse().ok()?))
        })
        .collect();
    Run {
        observations,
        trace: Trace {
            events,
            sched,
            lost: about["lost"].as_u64().unwrap_or(0),
            births,
        },
        names: about["names"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(t, n)| Some((t.parse().ok()?, n.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        start_ns: about["start_ns"].as_u64().unwrap_or(0),
        end_ns: about["end_ns"].as_u64().unwrap_or(0),
        measures_wait: about["measures_wait"].as_bool().unwrap_or(true),
    }
}

/// Classify the run's ticks again, with the rule behind every state, and set each beside the
/// reference.
fn analyze(run: &Run, o: &Options) {
    let (observations, trace) = (&run.observations, &run.trace);
    let (start, end) = (run.start_ns, run.end_ns);
    let name = |tid: i32| run.names.get(&tid).cloned().unwrap_or_else(|| "?".into());
    let mut classifier = if run.measures_wait {
        Classifier::new()
    } else {
        Classifier::without_wait()
    };
    let mut samples: Vec<(Sample, Vec<Rule>)> = Vec::new();
    for tick in observations {
        if o.without_mutexes || o.without_switch_sites {
            let mut tick = tick.clone();
            if o.without_mutexes {
                tick.unseen_in_gil.iter_mut().for_each(|u| *u = None);
                for t in &mut tick.threads {
                    (t.owns_gil_mutex, t.gil_in_its_name) = (false, false);
                }
            }
            if o.without_switch_sites {
                tick.threads.iter_mut().for_each(|t| t.switched_out = None);
            }
            samples.extend(classifier.push_explained(&tick));
        } else {
            samples.extend(classifier.push_explained(tick));
        }
    }
    samples.extend(classifier.finish_explained());
    let roles = trace.roles();
    let mut events_of: HashMap<i32, Vec<(u64, reference::Probe)>> = HashMap::new();
    for e in &trace.events {
        events_of
            .entry(e.tid)
            .or_default()
            .push((e.time_ns, e.probe));
    }
    let places = Places::new(&trace.sched);
    let by_time: HashMap<u64, usize> = observations
        .iter()
        .enumerate()
        .map(|(i, t)| (t.time_ns(), i))
        .collect();

    #[derive(Default)]
    struct Tally {
        ticks: u64,
        ours: [u64; 2],
        at_ticks: [u64; 2],
    }
    let mut tallies: BTreeMap<i32, Tally> = BTreeMap::new();
    let mut process = [[0u64; 3]; 2];
    let mut causes: BTreeMap<(String, String, &str, String, Place), u64> = BTreeMap::new();
    let mut listed = Vec::new();
    let mut dump_rows = Vec::new();
    for (sample, rules) in &samples {
        let i = by_time[&sample.time_ns];
        let tick = &observations[i];
        let (mut ours_held, mut ours_waiters) = (false, 0u64);
        let (mut ref_held, mut ref_waiters) = (false, 0u64);
        for (t, rule) in sample.threads.iter().zip(rules) {
            let ours = role_of(t.state);
            let truth = roles.at(t.tid, sample.time_ns);
            ours_held |= ours == GilRole::Hold;
            ours_waiters += (ours == GilRole::Wait) as u64;
            ref_held |= truth == GilRole::Hold;
            ref_waiters += (truth == GilRole::Wait) as u64;
            let tally = tallies.entry(t.tid).or_default();
            tally.ticks += 1;
            for (k, role) in [GilRole::Hold, GilRole::Wait].into_iter().enumerate() {
                tally.ours[k] += (ours == role) as u64;
                tally.at_ticks[k] += (truth == role) as u64;
            }
            let observed = find(Some(tick), t.tid).expect("observed thread");
            let before = cpu_between(
                i.checked_sub(1)
                    .and_then(|p| find(observations.get(p), t.tid)),
                Some(observed),
            );
            let after = cpu_between(Some(observed), find(observations.get(i + 1), t.tid));
            let (place, since) = places.at(t.tid, sample.time_ns);
            let gil = t.gil.map_or(0, |(g, _)| g as usize);
            let unseen = tick.unseen_in_gil.get(gil).copied().flatten();
            let runnable = tick
                .threads
                .iter()
                .filter(|o| o.runnable && !o.holder && o.thread_id.is_some())
                .count();
            let last_event = events_of
                .get(&t.tid)
                .and_then(|list| {
                    let i = list.partition_point(|&(at, _)| at <= sample.time_ns);
                    i.checked_sub(1).map(|i| list[i])
                })
                .map_or("-".to_string(), |(at, probe)| {
                    format!(
                        "{probe:?} {:.0} µs ago",
                        sample.time_ns.saturating_sub(at) as f64 / 1e3
                    )
                });
            let line = format!(
                "{:>12.3} ms {:>7} {:<14} ours {:<4} ref {:<4} saw {:<9} rule {:<22} sched {:?} {:.0} µs; cpu {} / {} µs; unseen {} of {} runnable; last {}",
                (sample.time_ns.saturating_sub(start)) as f64 / 1e6,
                t.tid,
                name(t.tid),
                short(ours),
                short(truth),
                seen(observed),
                format!("{rule:?}"),
                place,
                sample.time_ns.saturating_sub(since) as f64 / 1e3,
                before.map_or("-".into(), |c| format!("{c:.0}")),
                after.map_or("-".into(), |c| format!("{c:.0}")),
                unseen.map_or("?".into(), |u| u.to_string()),
                runnable,
                last_event,
            );
            if o.dump.is_some() {
                let previous = i
                    .checked_sub(1)
                    .and_then(|p| find(observations.get(p), t.tid));
                // The first later tick that does not see it runnable, and the CPU on the way.
                let next_seen = (i + 1..observations.len().min(i + 25))
                    .map_while(|j| find(observations.get(j), t.tid))
                    .find(|later| !later.runnable || later.holder || later.gil_futex)
                    .map_or("-\t-1".to_string(), |later| {
                        format!(
                            "{}\t{}",
                            seen(later),
                            cpu_between(Some(observed), Some(later)).unwrap_or(-1.0)
                        )
                    });
                let switches = i.checked_sub(1).map_or(0, |p| {
                    tick.switch_number
                        .wrapping_sub(observations[p].switch_number)
                });
                dump_rows.push(format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{:?}\t{:?}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    sample.time_ns,
                    t.tid,
                    name(t.tid),
                    short(ours),
                    short(truth),
                    seen(observed),
                    rule,
                    place,
                    sample.time_ns.saturating_sub(since),
                    before.map_or(-1.0, |c| c),
                    after.map_or(-1.0, |c| c),
                    previous.map_or("-", seen),
                    next_seen,
                    tick.locked as u8,
                    (tick.locked && Some(tick.holder) == observed.tstate) as u8,
                    switches,
                    unseen.map_or(-1, |u| u as i64),
                    runnable,
                    last_event,
                ));
            }
            if ours != truth {
                *causes
                    .entry((
                        short(ours).into(),
                        short(truth).into(),
                        seen(observed),
                        format!("{rule:?}"),
                        place,
                    ))
                    .or_default() += 1;
                if o.threads.is_empty() || o.threads.contains(&t.tid) {
                    listed.push(line);
                }
            }
        }
        process[0][0] += ours_held as u64;
        process[0][1] += (ours_waiters > 0) as u64;
        process[0][2] += ours_waiters;
        process[1][0] += ref_held as u64;
        process[1][1] += (ref_waiters > 0) as u64;
        process[1][2] += ref_waiters;
    }

    let ticks = samples.len().max(1) as f64;
    let window = roles.truth(start, end);
    println!(
        "{} ticks, {} GIL events, {} scheduler events ({} lost) over {:.2} s",
        samples.len(),
        trace.events.len(),
        trace.sched.len(),
        trace.lost,
        (end - start) as f64 / 1e9
    );
    println!(
        "\nThreads seen at every tick, in % (ref@ticks: the reference at the tick instants; ref: \
         over the window), then the others summed, in thread-seconds per second:"
    );
    println!(
        "{:>8} {:<16} {:>6} | {:>6} {:>8} {:>6} | {:>6} {:>8} {:>6}",
        "tid", "name", "ticks", "hold", "@ticks", "ref", "wait", "@ticks", "ref"
    );
    let whole = |tally: &Tally| tally.ticks as f64 >= 0.9 * ticks;
    let mut errors = Vec::new();
    let mut others = (0usize, [0u64; 2], [0u64; 2]);
    for (tid, tally) in &tallies {
        if !whole(tally) {
            others.0 += 1;
            for k in 0..2 {
                others.1[k] += tally.ours[k];
                others.2[k] += tally.at_ticks[k];
            }
            continue;
        }
        let n = tally.ticks.max(1) as f64;
        let w = window.get(tid).copied().unwrap_or_default();
        let (hold, wait) = (tally.ours[0] as f64 / n, tally.ours[1] as f64 / n);
        errors.push((hold - w.hold, wait - w.wait));
        println!(
            "{:>8} {:<16} {:>6} | {:>6.1} {:>8.1} {:>6.1} | {:>6.1} {:>8.1} {:>6.1}",
            tid,
            name(*tid),
            tally.ticks,
            100.0 * hold,
            100.0 * tally.at_ticks[0] as f64 / n,
            100.0 * w.hold,
            100.0 * wait,
            100.0 * tally.at_ticks[1] as f64 / n,
            100.0 * w.wait,
        );
    }
    // The reference's threads that gilscope never ticked, or ticked only part of the window.
    let mut others_ref = (0usize, 0.0, 0.0);
    for (tid, truth) in &window {
        if tallies.get(tid).is_none_or(|t| !whole(t)) {
            others_ref.0 += 1;
            others_ref.1 += truth.hold;
            others_ref.2 += truth.wait;
        }
    }
    let ended = (
        others.1[0] as f64 / ticks - others_ref.1,
        others.1[1] as f64 / ticks - others_ref.2,
    );
    println!(
        "{:>8} {:<16} {:>6} | {:>6.3} {:>8.3} {:>6.3} | {:>6.3} {:>8.3} {:>6.3}   ({} threads in the reference)",
        "-",
        format!("[{} others]", others.0),
        "",
        others.1[0] as f64 / ticks,
        others.2[0] as f64 / ticks,
        others_ref.1,
        others.1[1] as f64 / ticks,
        others.2[1] as f64 / ticks,
        others_ref.2,
        others_ref.0,
    );
    let p = roles.process_truth(start, end);
    println!("\nProcess: gilscope / reference at the ticks / reference over the window");
    println!(
        "  held        {:6.2}% {:6.2}% {:6.2}%",
        100.0 * process[0][0] as f64 / ticks,
        100.0 * process[1][0] as f64 / ticks,
        100.0 * p.held
    );
    println!(
        "  contended   {:6.2}% {:6.2}% {:6.2}%",
        100.0 * process[0][1] as f64 / ticks,
        100.0 * process[1][1] as f64 / ticks,
        100.0 * p.contended
    );
    println!(
        "  mean waiting {:6.3}  {:6.3}  {:6.3}",
        process[0][2] as f64 / ticks,
        process[1][2] as f64 / ticks,
        p.mean_waiting
    );
    let n = errors.len().max(1) as f64;
    let mean = |f: fn(&(f64, f64)) -> f64| errors.iter().map(|e| f(e).abs()).sum::<f64>() / n;
    let worst = errors
        .iter()
        .flat_map(|&(h, w)| [h.abs(), w.abs()])
        .fold(0.0, f64::max);
    println!(
        "\nSUMMARY mean error hold {:.2} wait {:.2} worst {:.2} points; process held {:+.2} contended {:+.2} points, mean waiting {:+.3}; others hold {:+.3} wait {:+.3} thread-s/s",
        100.0 * mean(|e| e.0),
        100.0 * mean(|e| e.1),
        100.0 * worst,
        100.0 * (process[0][0] as f64 / ticks - p.held),
        100.0 * (process[0][1] as f64 / ticks - p.contended),
        process[0][2] as f64 / ticks - p.mean_waiting,
        ended.0,
        ended.1,
    );
    let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
    for (_, rules) in &samples {
        for rule in rules {
            *by_rule.entry(format!("{rule:?}")).or_default() += 1;
        }
    }
    println!("\nThread-ticks by rule (per second of window):");
    for (rule, n) in &by_rule {
        println!(
            "  {rule:<16} {:8.1}",
            *n as f64 / ((end - start) as f64 / 1e9)
        );
    }
    let mismatched: u64 = causes.values().sum();
    println!(
        "\nMismatched thread-ticks: {mismatched}, by cause (ours, ref, what the tick saw, rule, scheduler):"
    );
    let mut sorted: Vec<_> = causes.iter().collect();
    sorted.sort_by_key(|(_, &n)| std::cmp::Reverse(n));
    for ((ours, truth, saw, rule, place), n) in sorted.iter().take(30) {
        println!("  {n:>6}  ours {ours:<4} ref {truth:<4} saw {saw:<9} rule {rule:<22} {place:?}");
    }
    println!("\nFirst mismatched ticks:");
    for line in listed.iter().take(o.list) {
        println!("  {line}");
    }
    if o.latency {
        latency(run, &samples, o);
    }
    if let Some(dir) = &o.dump {
        std::fs::create_dir_all(dir).expect("dump directory");
        let mut f = std::fs::File::create(dir.join("ticks.tsv")).expect("ticks.tsv");
        let _ = writeln!(
            f,
            "time_ns\ttid\tname\tours\tref\tsaw\trule\tsched\tsched_age_ns\tcpu_before_us\tcpu_after_us\tprev_saw\tnext_saw\tcpu_to_next_us\tgil_locked\tlast_holder\tswitches\tunseen\trunnable\tlast_event"
        );
        for row in &dump_rows {
            let _ = writeln!(f, "{row}");
        }
    }
}

/// The `q` quantile by nearest rank of sorted `values` (ms).
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

/// Each thread's wait episodes as gilscope's profile counts them, beside the reference's waits
/// (`reference::wait_episodes`): quantiles of those of 2 ms and more, and every reference wait
/// of 2 ms and more that no episode of ours matches within a tick at each end, with what we
/// made of it (split, joined with the next, ends moved).
fn latency(run: &Run, samples: &[(Sample, Vec<Rule>)], o: &Options) {
    const MIN_NS: u64 = 2_000_000;
    let (start, end) = (run.start_ns, run.end_ns);
    let name = |tid: i32| run.names.get(&tid).cloned().unwrap_or_else(|| "?".into());
    let mut profile = gilscope::model::profile::Profile::new();
    // Ours, per thread: (since, until) of each episode, until half-way to the tick that ended it.
    let mut ours: HashMap<i32, Vec<(u64, u64)>> = HashMap::new();
    let mut last_tick: Option<u64> = None;
    for (sample, _) in samples {
        let before: HashMap<i32, (u64, u64)> = profile
            .threads()
            .iter()
            .map(|t| (t.tid, (t.latency.episodes, t.latency.total_ns)))
            .collect();
        profile.add(sample, |_| String::new());
        let half_way = last_tick.map_or(sample.time_ns, |l| l + (sample.time_ns - l) / 2);
        for t in profile.threads() {
            let (n, total) = before.get(&t.tid).copied().unwrap_or((0, 0));
            if t.latency.episodes > n {
                let ns = t.latency.total_ns - total;
                ours.entry(t.tid)
                    .or_default()
                    .push((half_way.saturating_sub(ns), half_way));
            }
        }
        last_tick = Some(sample.time_ns);
    }
    let tick_ns = (end - start) / samples.len().max(2) as u64;
    let truth = reference::wait_episodes(&run.trace.events, start, end);
    println!("\nWait episodes of 2 ms and more (ms), ours / reference:");
    let mut tids: Vec<&i32> = truth.keys().collect();
    tids.sort();
    for &tid in tids {
        let exact: Vec<(u64, u64)> = truth[&tid].clone();
        let mine: Vec<(u64, u64)> = ours.get(&tid).cloned().unwrap_or_default();
        let long = |w: &[(u64, u64)]| {
            let mut v: Vec<u64> = w
                .iter()
                .map(|&(a, b)| b - a)
                .filter(|&l| l >= MIN_NS)
                .collect();
            v.sort();
            v
        };
        let (a, b) = (long(&mine), long(&exact));
        if b.len() < 5 {
            continue;
        }
        println!(
            "  {tid:>7} {:<12} count {}/{} p50 {:.2}/{:.2} p90 {:.2}/{:.2} p99 {:.2}/{:.2} (all waits {}/{})",
            name(tid),
            a.len(),
            b.len(),
            quantile_ms(&a, 0.5),
            quantile_ms(&b, 0.5),
            quantile_ms(&a, 0.9),
            quantile_ms(&b, 0.9),
            quantile_ms(&a, 0.99),
            quantile_ms(&b, 0.99),
            mine.len(),
            exact.len()
        );
        // Reference waits of 2 ms and more, and what we made of them.
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        // Ours minus the reference's, at each end of a wait matched by one episode (ns).
        let mut ends: Vec<(i64, i64)> = Vec::new();
        let mut listed = 0;
        for &(since, until) in exact.iter().filter(|&&(a, b)| b - a >= MIN_NS) {
            let over: Vec<(u64, u64)> = mine
                .iter()
                .copied()
                // Overlapping by more than a tick: the neighbours' ends are within a tick.
                .filter(|&(a, b)| b.min(until).saturating_sub(a.max(since)) > tick_ns)
                .collect();
            let kind = match over.as_slice() {
                [] => "missed",
                [(a, b)] if a.abs_diff(since) <= tick_ns && b.abs_diff(until) <= tick_ns => {
                    "matched"
                }
                [(a, b)] if *a + tick_ns < since || *b > until + tick_ns => "joined/longer",
                [_] => "shorter",
                _ => "split",
            };
            *kinds.entry(kind).or_default() += 1;
            if let [(a, b)] = over.as_slice() {
                ends.push((*a as i64 - since as i64, *b as i64 - until as i64));
            }
            if kind != "matched"
                && listed < o.list
                && (o.threads.is_empty() || o.threads.contains(&tid))
            {
                listed += 1;
                let at = |ns: u64| ns.saturating_sub(start) as f64 / 1e6;
                let spans: Vec<String> = over
                    .iter()
                    .map(|&(a, b)| format!("{:.3}-{:.3}", at(a), at(b)))
                    .collect();
                println!(
                    "      {kind:<13} ref {:.3}-{:.3} ({:.2} ms) ours {}",
                    at(since),
                    at(until),
                    (until - since) as f64 / 1e6,
                    spans.join(" ")
                );
            }
        }
        // Ours of 2 ms and more that match no reference wait of 2 ms and more.
        let mut extra = 0;
        for &(a, b) in mine.iter().filter(|&&(a, b)| b - a >= MIN_NS) {
            let over: Vec<(u64, u64)> = exact
                .iter()
                .copied()
                .filter(|&(s, u)| b.min(u).saturating_sub(a.max(s)) > tick_ns / 2)
                .collect();
            if over.iter().any(|&(s, u)| u - s >= MIN_NS) {
                continue;
            }
            extra += 1;
            if listed < o.list && (o.threads.is_empty() || o.threads.contains(&tid)) {
                listed += 1;
                let at = |ns: u64| ns.saturating_sub(start) as f64 / 1e6;
                let spans: Vec<String> = over
                    .iter()
                    .map(|&(s, u)| format!("{:.3}-{:.3}", at(s), at(u)))
                    .collect();
                println!(
                    "      extra         ours {:.3}-{:.3} ({:.2} ms) ref {}",
                    at(a),
                    at(b),
                    (b - a) as f64 / 1e6,
                    spans.join(" ")
                );
            }
        }
        println!("      {kinds:?}, extra {extra}");
        if !ends.is_empty() {
            let n = ends.len() as f64;
            let mean = |f: fn(&(i64, i64)) -> i64| ends.iter().map(f).sum::<i64>() as f64 / n / 1e3;
            let mut len: Vec<i64> = ends.iter().map(|e| e.1 - e.0).collect();
            len.sort();
            println!(
                "      one-to-one: start {:+.0} µs, end {:+.0} µs on average; length error p5 {:+.0} p50 {:+.0} p95 {:+.0} µs",
                mean(|e| e.0),
                mean(|e| e.1),
                len[len.len() / 20] as f64 / 1e3,
                len[len.len() / 2] as f64 / 1e3,
                len[len.len() * 19 / 20] as f64 / 1e3
            );
        }
    }
}
