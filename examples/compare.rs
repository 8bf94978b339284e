//! Developer tool: record a command with gilscope while uprobes trace the exact GIL activity,
//! print both side by side, and optionally dump the raw ticks and events for analysis.
//!
//! cargo run --release --example compare -- [--dump DIR] [--debug-file F] -- python fixture.py

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gilscope::dev::reference;
use gilscope::recorder::{RecordOptions, Recorder, Source};
use gilscope::sample::ThreadState;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .expect("usage: compare [opts] -- cmd");
    let (opts, command) = (&args[..split], args[split + 1..].to_vec());
    let opt = |name: &str| {
        opts.iter()
            .position(|a| a == name)
            .and_then(|i| opts.get(i + 1))
            .cloned()
    };
    let dump = opt("--dump").map(PathBuf::from);
    let debug_file = opt("--debug-file").map(PathBuf::from);
    let secs: f64 = opt("--duration").map(|d| d.parse().unwrap()).unwrap_or(5.0);
    let stop = AtomicBool::new(false);
    let mut recorder = Recorder::open(&Source::Command(command), false, &stop).expect("spawn");
    let pid = recorder.root;
    let target = recorder.target().expect("a Python process");
    std::thread::sleep(Duration::from_millis(500));
    let binary = PathBuf::from(format!("/proc/{pid}/root{}", target.binary));
    let sites = reference::probe_sites(&binary, debug_file.as_deref()).expect("probe sites");
    let tracer = reference::Tracer::start(&sites, pid).expect("tracer");
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", pid))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let unknown = tracer.wait_until_known(&tids, Duration::from_secs(5));
    eprintln!("threads with unknown state at window start: {unknown:?}");
    let mut ticks = Vec::new();
    let options = RecordOptions {
        rate_hz: 1000.0,
        duration: Some(Duration::from_secs_f64(secs)),
        stacks: true,
        timeline: false,
        progress: None,
    };
    let mut observations = Vec::new();
    let mut sink = |_: i32, o: &gilscope::sample::observe::Observation| {
        if dump.is_some() {
            ticks.push(serde_json::to_string(o).unwrap());
            observations.push(o.clone());
        }
    };
    let (recording, _) = recorder
        .run(&options, &stop, Some(&mut sink), None)
        .pop()
        .expect("a recording");
    let events = tracer.stop();
    drop(recorder);
    let p = &recording.profile;
    let truth = reference::truth(&events, p.start_ns.unwrap(), p.end_ns);
    println!("{} events; {} samples", events.len(), p.samples);
    println!(
        "{:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "tid", "hold", "ref", "wait", "ref", "run", "idle"
    );
    for t in p.threads() {
        let r = truth.get(&t.tid).copied().unwrap_or_default();
        println!(
            "{:>8} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1}  {}",
            t.tid,
            100.0 * t.fraction(ThreadState::Hold),
            100.0 * r.hold,
            100.0 * t.fraction(ThreadState::Wait),
            100.0 * r.wait,
            100.0 * t.fraction(ThreadState::Running),
            100.0 * t.fraction(ThreadState::Idle),
            t.name()
        );
    }
    if let Some(dir) = dump {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ticks.jsonl"), ticks.join("\n")).unwrap();
        // The classifier's verdict on each tick, to set beside the reference.
        let mut classifier = gilscope::sample::classify::Classifier::new();
        let mut samples: Vec<_> = observations
            .iter()
            .flat_map(|o| classifier.push(o))
            .collect();
        samples.extend(classifier.finish());
        let mut f = std::fs::File::create(dir.join("states.txt")).unwrap();
        for s in &samples {
            for t in &s.threads {
                writeln!(f, "{} {} {:?}", t.tid, s.time_ns, t.state).unwrap();
            }
        }
        let mut f = std::fs::File::create(dir.join("events.txt")).unwrap();
        for e in &events {
            writeln!(f, "{} {} {:?}", e.tid, e.time_ns, e.probe).unwrap();
        }
    }
}
