//! GIL latency against the exact reference: each thread's waits for the GIL as gilscope
//! measures them (JSON `threads[].gil_latency`) against every `take_gil` entry to its return
//! (uprobes, src/dev/reference.rs), for waits of 2 ms and more, on io_pingpong (the convoy:
//! the I/O thread waits for the CPU thread's switch interval after each wake-up) and
//! native_short, under every interpreter. Required: p50 and p90 within 10% or one sampling
//! interval, whichever is larger. Skipped, with the reason, where uprobes or symbols are
//! missing. Kept apart from tests/accuracy.rs (shares), using the same harness.
//!
//! Known gap, so these trials run only with `--ignored`: a thread that gets the GIL for a
//! few microseconds between two take_gil stays (the I/O threads' send after recv) is seen
//! waiting at every sample, so gilscope's episode spans both stays; measured on 3.12 the
//! p50 is 8.4 ms against the reference's 5.1 ms per stay. Joining stays separated by less
//! than one sampling interval overshoots the other way (6.4 against 7.7 ms). Set
//! `GILSCOPE_LATENCY_JOIN=1` to compare with joined stays. Measured again on 3.12 beside
//! other builds (load 10 on 2 cores): io_pingpong p50 9.1 against 6.2 ms, p90 25.8 against
//! 9.7 ms; native_short (zlib-64k) p50 10.8 against 9.5 ms, p90 25.8 against 15.8 ms.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use common::{Fixture, Python};
use gilscope::dev::reference::{self, Probe};
use gilscope::python::interpreter::Interpreter;
use gilscope::target::memory::ProcessMemory;

