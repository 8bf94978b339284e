//! GIL latency against the exact reference: each thread's waits for the GIL as gilscope
//! measures them (JSON `threads[].gil_latency`) against the uprobe reference
//! (src/dev/reference.rs), for waits of 2 ms and more, on io_pingpong (the convoy: the I/O
//! threads wait for the CPU thread's switch interval after each wake-up, and get the GIL for
//! microseconds between two waits) and native_short (short native calls between waits).
//! A reference wait is a take_gil stay (entry to return), from drop_gil's entry where the
//! thread was made to let go and asked straight back (it waits in drop_gil for the hand-over:
//! gilscope's waiting, as in the shares' reference). Required: p50 and p90 within 10% or one
//! sampling interval, whichever is larger (issue 24): the interval is the jittered schedule's
//! longest (1.5 mean intervals), as each end of an episode is within half the interval
//! around it, and the report's quantile is a bucket (eight per doubling), right if it holds
//! a value within the bound; or, where the waits are sparse, a bucket reaching between the
//! reference's quantiles at the ranks of the quantile's 95% distribution-free interval
//! (binomial order statistics), an interval either side: there a wait or two given to the
//! other of two threads that waited together moves a quantile by milliseconds. Skipped, with
//! the reason, where uprobes or symbols are missing (2.7 has no take_gil).
//!
//! The estimator is the same code on every version; what differs is what is read (the GIL's
//! switch counter, its holder): so these trials run on one interpreter per GIL layout (3.6's
//! globals, 3.10's runtime state, 3.12's per-interpreter GIL, 3.13's debug offsets),
//! io_pingpong on each and native_short on 3.12, to keep the suite short (issue 17);
//! `GILSCOPE_MATRIX=rest` runs the others, `all` both fixtures on every interpreter.
//!
//! Measured (docs/ACCURACY.md, "GIL latency"): a CPU-bound thread made to let go read short
//! at p90 on a loaded host until a waiter whose exact CPU clock stood still was known not to
//! have been served; an I/O thread's p90 read long until a thread seen in the GIL's code that
//! then ran was no longer kept in the GIL by the classifier.
//!
//! On a quiet host (load under 1, a fresh clone's suite, 2026-12-04) io_pingpong failed on
//! all four default interpreters until the waiters that woke between two waiting ticks were
//! split where another thread could have taken the GIL more than once: the I/O threads' p90
//! read 9.9-10.8 ms against the reference's 5.2, 17-22% of their waits (one switch interval
//! each) joined in pairs (src/model/profile.rs, `served_waiters`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use common::{Fixture, Python};
use gilscope::dev::reference;
use gilscope::python::interpreter::Interpreter;
use gilscope::target::memory::ProcessMemory;

