//! Accuracy against the exact reference: every fixture under every interpreter, recorded by
//! gilscope at default settings while uprobes on take_gil/drop_gil time every acquire and
//! release over the same window. Required: mean absolute error <= 2 points for hold and for
//! wait, and no thread off by more than 5 (native_short, a documented weak spot beyond the
//! issue's fixtures, has its own measured envelope). The same in containers (own PID, and user,
//! namespaces) seen from the host; with privileges missing, within their measured envelope.
//! Skipped, with the reason, where uprobes or the
//! interpreter's symbols are missing. Figures go to target/tmp/accuracy-results.jsonl.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use common::{Container, Fixture, Privileges, Python};
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
/// Without a privilege gilscope falls back to a coarser method (docs/ACCURACY.md, "Least
/// privilege"): its envelope is the measured one, as native_short's. Over 21 trials of
/// native_release on seven interpreters on a 2-CPU machine saturated by other work, the
/// largest errors were a mean of 3.4 points and a thread off by 8.2 (no real-time
/// priority), 2.5 and 6.9 (no perf clocks); the same runs with every privilege stayed under
/// 1.8 and 4.1. A mismatch of threads (the failure the containers had) misses by tens.
const DEGRADED_MEAN_ERROR: f64 = 0.04;
const DEGRADED_THREAD_ERROR: f64 = 0.10;
const WINDOW_S: f64 = 5.0;
/// The fixture a containerised target runs on every interpreter: holds, waits and native
/// work without the GIL, so that every state depends on matching the right thread.
const CONTAINED_FIXTURE: &str = "native_release";
/// Degraded privileges are measured on one interpreter per layout family (their reading of
/// the target does not change, their timing does) with this fixture, the one whose
/// runnable threads the missing clocks and priority make hardest; `GILSCOPE_DEGRADED=all`
/// runs every fixture (how docs/ACCURACY.md's lines were measured).
const DEGRADED_FIXTURE: &str = "native_release";
const FAMILIES: [&str; 7] = ["3.6", "3.7", "3.8", "3.9", "3.11", "3.12", "3.13"];
const DEGRADED: [Privileges; 2] = [Privileges::SysPtraceOnly, Privileges::NoPerfEvents];

/// How the target runs and how gilscope may look at it.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// A free-threaded build with its GIL turned on.
    gil_on: bool,
    container: Option<Container>,
    privileges: Privileges,
}

const PLAIN: Setup = Setup {
    gil_on: false,
    container: None,
    privileges: Privileges::Full,
};

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
    let gil_on = Setup {
        gil_on: true,
        ..PLAIN
    };
    for fixture in FIXTURES {
        trials.extend(setup_trials(&pythons, fixture, PLAIN, ""));
        trials.extend(setup_trials(
            &free_threaded,
            fixture,
            gil_on,
            "_with_the_gil_on",
        ));
    }
    for container in Container::ALL {
        let setup = Setup {
            container: Some(container),
            ..PLAIN
        };
        let suffix = format!("_in_its_own_{}", container.label());
        trials.extend(setup_trials(&pythons, CONTAINED_FIXTURE, setup, &suffix));
    }
    let every_fixture = std::env::var("GILSCOPE_DEGRADED").is_ok_and(|v| v == "all");
    let representatives = common::Pythons {
        found: pythons
            .found
            .iter()
            .filter(|p| {
                FAMILIES
                    .iter()
                    .any(|f| p.version.starts_with(&format!("{f}.")))
            })
            .cloned()
            .collect(),
        missing: pythons
            .missing
            .iter()
            .filter(|(label, _)| FAMILIES.iter().any(|f| label.ends_with(f)))
            .cloned()
            .collect(),
    };
    for privileges in DEGRADED {
        let setup = Setup {
            privileges,
            ..PLAIN
        };
        let suffix = format!("_{}", privileges.label());
        for fixture in FIXTURES {
            if every_fixture || fixture == DEGRADED_FIXTURE {
                trials.extend(setup_trials(&representatives, fixture, setup, &suffix));
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// A trial of `fixture` under `setup` per interpreter of `pythons`, named
/// `{fixture}_matches_the_uprobe_reference{suffix}::{label}`.
fn setup_trials(
    pythons: &common::Pythons,
    fixture: &'static str,
    setup: Setup,
    suffix: &str,
) -> Vec<Trial> {
    let name = |label: &str| format!("{fixture}_matches_the_uprobe_reference{suffix}::{label}");
    let mut trials = Vec::new();
    for python in &pythons.found {
        let python = python.clone();
        trials.push(Trial::ignorable_test(name(&python.label), move || {
            accuracy(&python, fixture, setup)
        }));
    }
    for (label, why) in &pythons.missing {
        let why = why.clone();
        trials.push(Trial::ignorable_test(name(label), move || {
            Ok(Completion::ignored_with(why))
        }));
    }
    trials
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
fn accuracy(python: &Python, fixture: &str, setup: Setup) -> Result<Completion, Failed> {
    if setup.container.is_some() {
        if let Some(why) = Container::unavailable() {
            return Ok(Completion::ignored_with(why));
        }
    }
    common::unless_host_steals(|| attempt(python, fixture, setup))
}

fn attempt(python: &Python, fixture: &str, setup: Setup) -> Result<common::Attempt, Failed> {
    if let Err(why) = reference::available() {
        return Ok(common::Attempt::Done(Completion::ignored_with(format!(
            "uprobe reference unavailable: {why}"
        ))));
    }
    let _exclusive = common::exclusive();
    let fx = if let Some(container) = setup.container {
        Fixture::start_contained(&python.path, fixture, &["--duration", "120"], container)?
    } else if setup.gil_on {
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
    let report = common::record_json_with(fx.pid, WINDOW_S, setup.privileges)?;
    if setup.container.is_some() {
        names_and_stacks(&report, &fx)?;
    }
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
        &format!("{fixture}{}", setup_label(&setup)),
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
        _ if setup.privileges != Privileges::Full => (DEGRADED_MEAN_ERROR, DEGRADED_THREAD_ERROR),
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

/// What a result line's fixture name gets for its setup: "" for the plain one.
fn setup_label(setup: &Setup) -> String {
    let mut label = String::new();
    if setup.gil_on {
        label.push_str(" gil-on");
    }
    if let Some(container) = setup.container {
        label.push_str(&format!(" {}", container.label()));
    }
    if setup.privileges != Privileges::Full {
        label.push_str(&format!(" {}", setup.privileges.label()));
    }
    label
}

/// In a container every thread must be the fixture's own: its Python name, its id inside
/// beside the host's, and for threads that held the GIL, the Python code they held it in.
fn names_and_stacks(report: &serde_json::Value, fx: &Fixture) -> Result<(), Failed> {
    for (role, &tid) in &fx.threads {
        let row = common::thread_row(report, tid).ok_or(format!("no {role} ({tid})"))?;
        let name = if role == "main" { "MainThread" } else { role };
        let own = fx.ns_threads.get(role).map(|&t| t as i64);
        if row["name"] != name || row["ns_tid"].as_i64() != own {
            return Err(format!("{role} ({tid}, {own:?} inside): {row}").into());
        }
        let held = common::fraction(row, "hold") > 0.05;
        if held
            && row["top_hold"][0]["function"]
                .as_str()
                .is_none_or(str::is_empty)
        {
            return Err(format!("{role} held the GIL with no Python stack: {row}").into());
        }
    }
    Ok(())
}