const FIXTURES: [&str; 2] = ["io_pingpong", "native_short"];
const WINDOW_S: f64 = 5.0;
/// Waits shorter than this are not compared: a wait of a sample or two may be missed or
/// doubled by sampling, which the bound leaves out.
const MIN_WAIT_S: f64 = 0.002;
/// Fewer reference waits than this in a thread say too little about its quantiles.
const MIN_WAITS: usize = 20;
const RELATIVE: f64 = 0.10;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let pythons = common::pythons();
    let mut trials = Vec::new();
    for fixture in FIXTURES {
        for python in &pythons.found {
            let python = python.clone();
            trials.push(
                Trial::ignorable_test(
                    format!(
                        "{fixture}_wait_quantiles_match_the_uprobe_reference::{}",
                        python.label
                    ),
                    move || common::unless_host_steals(|| attempt(&python, fixture)),
                )
                // The known gap above: run with `--ignored` until episodes split at the holds
                // sampling cannot see.
                .with_ignored_flag(true),
            );
        }
        for (label, why) in &pythons.missing {
            let why = why.clone();
            trials.push(Trial::ignorable_test(
                format!("{fixture}_wait_quantiles_match_the_uprobe_reference::{label}"),
                move || Ok(Completion::ignored_with(why)),
            ));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn interpreter_binary(pid: i32) -> Result<PathBuf, Failed> {
    let memory = ProcessMemory::new(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Interpreter::attach(pid, &memory) {
            Ok(interpreter) => {
                return Ok(PathBuf::from(format!(
                    "/proc/{pid}/root{}",
                    interpreter.description().binary
                )))
            }
            Err(e) if Instant::now() > deadline => return Err(format!("attach: {e}").into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every thread's waits by the reference, wholly inside the window, in seconds: each
/// take_gil stay (entry to return), joined with the next where the thread got the GIL for
/// less than `join_ns` in between (the holds no sample can see: a thread that gets the GIL,
/// runs a few microseconds and asks again has, sample by sample, waited throughout). With
/// `join_ns` 0, each take_gil stay on its own.
fn reference_waits(
    events: &[reference::Event],
    start: u64,
    end: u64,
    join_ns: u64,
) -> HashMap<i32, Vec<f64>> {
    // Per thread: the wait under way (its start), or the last one's (start, end) while a
    // next stay may still join it.
    let mut entered: HashMap<i32, u64> = HashMap::new();
    let mut ended: HashMap<i32, (u64, u64)> = HashMap::new();
    let mut waits: HashMap<i32, Vec<f64>> = HashMap::new();
    let mut close = |tid: i32, (since, until): (u64, u64)| {
        if since >= start && until <= end {
            waits
                .entry(tid)
                .or_default()
                .push((until - since) as f64 / 1e9);
        }
    };
    for event in events {
        match event.probe {
            Probe::TakeEntry => {
                if entered.contains_key(&event.tid) {
                    continue;
                }
                let since = match ended.remove(&event.tid) {
                    Some((since, until)) if event.time_ns.saturating_sub(until) < join_ns => since,
                    Some(last) => {
                        close(event.tid, last);
                        event.time_ns
                    }
                    None => event.time_ns,
                };
                entered.insert(event.tid, since);
            }
            Probe::TakeReturn => {
                if let Some(since) = entered.remove(&event.tid) {
                    ended.insert(event.tid, (since, event.time_ns));
                }
            }
            _ => {}
        }
    }
    for (tid, last) in ended {
        close(tid, last);
    }
    waits
}

/// The `q` quantile by nearest rank of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The `q` quantile of the report's buckets from `MIN_WAIT_S` on, each bucket's waits at
/// its geometric middle (2 ms is a bucket edge).
fn bucket_quantile(buckets: &[(f64, f64, u64)], q: f64) -> Option<f64> {
    let kept: Vec<&(f64, f64, u64)> = buckets
        .iter()
        .filter(|b| b.0 >= MIN_WAIT_S - 1e-9)
        .collect();
    let total: u64 = kept.iter().map(|b| b.2).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (start, end, n) in kept {
        seen += n;
        if seen >= rank {
            return Some((start * end).sqrt());
        }
    }
    None
}

fn attempt(python: &Python, fixture: &str) -> Result<common::Attempt, Failed> {
    if let Err(why) = reference::available() {
        return Ok(common::Attempt::Done(Completion::ignored_with(format!(
            "uprobe reference unavailable: {why}"
        ))));
    }
    let _exclusive = common::exclusive();
    let fx = Fixture::start(&python.path, fixture, &["--duration", "120"])?;
    let binary = interpreter_binary(fx.pid)?;
    let sites = match reference::probe_sites(&binary, python.debug_file.as_deref()) {
        Ok(sites) => sites,
        Err(why) => {
            return Ok(common::Attempt::Done(Completion::ignored_with(format!(
                "no uprobe reference for {}: {why}",
                python.label
            ))))
        }
    };
    let tracer = reference::Tracer::start(&sites, fx.pid)?;
    let tids: Vec<i32> = fx.threads.values().copied().collect();
    tracer.wait_until_known(&tids, Duration::from_secs(10));
    let report = common::record_json(fx.pid, WINDOW_S)?;
    let steal = report["sampler"]["host_steal"].as_f64();
    let events = tracer.stop();
    let start = report["window"]["start_monotonic_ns"]
        .as_u64()
        .ok_or("no window")?;
    let end = report["window"]["end_monotonic_ns"]
        .as_u64()
        .ok_or("no window")?;
    let tick_s = report["duration_s"].as_f64().unwrap_or(0.0)
        / (report["samples"].as_f64().unwrap_or(1.0) - 1.0).max(1.0);
    let join_ns = match std::env::var_os("GILSCOPE_LATENCY_JOIN") {
        Some(_) => (tick_s * 1e9) as u64,
        None => 0,
    };
    let truth = reference_waits(&events, start, end, join_ns);
    let mut compared = Vec::new();
    let mut misses = Vec::new();
    for (role, &tid) in &fx.threads {
        let mut exact: Vec<f64> = truth
            .get(&tid)
            .map(|w| w.iter().copied().filter(|&s| s >= MIN_WAIT_S).collect())
            .unwrap_or_default();
        if exact.len() < MIN_WAITS {
            continue;
        }
        exact.sort_by(f64::total_cmp);
        let row = common::thread_row(&report, tid)
            .ok_or_else(|| format!("thread {role} ({tid}) missing from the report"))?;
        let buckets: Vec<(f64, f64, u64)> = row["gil_latency"]["buckets"]
            .as_array()
            .ok_or_else(|| format!("{role}: no gil_latency buckets"))?
            .iter()
            .map(|b| {
                (
                    b["start_s"].as_f64().unwrap_or(0.0),
                    b["end_s"].as_f64().unwrap_or(0.0),
                    b["waits"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        for q in [0.5, 0.9] {
            let reference = quantile(&exact, q);
            let ours = bucket_quantile(&buckets, q);
            let allowed = (RELATIVE * reference).max(tick_s);
            let line = format!(
                "{role} ({tid}) p{:.0}: ours {} ms, reference {:.2} ms over {} waits (allowed \
                 +-{:.2} ms)",
                q * 100.0,
                ours.map_or("none".into(), |o| format!("{:.2}", o * 1e3)),
                reference * 1e3,
                exact.len(),
                allowed * 1e3
            );
            match ours {
                Some(ours) if (ours - reference).abs() <= allowed => compared.push(line),
                _ => misses.push(line),
            }
        }
    }
    eprintln!(
        "{fixture} on {}:\n  {}",
        python.label,
        compared.join("\n  ")
    );
    if !misses.is_empty() {
        return Ok(common::Attempt::Missed {
            message: format!(
                "{fixture} on {}: wait quantiles off the reference:\n  {}",
                python.label,
                misses.join("\n  ")
            ),
            steal,
        });
    }
    if compared.is_empty() {
        return Ok(common::Attempt::Done(Completion::ignored_with(format!(
            "no thread of {fixture} waited {MIN_WAITS} times for 2 ms or more on {}",
            python.label
        ))));
    }
    Ok(common::Attempt::Done(Completion::Completed))
}
