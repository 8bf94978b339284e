//! Accuracy against the exact reference: every fixture under every interpreter, recorded by
//! gilscope at default settings while uprobes on take_gil/drop_gil time every acquire and
//! release over the same window. Required: mean absolute error <= 2 points for hold and for
//! wait, and no thread off by more than 5 (native_short, a documented weak spot beyond the
//! issue's fixtures, has its own measured envelope). Skipped, with the reason, where uprobes or the
//! interpreter's symbols are missing. Figures go to target/tmp/accuracy-results.jsonl.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use common::{Fixture, Python};
use gilscope::dev::reference;
use gilscope::python::interpreter::Interpreter;
use gilscope::target::memory::ProcessMemory;

const FIXTURES: [&str; 6] = [
    "spinners",
    "gil_sleeper",
    "native_release",
    "io_pingpong",
    "regex_backtrack",
    "native_short",
];
/// The requirement, for the fixtures it names.
const MAX_MEAN_ERROR: f64 = 0.02;
const MAX_THREAD_ERROR: f64 = 0.05;
/// native_short is our own adversarial fixture: native calls shorter than a scheduler tick on
/// a saturated two-core machine, the classifier's documented weak spot (docs/ACCURACY.md).
/// There the state at tick instants itself differs from the time average by up to 2 points
/// (measured against random instants on the same trace, six standard deviations), largely
/// because uprobe traps delay the sampler's wake-up under preempt=none. Its envelope is the
/// measured one: mean error up to 2.8 and worst thread 5.4 points over some 60 runs. A broken
/// classifier misses by 5-13 points on it, so this still catches regressions.
const WEAK_SPOT_MEAN_ERROR: f64 = 0.035;
const WEAK_SPOT_THREAD_ERROR: f64 = 0.07;
const WINDOW_S: f64 = 5.0;

fn results_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("accuracy-results.jsonl")
}