const WINDOW_S: f64 = 5.0;
/// Waits shorter than this are not compared: a wait of a sample or two may be missed or
/// doubled by sampling, which the bound leaves out.
const MIN_WAIT_S: f64 = 0.002;
/// Fewer reference waits than this in a thread say too little about its quantiles.
const MIN_WAITS: usize = 20;
const RELATIVE: f64 = 0.10;
/// The longest sampling interval, in mean intervals (src/sample/schedule.rs: uniform in
/// [0.5, 1.5) periods).
const LONGEST_INTERVAL: f64 = 1.5;
/// Where each fixture runs by default (a minor version: "3.12"); see the module's comment.
const VERSIONS: [(&str, &[&str]); 2] = [
    ("io_pingpong", &["3.6", "3.10", "3.12", "3.13"]),
    ("native_short", &["3.12"]),
];

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let pythons = common::pythons();
    let mode = common::matrix_mode();
    let everything = mode == common::Matrix::All;
    let mut trials = Vec::new();
    for (fixture, versions) in VERSIONS {
        // The default part of the matrix takes `versions`, `rest` the others.
        let chosen = |version: &str| {
            let listed = versions
                .iter()
                .any(|v| version.starts_with(&format!("{v}.")));
            everything || listed == (mode == common::Matrix::Default)
        };
        for python in pythons.found.iter().filter(|p| chosen(&p.version)) {
            let python = python.clone();
            trials.push(Trial::ignorable_test(
                format!(
                    "{fixture}_wait_quantiles_match_the_uprobe_reference::{}",
                    python.label
                ),
                move || common::unless_host_steals(|| attempt(&python, fixture)),
            ));
        }
        for (label, why) in &pythons.missing {
            if !everything && !versions.iter().any(|v| label.contains(&format!("-{v}"))) {
                continue;
            }
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

/// The `q` quantile by nearest rank of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The bucket (start, end, in s) holding the `q` quantile of the report's buckets from
/// `MIN_WAIT_S` on (2 ms is a bucket edge): all the report can say of a quantile.
fn bucket_quantile(buckets: &[(f64, f64, u64)], q: f64) -> Option<(f64, f64)> {
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
    for &&(start, end, n) in &kept {
        seen += n;
        if seen >= rank {
            return Some((start, end));
        }
    }
    None
}

/// How far `s` lies outside the bucket [start, end) (0 inside).
fn outside(s: f64, (start, end): (f64, f64)) -> f64 {
    (start - s).max(s - end).max(0.0)
}

/// The start (s) of the report's bucket a wait of `s` seconds falls in: eight per doubling,
/// doublings on whole milliseconds (as src/model/profile.rs buckets them).
fn buckets_like(s: f64) -> f64 {
    let eighths = (8.0 * (s / 0.001).log2()).floor();
    0.001 * (eighths / 8.0).exp2()
}

/// "start: ours/reference" for every bucket from 2 ms on that either holds waits in.
fn merge_histograms(ours: &[(f64, f64, u64)], theirs: &[(f64, u64)]) -> String {
    let mut rows: Vec<(f64, u64, u64)> = Vec::new();
    for &(start, _, n) in ours.iter().filter(|b| b.0 >= MIN_WAIT_S - 1e-9) {
        rows.push((start, n, 0));
    }
    for &(start, n) in theirs {
        match rows.iter_mut().find(|r| (r.0 / start - 1.0).abs() < 1e-6) {
            Some(row) => row.2 += n,
            None => rows.push((start, 0, n)),
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows.iter()
        .map(|(start, a, b)| format!("{:.1}: {a}/{b}", start * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
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
    // Every thread's waits by the reference, in seconds (src/dev/reference.rs).
    let truth: HashMap<i32, Vec<f64>> = reference::wait_episodes(&events, start, end)
        .into_iter()
        .map(|(tid, waits)| {
            let secs = waits.iter().map(|&(a, b)| (b - a) as f64 / 1e9).collect();
            (tid, secs)
        })
        .collect();
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
        // Both distributions in the report's buckets, for a failure's message: where the
        // waits that moved went.
        let mut theirs: Vec<(f64, u64)> = Vec::new();
        for &w in &exact {
            let start = buckets_like(w);
            match theirs.last_mut() {
                Some((s, n)) if (*s - start).abs() < 1e-12 => *n += 1,
                _ => theirs.push((start, 1)),
            }
        }
        let histogram = format!(
            "{role} ({tid}) waits per bucket (ms: ours/reference): {}",
            merge_histograms(&buckets, &theirs)
        );
        for q in [0.5, 0.9] {
            let reference = quantile(&exact, q);
            let ours = bucket_quantile(&buckets, q);
            // One sampling interval: the jittered schedule (src/sample/schedule.rs) draws
            // each from half a period to one and a half, and each end of an episode is
            // within half of the interval around it.
            let allowed = (RELATIVE * reference).max(LONGEST_INTERVAL * tick_s);
            // The quantile's own uncertainty over this many waits: the reference's quantiles
            // at the ranks of a 95% distribution-free interval (binomial order statistics).
            // Where the waits are sparse (a tail), one or two waits attributed to the other
            // of two threads that waited together move the quantile by milliseconds.
            let spread = 1.96 * (q * (1.0 - q) / exact.len() as f64).sqrt();
            let (low, high) = (
                quantile(&exact, q - spread) - LONGEST_INTERVAL * tick_s,
                quantile(&exact, q + spread) + LONGEST_INTERVAL * tick_s,
            );
            let line = format!(
                "{role} ({tid}) p{:.0}: ours {} ms, reference {:.2} ms over {} waits (allowed \
                 +-{:.2} ms, or {:.2}-{:.2} ms)",
                q * 100.0,
                ours.map_or("none".into(), |(a, b)| format!(
                    "{:.2} (bucket {:.2}-{:.2})",
                    (a * b).sqrt() * 1e3,
                    a * 1e3,
                    b * 1e3
                )),
                reference * 1e3,
                exact.len(),
                allowed * 1e3,
                low * 1e3,
                high * 1e3
            );
            match ours {
                // The report gives the quantile as a bucket: right if the bucket holds a
                // value within the bound.
                Some(ours) if outside(reference, ours) <= allowed => compared.push(line),
                Some(ours) if ours.0 <= high && low < ours.1 => compared.push(line),
                _ => misses.push(line),
            }
        }
        if misses.last().is_some_and(|m| m.starts_with(role.as_str())) {
            misses.push(histogram);
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