fn main() {
    let mut args = Arguments::from_args();
    // These tests measure GIL time on a shared two-core machine: one at a time.
    args.test_threads = Some(1);
    let _ = std::fs::remove_file(results_path());
    let pythons = common::pythons();
    // A free-threaded build with its GIL turned on (`-X gil=1`) takes and drops it through
    // the same take_gil/drop_gil: the same reference holds.
    let free_threaded = common::free_threaded_pythons();
    let mut trials = Vec::new();
    for fixture in FIXTURES {
        for (pythons, gil_on, suffix) in [
            (&pythons, false, ""),
            (&free_threaded, true, "_with_the_gil_on"),
        ] {
            for python in &pythons.found {
                let python = python.clone();
                trials.push(Trial::ignorable_test(
                    format!(
                        "{fixture}_matches_the_uprobe_reference{suffix}::{}",
                        python.label
                    ),
                    move || accuracy(&python, fixture, gil_on),
                ));
            }
            for (label, why) in &pythons.missing {
                let why = why.clone();
                trials.push(Trial::ignorable_test(
                    format!("{fixture}_matches_the_uprobe_reference{suffix}::{label}"),
                    move || Ok(Completion::ignored_with(why)),
                ));
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// The interpreter binary of a running process, as uprobes must name it.
fn interpreter_binary(pid: i32) -> Result<PathBuf, Failed> {
    let memory = ProcessMemory::new(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Interpreter::attach(pid, &memory) {
            Ok(interpreter) => {
                return Ok(PathBuf::from(format!(
                    "/proc/{pid}/root{}",
                    interpreter.binary
                )))
            }
            Err(e) if Instant::now() > deadline => return Err(format!("attach: {e}").into()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

struct Row {
    role: String,
    hold: f64,
    ref_hold: f64,
    wait: f64,
    ref_wait: f64,
}

/// One trial, measured again when the hypervisor disturbed it (see `common::unless_host_steals`).
fn accuracy(python: &Python, fixture: &str, gil_on: bool) -> Result<Completion, Failed> {
    common::unless_host_steals(|| attempt(python, fixture, gil_on))
}

fn attempt(python: &Python, fixture: &str, gil_on: bool) -> Result<common::Attempt, Failed> {
    if let Err(why) = reference::available() {
        return Ok(common::Attempt::Done(Completion::ignored_with(format!(
            "uprobe reference unavailable: {why}"
        ))));
    }
    let _exclusive = common::exclusive();
    let fx = if gil_on {
        let script = common::fixture_path(fixture);
        let args = [
            "-X".as_ref(),
            "gil=1".as_ref(),
            script.as_os_str(),
            "--duration".as_ref(),
            "120".as_ref(),
        ];
        Fixture::start_command::<&std::ffi::OsStr>(&python.path, &args)?
    } else {
        Fixture::start(&python.path, fixture, &["--duration", "120"])?
    };
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
    let unknown = tracer.wait_until_known(&tids, Duration::from_secs(10));
    let report = common::record_json(fx.pid, WINDOW_S)?;
    let steal = report["sampler"]["host_steal"].as_f64();
    let events = tracer.stop();
    let start = report["window"]["start_monotonic_ns"]
        .as_u64()
        .ok_or("no window")?;
    let end = report["window"]["end_monotonic_ns"]
        .as_u64()
        .ok_or("no window")?;
    let truth = reference::truth(&events, start, end);
    // Two seconds in the GIL code through 200 hand-offs to others: a lost probe hit.
    let lost = reference::implausible_waits(&events, start, end, 2_000_000_000, 200);
    if let Some(wait) = lost.first() {
        let role = fx
            .threads
            .iter()
            .find(|(_, &tid)| tid == wait.tid)
            .map(|(role, _)| role.as_str())
            .unwrap_or("?");
        return Ok(common::Attempt::Invalid {
            message: format!(
                "the uprobe reference lost a probe hit: {role} ({}) stayed in take_gil/drop_gil \
                 {:.1} s while others took the GIL {} times",
                wait.tid,
                wait.ns as f64 / 1e9,
                wait.takes_by_others
            ),
        });
    }
    let mut rows = Vec::new();
    for (role, &tid) in &fx.threads {
        let ours = common::thread_row(&report, tid)
            .ok_or_else(|| format!("thread {role} ({tid}) missing from the report"))?;
        let exact = truth.get(&tid).copied().unwrap_or_default();
        rows.push(Row {
            role: role.clone(),
            hold: common::fraction(ours, "hold"),
            ref_hold: exact.hold,
            wait: common::fraction(ours, "wait"),
            ref_wait: exact.wait,
        });
    }
    let n = rows.len() as f64;
    let mae_hold = rows
        .iter()
        .map(|r| (r.hold - r.ref_hold).abs())
        .sum::<f64>()
        / n;
    let mae_wait = rows
        .iter()
        .map(|r| (r.wait - r.ref_wait).abs())
        .sum::<f64>()
        / n;
    let worst = rows
        .iter()
        .flat_map(|r| [(r.hold - r.ref_hold).abs(), (r.wait - r.ref_wait).abs()])
        .fold(0.0, f64::max);
    save_result(
        python,
        fixture,
        &rows,
        (mae_hold, mae_wait, worst),
        events.len(),
        steal,
    );
    let table: String = rows
        .iter()
        .map(|r| {
            format!(
                "  {:<12} hold {:5.1} (ref {:5.1})  wait {:5.1} (ref {:5.1})\n",
                r.role,
                100.0 * r.hold,
                100.0 * r.ref_hold,
                100.0 * r.wait,
                100.0 * r.ref_wait
            )
        })
        .collect();
    let (max_mean, max_thread) = match fixture {
        "native_short" => (WEAK_SPOT_MEAN_ERROR, WEAK_SPOT_THREAD_ERROR),
        _ => (MAX_MEAN_ERROR, MAX_THREAD_ERROR),
    };
    if mae_hold > max_mean || mae_wait > max_mean || worst > max_thread {
        let message = format!(
            "{fixture} on {}: mean error hold {:.2} / wait {:.2} points, worst thread {:.2} \
             (limits {:.1} and {:.1}); threads of unknown state at the start: {unknown:?}; \
             host steal during the window: {}\n{table}",
            python.label,
            100.0 * mae_hold,
            100.0 * mae_wait,
            100.0 * worst,
            100.0 * max_mean,
            100.0 * max_thread,
            steal
                .map(|s| format!("{:.1}% of CPU time", 100.0 * s))
                .unwrap_or_else(|| "unknown".into())
        );
        return Ok(common::Attempt::Missed { message, steal });
    }
    Ok(common::Attempt::Done(Completion::Completed))
}

fn save_result(
    python: &Python,
    fixture: &str,
    rows: &[Row],
    (mae_hold, mae_wait, worst): (f64, f64, f64),
    events: usize,
    steal: Option<f64>,
) {
    let threads: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"role": r.role, "hold": r.hold, "ref_hold": r.ref_hold,
                               "wait": r.wait, "ref_wait": r.ref_wait})
        })
        .collect();
    let line = serde_json::json!({
        "python": python.label, "fixture": fixture, "mae_hold": mae_hold,
        "mae_wait": mae_wait, "worst": worst, "events": events, "steal": steal,
        "threads": threads,
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(results_path())
    {
        let _ = writeln!(f, "{line}");
    }
}
