//! `gilscope record` end to end: known answers on every interpreter (workload facts that hold
//! whatever the version), the report formats, output files, and how recordings end.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{
    fraction, gilscope_ok, matches_documented_schema, stderr_of, stdout_of, thread_row, Attempt,
    Fixture, Python,
};

/// Seconds recorded by the known-answer tests: 2,000 ticks at the default 1 kHz, so a share's
/// sampling error (one standard deviation at most 0.011) is far inside every known range.
const RECORD_S: f64 = 2.0;

fn main() {
    let pythons = common::pythons();
    let mut trials = Vec::new();
    // What is read from the interpreter (figures, stacks, names), table-driven: each known
    // answer on its part of the interpreter matrix. Thread names run on every interpreter in
    // the default suite (they read the most of each version); stacks in each state and the
    // dump on one interpreter per layout family (`common::matrix`); the fixtures' figures
    // take turns over the families (`common::matrix_in_turn`: each family checks half of
    // them, the other half in CI's second pass, which also runs the other interpreters).
    // Findings are drawn from the figures alone, whatever the version: one interpreter is
    // enough for them.
    let every = common::every(&pythons);
    let family = common::matrix(&pythons);
    let turn = [
        common::matrix_in_turn(&pythons, 2, 0),
        common::matrix_in_turn(&pythons, 2, 1),
    ];
    let one = common::cli_only(&pythons);
    let known: [(&str, KnownAnswer, &common::Pythons); 10] = [
        ("spinners_share_the_gil", spinners_share_the_gil, &turn[0]),
        (
            "a_thread_sleeping_in_c_with_the_gil_holds_it",
            sleeper_holds,
            &turn[1],
        ),
        ("native_code_runs_without_the_gil", native_runs, &turn[1]),
        ("an_io_thread_waits_after_each_wakeup", io_waits, &turn[0]),
        (
            "a_regex_holds_the_gil_while_the_ticker_waits",
            regex_holds,
            &turn[1],
        ),
        (
            "stacks_show_each_threads_code_in_its_state",
            stacks_in_states,
            &family,
        ),
        (
            "deep_and_non_ascii_stacks_survive_folded_output",
            stacks_folded,
            &turn[0],
        ),
        (
            "python_thread_names_match_threading_in_every_storage",
            thread_names,
            &every,
        ),
        (
            "dump_shows_the_holder_and_every_stack",
            dump_snapshot,
            &family,
        ),
        ("findings_follow_the_figures_and_only_them", findings, &one),
    ];
    for (name, test, on) in known {
        trials.extend(common::per_interpreter(on, name, move |python| {
            let _exclusive = common::exclusive();
            common::unless_host_steals(|| {
                LAST_STEAL.set(None);
                Ok(match test(python) {
                    Ok(()) => Attempt::Done(Completion::Completed),
                    Err(failed) => Attempt::Missed {
                        message: failed.message().unwrap_or("failed").to_string(),
                        steal: LAST_STEAL.get(),
                    },
                })
            })
        }));
    }
    let cli: [(&str, KnownAnswer); 17] = [
        (
            "chrome_traces_have_one_holder_at_a_time_and_spans_that_agree_with_samples",
            chrome_trace,
        ),
        (
            "timeline_svgs_draw_each_thread_and_escape_hostile_names",
            timeline_svg,
        ),
        ("flamegraphs_keep_non_ascii_names_and_states", flamegraph),
        ("speedscope_files_have_one_profile_per_thread", speedscope),
        ("blame_weights_the_holders_code_by_its_waiters", blame_view),
        ("gil_only_records_no_stacks", gil_only),
        (
            "switch_sites_say_whether_they_were_in_effect",
            switch_sites_status,
        ),
        (
            "a_holder_on_a_cpu_is_not_interrupted_for_its_cpu_clock",
            running_holder_clock,
        ),
        (
            "idle_threads_walked_late_still_get_a_stack_for_every_tick",
            late_walks,
        ),
        ("progress_shows_on_a_terminal_and_only_there", progress),
        ("text_report_has_a_header_and_a_row_per_thread", text_report),
        ("json_report_matches_the_documented_schema", json_schema),
        (
            "output_files_are_replaced_whole_in_the_format_of_their_extension",
            output_files,
        ),
        (
            "ctrl_c_ends_the_recording_and_still_writes_the_report",
            ctrl_c,
        ),
        ("a_target_that_exits_still_gets_its_report", target_exits),
        (
            "a_started_command_is_recorded_until_it_exits",
            spawned_command,
        ),
        ("a_python_still_starting_is_waited_for", slow_start),
    ];
    for (name, test) in cli {
        trials.push(common::on_cli_python(&pythons, name, move |python| {
            common::unless_host_steals(|| Ok(common::steal_measured(|| test(python))))
        }));
    }
    common::Suite::run_trials(trials);
}

thread_local! {
    /// The host steal measured by the last recording of this thread's trial: known answers
    /// hold on an undisturbed machine, so a miss in a stolen window is measured again.
    static LAST_STEAL: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
}

/// A test of one interpreter.
type KnownAnswer = fn(&Python) -> Result<(), Failed>;

/// Start a fixture, record it, and hand the report and fixture to `check`.
fn recorded(python: &Python, fixture: &str, extra: &[&str]) -> Result<(Fixture, Value), Failed> {
    let mut args = vec!["--duration", "60"];
    args.extend_from_slice(extra);
    let fx = Fixture::start(&python.path, fixture, &args)?;
    let report = common::record_json(fx.pid, RECORD_S)?;
    LAST_STEAL.set(common::report_steal(&report));
    check_report_invariants(&report, python)?;
    Ok((fx, report))
}

fn row<'a>(report: &'a Value, fx: &Fixture, role: &str) -> Result<&'a Value, Failed> {
    thread_row(report, fx.tid(role))
        .ok_or_else(|| format!("{role} ({}) is not in the report", fx.tid(role)).into())
}

fn expect(ok: bool, what: impl Into<String>, report: &Value) -> Result<(), Failed> {
    if ok {
        return Ok(());
    }
    let rows = common::thread_rows(report);
    Err(format!("{}\n  {}", what.into(), rows.join("\n  ")).into())
}

/// What every report must satisfy: the version it found is the interpreter's, fractions of
/// every thread add up to 1, and the process figures are fractions.
fn check_report_invariants(report: &Value, python: &Python) -> Result<(), Failed> {
    let version = report["target"]["python_version"].as_str().unwrap_or("");
    expect(
        version == python.version,
        format!(
            "detected Python {version}, the interpreter is {}",
            python.version
        ),
        report,
    )?;
    for t in report["threads"].as_array().ok_or("no threads")? {
        let sum: f64 = ["hold", "wait", "running", "idle"]
            .iter()
            .map(|s| fraction(t, s))
            .sum();
        expect(
            (sum - 1.0).abs() < 1e-9,
            format!("fractions sum to {sum}"),
            report,
        )?;
    }
    for key in ["held", "contended"] {
        let v = report["gil"][key].as_f64().unwrap_or(-1.0);
        expect((0.0..=1.0).contains(&v), format!("gil.{key} = {v}"), report)?;
    }
    Ok(())
}

/// Three pure-Python spinners: only one runs at a time, so together they hold the GIL nearly
/// all the time, each waits most of it, and none ever runs without the GIL.
fn spinners_share_the_gil(python: &Python) -> Result<(), Failed> {
    let (fx, report) = recorded(python, "spinners", &["--threads", "3"])?;
    let held = report["gil"]["held"].as_f64().unwrap_or(0.0);
    // Each forced switch leaves the GIL free until the waiter it woke gets a CPU: a moment
    // on a quiet host, more beside other work (0.936 held beside two CPU hogs, static 3.11).
    expect(held > 0.9, format!("GIL held {held}"), &report)?;
    let mean_waiting = report["gil"]["mean_waiting"].as_f64().unwrap_or(0.0);
    // Two of three spinners wait while one holds. The main thread waits too after each of its
    // wake-ups, for as long as the spinners keep the GIL from it (up to 14% of its time on
    // 3.14): that is counted in the mean, so the mean is the sum of every thread's waiting.
    let mut spinners_waiting = 0.0;
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        spinners_waiting += fraction(row(&report, &fx, role)?, "wait");
    }
    expect(
        (1.85..=2.1).contains(&spinners_waiting),
        format!("spinners waiting {spinners_waiting} on average"),
        &report,
    )?;
    let all_waiting: f64 = report["threads"]
        .as_array()
        .ok_or("no threads")?
        .iter()
        .map(|t| fraction(t, "wait"))
        .sum();
    expect(
        (mean_waiting - all_waiting).abs() < 0.02,
        format!("mean waiting {mean_waiting}, but the threads wait {all_waiting} in all"),
        &report,
    )?;
    let interval = report["gil"]["interval_s"].as_f64().unwrap_or(0.0);
    expect(
        (interval - 0.005).abs() < 1e-9,
        format!("interval {interval}"),
        &report,
    )?;
    let switches = report["gil"]["switches_per_s"].as_f64().unwrap_or(0.0);
    // Forced switches every 5 ms at most: 200/s; never none with three spinners. How many
    // there are is how often the waiters get a CPU to ask (43/s on a host loaded 17 deep,
    // over 100 quiet): a floor, not a rate.
    expect(
        (10.0..=260.0).contains(&switches),
        format!("{switches} switches/s"),
        &report,
    )?;
    let mut total_hold = 0.0;
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let t = row(&report, &fx, role)?;
        let (hold, wait) = (fraction(t, "hold"), fraction(t, "wait"));
        total_hold += hold;
        expect(
            hold + wait > 0.97,
            format!("{role} hold+wait {}", hold + wait),
            &report,
        )?;
        expect(
            (0.2..=0.47).contains(&hold),
            format!("{role} hold {hold}"),
            &report,
        )?;
    }
    // The spinners' holds are the GIL's held time, less the main thread's brief holds.
    expect(
        (total_hold - held).abs() < 0.03,
        format!("spinners hold {total_hold} but the GIL is held {held}"),
        &report,
    )?;
    let main = row(&report, &fx, "main")?;
    expect(
        fraction(main, "idle") > 0.8,
        "main thread mostly idle",
        &report,
    )
}

/// A known share of one state for one thread of a fixture: `role`'s `state` lies in
/// `range` (fractions of the recording).
struct Share {
    role: &'static str,
    state: &'static str,
    range: std::ops::RangeInclusive<f64>,
    why: &'static str,
}

/// Record `fixture` and hold each of its threads to its known shares.
fn shares(python: &Python, fixture: &str, known: &[Share]) -> Result<(Fixture, Value), Failed> {
    let (fx, report) = recorded(python, fixture, &[])?;
    for share in known {
        let got = fraction(row(&report, &fx, share.role)?, share.state);
        expect(
            share.range.contains(&got),
            format!(
                "{} {} {got}, expected {:?}: {}",
                share.role, share.state, share.range, share.why
            ),
            &report,
        )?;
    }
    Ok((fx, report))
}

/// ctypes.PyDLL calls keep the GIL: a thread in usleep through PyDLL is asleep to the OS and
/// still the GIL holder. A tool that trusts the scheduler calls it idle.
const SLEEPER: [Share; 3] = [
    Share {
        role: "sleeper",
        state: "hold",
        range: 0.3..=1.0,
        why: "asleep in C with the GIL",
    },
    Share {
        role: "sleeper",
        state: "idle",
        range: 0.0..=0.05,
        why: "asleep, yet holding: not idle",
    },
    Share {
        role: "spinner",
        state: "wait",
        range: 0.3..=1.0,
        why: "the spinner waits for the sleeper",
    },
];

fn sleeper_holds(python: &Python) -> Result<(), Failed> {
    shares(python, "gil_sleeper", &SLEEPER).map(|_| ())
}

/// zlib releases the GIL around its work, and so does hashlib where OpenSSL backs it: those
/// threads run in parallel with the spinner, which holds the GIL most of the time. Where
/// hashlib is the builtin `_sha256` (the fixture says so), sha256 holds the GIL instead.
fn native_runs(python: &Python) -> Result<(), Failed> {
    let (fx, report) = recorded(python, "native_release", &[])?;
    let zlib = fraction(row(&report, &fx, "zlib")?, "running");
    let sha = row(&report, &fx, "sha256")?;
    let spinner = fraction(row(&report, &fx, "spinner")?, "hold");
    if fx.facts["sha256_releases_gil"] == true {
        expect(zlib > 0.6, format!("zlib running {zlib}"), &report)?;
        // How long each hash runs against how long the thread then waits for the spinner to
        // give the GIL back varies with the machine: 0.27-0.41 on 3.7 here, matching the
        // uprobe reference each time. The known answer is that it runs a good share.
        let running = fraction(sha, "running");
        expect(running > 0.2, format!("sha256 running {running}"), &report)?;
        expect(spinner > 0.7, format!("spinner hold {spinner}"), &report)
    } else {
        // Two GIL-holding threads share it; zlib still runs whenever it has the CPU.
        let hold = fraction(sha, "hold");
        expect(hold > 0.4, format!("builtin sha256 hold {hold}"), &report)?;
        expect(
            fraction(sha, "running") < 0.05,
            "builtin sha256 never runs without the GIL",
            &report,
        )?;
        expect(zlib > 0.2, format!("zlib running {zlib}"), &report)
    }
}

/// The I/O thread sleeps in recv (idle), then must win the GIL back from the CPU thread
/// after every wake-up (wait): the convoy effect.
const IO: [Share; 2] = [
    Share {
        role: "io",
        state: "wait",
        range: 0.15..=1.0,
        why: "after each wake-up it waits for the GIL",
    },
    Share {
        role: "io",
        state: "idle",
        range: 0.05..=1.0,
        why: "it sleeps in recv between messages",
    },
];

fn io_waits(python: &Python) -> Result<(), Failed> {
    let (fx, report) = shares(python, "io_pingpong", &IO)?;
    // How long it sleeps in recv is the echo's pace (slower on a loaded host: 0.26 waiting
    // beside two CPU hogs, where it also queues for a CPU after each wake-up, 0.5 quiet);
    // whatever the pace, it waits for the GIL far longer than it holds it (microseconds).
    let io = row(&report, &fx, "io")?;
    let (wait, hold) = (fraction(io, "wait"), fraction(io, "hold"));
    expect(
        wait > 4.0 * hold,
        format!("io wait {wait}, hold {hold}: it should wait far longer than it holds"),
        &report,
    )?;
    // The I/O threads hold the GIL for microseconds at a time: when it is held, the CPU
    // thread holds it. (How much of the time it is held at all depends on how long
    // hand-offs take, which is the machine's load, not gilscope's.)
    let cpu = fraction(row(&report, &fx, "cpu")?, "hold");
    let held = report["gil"]["held"].as_f64().unwrap_or(0.0);
    let margin = 2.0 * report["gil"]["held_margin"].as_f64().unwrap_or(0.05) + 0.05;
    expect(
        cpu > 0.5 && cpu >= held * (1.0 - margin),
        format!("cpu hold {cpu} of the GIL's {held} (margin {margin:.3})"),
        &report,
    )
}

/// The re engine keeps the GIL for a whole match; the ticker wakes every 10 ms and waits.
const REGEX: [Share; 2] = [
    Share {
        role: "regex",
        state: "hold",
        range: 0.95..=1.0,
        why: "one match holds the GIL throughout",
    },
    Share {
        role: "ticker",
        state: "wait",
        range: 0.85..=1.0,
        why: "woken every 10 ms, it waits for the match to end",
    },
];

fn regex_holds(python: &Python) -> Result<(), Failed> {
    shares(python, "regex_backtrack", &REGEX).map(|_| ())
}

fn text_report(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let out = common::gilscope(&["record", "--pid", &fx.pid.to_string(), "--duration", "1"]);
    let text = stdout_of(&out);
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    for needle in [
        format!("gilscope: pid {}", fx.pid),
        format!("Python {}", python.version),
        "GIL: held".into(),
        "switches".into(),
        "interval 5.0 ms".into(),
        "HOLD".into(),
        "WAIT".into(),
        "RUNNING".into(),
        "IDLE".into(),
        "spinner-0".into(),
        "spinner-2".into(),
    ] {
        if !text.contains(&needle) {
            return Err(format!("text report lacks {needle:?}:\n{text}").into());
        }
    }
    // Rows are sorted by hold + wait: the spinners come before the idle main thread.
    let spinner_at = text.find("spinner-").unwrap_or(usize::MAX);
    let main_line = format!("{:>8}  ", fx.tid("main"));
    let main_at = text.find(&main_line).unwrap_or(0);
    if spinner_at > main_at {
        return Err(format!("rows are not sorted by hold + wait:\n{text}").into());
    }
    Ok(())
}

/// `dump` shows every thread with its stack, marks the PyDLL sleeper as the holder while it
/// sleeps in C with the GIL, and its JSON is the documented one.
fn dump_snapshot(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "gil_sleeper", &["--duration", "60"])?;
    let pid = fx.pid.to_string();
    let out = gilscope_ok(&["dump", "--pid", &pid, "--json", "--sample", "0.5"])?;
    let sampled: Value = serde_json::from_str(&stdout_of(&out))?;
    matches_documented_schema(&sampled, "docs/DUMP_SCHEMA.md")?;
    let spinner_tid = fx.tid("spinner") as i64;
    // The sleeper holds the GIL through each 2 ms sleep, the spinner between: some dump
    // catches the sleeper holding.
    for _ in 0..30 {
        let out = gilscope_ok(&["dump", "--pid", &pid, "--json"])?;
        let dump: Value = serde_json::from_str(&stdout_of(&out))?;
        let threads = dump["threads"].as_array().ok_or("no threads")?;
        let by_tid = |tid: i64| {
            threads
                .iter()
                .find(|t| t["native_id"].as_i64() == Some(tid))
        };
        let spinner = by_tid(spinner_tid).ok_or("no spinner")?;
        let leaf = |t: &Value| t["stack"][0]["function"].as_str().map(str::to_string);
        if spinner["stack_captured"] == true && leaf(spinner).as_deref() != Some("spin") {
            return Err(format!("spinner's innermost frame: {:?}", leaf(spinner)).into());
        }
        let holders: Vec<&Value> = threads.iter().filter(|t| t["state"] == "hold").collect();
        if holders.len() > 1 {
            return Err(format!("{} holders at one instant", holders.len()).into());
        }
        if let Some(holder) = holders.first() {
            if dump["gil"]["holder_native_id"] != holder["native_id"] {
                return Err("gil.holder_native_id is not the holding thread".into());
            }
        }
        let sleeper = by_tid(fx.tid("sleeper") as i64).ok_or("no sleeper")?;
        if sleeper["state"] == "hold" && sleeper["stack_captured"] == true {
            if leaf(sleeper).as_deref() != Some("sleep_holding_gil") {
                return Err(format!("sleeper's innermost frame: {:?}", leaf(sleeper)).into());
            }
            return Ok(());
        }
    }
    Err("in 30 dumps the sleeper was never shown holding the GIL".into())
}

fn json_schema(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "stacks", &["--duration", "60"])?;
    let report = common::record_json(fx.pid, 1.0)?;
    if report["schema"] != "gilscope.report/6" {
        return Err(format!("schema is {}", report["schema"]).into());
    }
    matches_documented_schema(&report, "docs/JSON_SCHEMA.md")
}

fn output_files(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("report.json");
    std::fs::write(&json, "old contents")?;
    let pid = fx.pid.to_string();
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "0.5",
        "-o",
        json.to_str().unwrap(),
    ])?;
    let parsed: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    if parsed["schema"] != "gilscope.report/6" {
        return Err("-o report.json did not write JSON".into());
    }
    if !stdout_of(&out).is_empty() {
        return Err("with -o, nothing goes to stdout".into());
    }
    let txt = dir.path().join("report.txt");
    let out = common::gilscope(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "0.5",
        "-o",
        txt.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&txt)?;
    if !out.status.success() || !text.starts_with("gilscope: pid") {
        return Err(format!("-o report.txt did not write text: {text}").into());
    }
    let forced = dir.path().join("report.out");
    common::gilscope(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "0.5",
        "--format",
        "json",
        "-o",
        forced.to_str().unwrap(),
    ]);
    serde_json::from_str::<Value>(&std::fs::read_to_string(&forced)?)
        .map_err(|e| format!("--format json -o report.out: {e}"))?;
    let names: Vec<String> = std::fs::read_dir(dir.path())?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    if names.len() != 3 {
        return Err(format!("temporary files left behind: {names:?}").into());
    }
    let started = Instant::now();
    let out = common::gilscope(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "30",
        "-o",
        "/nonexistent-dir/r.json",
    ]);
    if out.status.code() != Some(7) || started.elapsed() > Duration::from_secs(10) {
        return Err(format!(
            "an unwritable -o must fail at once with exit 7, got {} after {:?}: {}",
            out.status,
            started.elapsed(),
            stderr_of(&out)
        )
        .into());
    }
    Ok(())
}

fn ctrl_c(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("r.json");
    let child = Command::new(common::gilscope_bin())
        .args([
            "record",
            "--pid",
            &fx.pid.to_string(),
            "-o",
            path.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("exit {} after Ctrl-C: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    if report["sampler"]["ended"] != "interrupted" || report["samples"].as_u64().unwrap_or(0) < 500
    {
        return Err(format!(
            "report after Ctrl-C: ended {} samples {}",
            report["sampler"]["ended"], report["samples"]
        )
        .into());
    }
    // The target is untouched: still running.
    if gilscope::target::process::liveness(fx.pid) != gilscope::target::process::Liveness::Alive {
        return Err("the target did not survive".into());
    }
    Ok(())
}

fn target_exits(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "1.5"])?;
    let out = common::gilscope(&["record", "--pid", &fx.pid.to_string(), "--format", "json"]);
    let stderr = stderr_of(&out);
    if !out.status.success() {
        return Err(format!("exit {}: {stderr}", out.status).into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    if report["sampler"]["ended"] != "target_exited"
        || report["samples"].as_u64().unwrap_or(0) < 200
    {
        return Err(format!(
            "ended {} samples {}",
            report["sampler"]["ended"], report["samples"]
        )
        .into());
    }
    if !stderr.contains("exited") {
        return Err(format!("no note that the target exited: {stderr}").into());
    }
    Ok(())
}

/// The JSON report of a started command: the fixture's one-line announcement shares stdout
/// and comes first; the pretty-printed report starts with "{" on a line of its own.
fn report_after_announcement(out: &std::process::Output) -> Result<Value, Failed> {
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(out)).into());
    }
    let text = stdout_of(out);
    let json_start = text.find("{\n").ok_or("no report")?;
    Ok(serde_json::from_str(&text[json_start..])?)
}

fn spawned_command(python: &Python) -> Result<(), Failed> {
    let fixture = common::fixture_path("spinners");
    let out = common::gilscope(&[
        "record",
        "--format",
        "json",
        "--",
        python.path.to_str().unwrap(),
        fixture.to_str().unwrap(),
        "--duration",
        "1.5",
    ]);
    let report = report_after_announcement(&out)?;
    if report["sampler"]["ended"] != "target_exited" {
        return Err(format!("ended {}", report["sampler"]["ended"]).into());
    }
    let spinners = report["threads"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["name"].as_str().is_some_and(|n| n.starts_with("spinner")))
                .count()
        })
        .unwrap_or(0);
    if spinners != 3 {
        return Err(format!("{spinners} spinner rows").into());
    }
    Ok(())
}

/// A command that takes a while to become Python (a shell that sleeps first, then execs).
fn slow_start(python: &Python) -> Result<(), Failed> {
    let fixture = common::fixture_path("spinners");
    let script = format!(
        "sleep 0.7; exec {} {} --duration 1.5",
        python.path.display(),
        fixture.display()
    );
    let out = common::gilscope(&["record", "--format", "json", "--", "sh", "-c", &script]);
    let report = report_after_announcement(&out)?;
    if report["target"]["python_version"] != python.version.as_str() {
        return Err(format!("recorded {}", report["target"]["python_version"]).into());
    }
    Ok(())
}

/// Run gilscope; its exit status must be success.
/// The line of `# line: NAME` in a fixture's source.
fn marked_line(fixture_file: &str, name: &str) -> Result<u64, Failed> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture_file);
    let text = std::fs::read_to_string(&path)?;
    let marker = format!("# line: {name}");
    text.lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .map(|i| i as u64 + 1)
        .ok_or_else(|| format!("no {marker:?} in {}", path.display()).into())
}

/// The first location of a thread's `top_STATE` list: (function, file, line).
fn top_location(t: &Value, state: &str) -> Option<(String, String, u64)> {
    let l = &t[format!("top_{state}")][0];
    Some((
        l["function"].as_str()?.to_string(),
        l["file"].as_str()?.to_string(),
        l["line"].as_u64()?,
    ))
}

fn expect_location(
    report: &Value,
    t: &Value,
    state: &str,
    function: &str,
    file: &str,
    lines: &[u64],
) -> Result<(), Failed> {
    let found = top_location(t, state);
    let ok = found.as_ref().is_some_and(|(f, path, line)| {
        f == function && path.ends_with(file) && lines.contains(line)
    });
    expect(
        ok,
        format!(
            "{} top {state} is {found:?}, expected {function} in {file} at one of {lines:?}",
            t["name"]
        ),
        report,
    )
}

/// Each thread's innermost frame, in the state it spends its time in, is the function and
/// line the fixture marks; blame puts the waiters on the holders' code.
fn stacks_in_states(python: &Python) -> Result<(), Failed> {
    let (fx, report) = recorded(python, "stacks", &[])?;
    let line = |name| marked_line("stacks.py", name);
    let spin = line("spin")?;
    let unicode = marked_line("données_计算.py", "unicode")?;
    let spinner = row(&report, &fx, "spinner-with-a-long-name")?;
    // Python names come from `threading`, not from the OS (which truncates to 15 bytes).
    let main = row(&report, &fx, "main")?;
    expect(
        spinner["name"] == "spinner-with-a-long-name"
            && spinner["os_name"] == "spinner-with-a-"
            && main["name"] == "MainThread",
        format!(
            "names: {} (OS {}), main {}",
            spinner["name"], spinner["os_name"], main["name"]
        ),
        &report,
    )?;
    // A spinner is stopped for the GIL at the loop's jump (the line before its body on
    // some versions): both lines are the loop.
    for state in ["hold", "wait"] {
        expect_location(
            &report,
            spinner,
            state,
            "spin_here",
            "stacks.py",
            &[spin - 1, spin],
        )?;
    }
    let holder = row(&report, &fx, "holder")?;
    expect_location(
        &report,
        holder,
        "hold",
        "hold_in_c",
        "stacks.py",
        &[line("hold")?],
    )?;
    let io = row(&report, &fx, "io")?;
    expect_location(
        &report,
        io,
        "idle",
        "wait_for_io",
        "stacks.py",
        &[line("io")?],
    )?;
    let deep = row(&report, &fx, "deep")?;
    expect_location(
        &report,
        deep,
        "idle",
        "recurse",
        "stacks.py",
        &[line("deep")?],
    )?;
    let other = row(&report, &fx, "unicode")?;
    expect_location(
        &report,
        other,
        "hold",
        "计算_données",
        "données_计算.py",
        &[unicode - 1, unicode],
    )?;
    // The loop bodies span three lines (while, +=, if): any of them is the loop.
    let generator = row(&report, &fx, "generator")?;
    let g = line("generator")?;
    expect_location(
        &report,
        generator,
        "hold",
        "produce",
        "stacks.py",
        &[g - 1, g, g + 1],
    )?;
    let coroutine = row(&report, &fx, "coroutine")?;
    let c = line("coroutine")?;
    expect_location(
        &report,
        coroutine,
        "hold",
        "crunch",
        "stacks.py",
        &[c - 1, c, c + 1],
    )?;
    // Blame: whatever a holder ran while others waited is its own code.
    let top = report["blame"]["top"].as_array().ok_or("no blame.top")?;
    let mut on_holder = 0.0;
    for entry in top {
        let holder_tid = entry["holder_native_id"].as_i64().unwrap_or(0) as i32;
        let leaf = entry["stack"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(|f| f["function"].as_str())
            .unwrap_or("");
        let expected = [
            (fx.tid("spinner-with-a-long-name"), "spin_here"),
            (fx.tid("holder"), "hold_in_c"),
            (fx.tid("unicode"), "计算_données"),
        ];
        if let Some((_, function)) = expected.iter().find(|(tid, _)| *tid == holder_tid) {
            expect(
                leaf == *function,
                format!("blame puts waiters on {leaf:?} of thread {holder_tid}"),
                &report,
            )?;
        }
        if holder_tid == fx.tid("holder") {
            on_holder += entry["share"].as_f64().unwrap_or(0.0);
        }
    }
    // The holder keeps the GIL through each 3 ms sleep while the four spinning threads
    // wait; they hold it in turn otherwise, and it waits. So whoever holds, four threads
    // wait, and the holder's share of the blame is its share of the holding.
    let holds: f64 = [
        "spinner-with-a-long-name",
        "holder",
        "unicode",
        "generator",
        "coroutine",
    ]
    .iter()
    .map(|role| row(&report, &fx, role).map(|r| fraction(r, "hold")))
    .sum::<Result<f64, Failed>>()?;
    let expected = fraction(holder, "hold") / holds.max(1e-9);
    let samples = report["samples"].as_f64().unwrap_or(1.0);
    let margin = 3.0 * (expected * (1.0 - expected) / samples).sqrt() + 0.03 + 0.2 * expected;
    expect(
        expected > 0.0 && (on_holder - expected).abs() <= margin,
        format!(
            "blame share of hold_in_c {on_holder}, its share of the holding {expected:.4} \
             (margin {margin:.4})"
        ),
        &report,
    )
}

/// Folded output keeps every one of the 2,000 frames of a deep stack, and non-ASCII
/// function and file names byte for byte.
fn stacks_folded(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "stacks", &["--duration", "60"])?;
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1.5",
        "--format",
        "collapsed",
        "--idle",
    ])?;
    let folded = stdout_of(&out);
    let deep_head = format!("({});[idle];", fx.tid("deep"));
    let deepest = folded
        .lines()
        .filter(|l| l.contains(&deep_head))
        .map(|l| l.matches(";recurse (").count())
        .max()
        .unwrap_or(0);
    // DEPTH + 1 calls of recurse, all of them read.
    if deepest != 2001 {
        return Err(
            format!("deepest idle stack of the deep thread has {deepest} recurse frames").into(),
        );
    }
    let unicode = marked_line("données_计算.py", "unicode")?;
    let needle = format!("计算_données ({}", "");
    let found = folded.lines().any(|l| {
        l.contains(&format!("({});[hold];", fx.tid("unicode")))
            && l.contains(&needle)
            && (l.contains(&format!("données_计算.py:{unicode})"))
                || l.contains(&format!("données_计算.py:{})", unicode - 1)))
    });
    if !found {
        return Err(format!(
            "no hold stack of 计算_données in données_计算.py:\n{}",
            head(&folded)
        )
        .into());
    }
    // A running generator sits on the frame of the loop that drives it, a coroutine on the
    // event loop's.
    let under = |role: &str, caller: &str, callee: &str| {
        let head = format!("({});[hold];", fx.tid(role));
        folded.lines().any(|l| {
            l.contains(&head) && l.contains(&format!(";{caller} (")) && {
                let stack = l.rsplit_once(' ').map(|(s, _)| s).unwrap_or(l);
                stack
                    .rsplit(';')
                    .next()
                    .is_some_and(|leaf| leaf.starts_with(&format!("{callee} (")))
            }
        })
    };
    if !under("generator", "consume", "produce") {
        return Err(format!("no hold stack consume -> produce:\n{}", head(&folded)).into());
    }
    if !under("coroutine", "coroutines", "crunch") {
        return Err(format!(
            "no hold stack coroutines -> ... -> crunch:\n{}",
            head(&folded)
        )
        .into());
    }
    for line in folded.lines() {
        let count = line
            .rsplit_once(' ')
            .and_then(|(_, n)| n.parse::<u64>().ok());
        if count.is_none() {
            return Err(format!("not a folded line: {line:?}").into());
        }
    }
    Ok(())
}

fn head(text: &str) -> String {
    text.lines()
        .take(20)
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A flamegraph SVG carries each thread, its states and its frames, non-ASCII included.
fn flamegraph(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "stacks", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gil.svg");
    gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1",
        "-o",
        path.to_str().ok_or("path")?,
        "--state",
        "hold,wait",
    ])?;
    let svg = std::fs::read_to_string(&path)?;
    for needle in [
        "<svg",
        "[hold]",
        "[wait]",
        "spin_here",
        "hold_in_c",
        "计算_données",
        "données_计算.py",
        "spinner-with-a-long-name",
    ] {
        if !svg.contains(needle) {
            return Err(format!("the SVG lacks {needle:?}").into());
        }
    }
    if svg.contains("[idle]") || svg.contains("[running]") {
        return Err("--state hold,wait still drew other states".into());
    }
    Ok(())
}

/// The Chrome trace of three spinners: a named track per thread, spans of one thread that
/// tile the recording without overlapping, never two holders at once, span durations that
/// agree with the sample counts they cover, the holder's stack at each hold span, and a
/// counter of waiting threads.
fn chrome_trace(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("trace.json");
    let pid = fx.pid.to_string();
    let args = ["record", "--pid", &pid, "--duration", "2", "--idle", "-o"];
    gilscope_ok(&[&args[..], &[path.to_str().ok_or("path")?]].concat())?;
    let trace: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let other = &trace["otherData"];
    if other["schema"] != "gilscope.chrometrace/1" || other["spans_dropped"] != 0 {
        return Err(format!("otherData: {other}").into());
    }
    let duration_us = other["duration_s"].as_f64().ok_or("duration_s")? * 1e6;
    let samples = other["samples"].as_f64().ok_or("samples")?;
    let events = trace["traceEvents"].as_array().ok_or("no traceEvents")?;
    let of = |ph: &str, name: Option<&str>| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["ph"] == ph && name.is_none_or(|n| e["name"] == n))
            .collect()
    };
    let span = |e: &Value| -> Result<(f64, f64), Failed> {
        let ts = e["ts"].as_f64().ok_or("ts")?;
        let dur = e["dur"].as_f64().ok_or("dur")?;
        if ts < 0.0 || dur < 0.0 || ts + dur > duration_us + 1.0 {
            return Err(format!("span outside the recording: {e}").into());
        }
        Ok((ts, ts + dur))
    };
    // Never two holders at once.
    let mut holds: Vec<(f64, f64)> = of("X", Some("hold"))
        .into_iter()
        .map(span)
        .collect::<Result<_, _>>()?;
    holds.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(w) = holds.windows(2).find(|w| w[1].0 < w[0].1 - 1e-3) {
        return Err(format!("two hold spans overlap: {w:?}").into());
    }
    let spin = "spin (";
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let tid = fx.tid(role);
        let named = of("M", Some("thread_name"))
            .into_iter()
            .any(|e| e["tid"] == tid && e["args"]["name"] == role);
        if !named {
            return Err(format!("no track named {role} for {tid}").into());
        }
        let mut mine: Vec<&Value> = of("X", None)
            .into_iter()
            .filter(|e| e["tid"] == tid)
            .collect();
        let ts = |e: &Value| e["ts"].as_f64().unwrap_or(f64::NAN);
        mine.sort_by(|a, b| ts(a).total_cmp(&ts(b)));
        let spans: Vec<(f64, f64)> = mine.iter().map(|e| span(e)).collect::<Result<_, _>>()?;
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1 - 1e-3) {
            return Err(format!("{role}'s spans overlap: {w:?}").into());
        }
        // Every state drawn (--idle): a thread's spans tile the whole recording.
        let covered: f64 = spans.iter().map(|(from, to)| to - from).sum();
        if (covered - duration_us).abs() > 1.0 {
            return Err(format!("{role}'s spans cover {covered} of {duration_us} µs").into());
        }
        // Edges are cut halfway between samples, so a state's share of the time is its
        // share of the samples, except where ticks were late: a stall of the sampler counts
        // in time and not in samples.
        let hold: Vec<&&Value> = mine.iter().filter(|e| e["name"] == "hold").collect();
        let by_time = hold
            .iter()
            .map(|e| e["dur"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            / duration_us;
        let by_samples = hold
            .iter()
            .map(|e| e["args"]["samples"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            / samples;
        if (by_time - by_samples).abs() > 0.06 || by_samples < 0.1 {
            return Err(format!(
                "{role}: hold {by_time:.3} of the time but {by_samples:.3} of the samples"
            )
            .into());
        }
        let stacked = hold.iter().all(|e| {
            e["args"]["stack"][0]
                .as_str()
                .is_none_or(|leaf| leaf.starts_with(spin))
        });
        let with_stack = hold
            .iter()
            .filter(|e| e["args"]["stack"].is_array())
            .count();
        if !stacked || with_stack * 10 < hold.len() * 9 {
            return Err(format!(
                "{role}: {with_stack} of {} hold spans have a stack, all in spin: {stacked}",
                hold.len()
            )
            .into());
        }
    }
    let counters = of("C", Some("GIL waiters"));
    let most = counters
        .iter()
        .filter_map(|e| e["args"]["waiting"].as_u64())
        .max()
        .unwrap_or(0);
    // Two spinners wait while one holds; at a hand-off all three and the main thread may.
    if counters.is_empty() || !(2..=4).contains(&most) {
        return Err(format!("{} waiter counts, at most {most}", counters.len()).into());
    }
    Ok(())
}

/// Runs a spinner in a thread whose name is made to break markup, and says when it runs.
const HOSTILE_NAME: &str = r#"
import sys, threading
def spin():
    while True:
        pass
t = threading.Thread(target=spin, name='<script>alert("x")</script> & \'q\'')
t.daemon = True
t.start()
print("ready", flush=True)
sys.stdin.read()
"#;

/// The timeline SVG: a labelled row per thread, the hold runs of spinners with their
/// function in the tooltip, and a thread name made of markup shown as text, in a file that
/// an XML parser accepts.
fn timeline_svg(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gil.timeline.svg");
    let record = |pid: i32| -> Result<String, Failed> {
        gilscope_ok(&[
            "record",
            "--pid",
            &pid.to_string(),
            "--duration",
            "1.5",
            "-o",
            path.to_str().ok_or("path")?,
        ])?;
        let svg = std::fs::read_to_string(&path)?;
        let parsed = Command::new(&python.path)
            .args([
                "-c",
                "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
            ])
            .arg(&path)
            .output()?;
        if !parsed.status.success() {
            return Err(format!("not well-formed XML: {}", stderr_of(&parsed)).into());
        }
        Ok(svg)
    };
    let svg = record(fx.pid)?;
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let label = format!(">{role} ({})</text>", fx.tid(role));
        let runs = svg.matches(&format!("<title>{role}: hold from ")).count();
        if !svg.contains(&label) || runs < 3 {
            return Err(format!("{role}: label {}, {runs} hold runs", svg.contains(&label)).into());
        }
    }
    if !svg.contains(", mostly in spin (") || svg.contains(": idle from ") {
        return Err("no stack in the tooltips, or idle drawn without --idle".into());
    }
    drop(fx);
    let mut hostile = Command::new(&python.path)
        .args(["-c", HOSTILE_NAME])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hostile.stdout.take().ok_or("stdout")?),
        &mut ready,
    )?;
    let result = record(hostile.id() as i32);
    let _ = hostile.kill();
    let _ = hostile.wait();
    let svg = result?;
    if svg.contains("<script>") || !svg.contains("&lt;script&gt;alert(&quot;x&quot;)") {
        return Err("the markup in a thread name was not escaped".into());
    }
    Ok(())
}

/// speedscope's file format: shared frames, one sampled profile per thread.
fn speedscope(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "stacks", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gil.speedscope.json");
    gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1",
        "-o",
        path.to_str().ok_or("path")?,
    ])?;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    if doc["$schema"] != "https://www.speedscope.app/file-format-schema.json" {
        return Err(format!("not a speedscope file: {}", doc["$schema"]).into());
    }
    let frames = doc["shared"]["frames"].as_array().ok_or("no frames")?;
    let profiles = doc["profiles"].as_array().ok_or("no profiles")?;
    let spinner = format!("({})", fx.tid("spinner-with-a-long-name"));
    let profile = profiles
        .iter()
        .find(|p| p["name"].as_str().is_some_and(|n| n.ends_with(&spinner)))
        .ok_or("no profile for the spinner")?;
    let samples = profile["samples"].as_array().ok_or("no samples")?;
    let weights = profile["weights"].as_array().ok_or("no weights")?;
    if samples.len() != weights.len() || samples.is_empty() {
        return Err("samples and weights differ in length".into());
    }
    let leaf_names: Vec<&str> = samples
        .iter()
        .filter_map(|s| s.as_array()?.last()?.as_u64())
        .filter_map(|i| frames.get(i as usize)?["name"].as_str())
        .collect();
    if !leaf_names.contains(&"spin_here") {
        return Err(format!("spinner leaves: {leaf_names:?}").into());
    }
    let spin = frames
        .iter()
        .find(|f| f["name"] == "spin_here")
        .ok_or("no spin_here frame")?;
    if !spin["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("stacks.py"))
        || !spin["line"].is_u64()
    {
        return Err(format!("spin_here frame {spin}").into());
    }
    Ok(())
}

/// The blame view's stacks are the holders': each starts with the holding thread and ends
/// in that thread's code.
fn blame_view(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "stacks", &["--duration", "60"])?;
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1.5",
        "--format",
        "collapsed",
        "--view",
        "blame",
    ])?;
    let folded = stdout_of(&out);
    let weight_of = |head: String, leaf: &str| -> u64 {
        folded
            .lines()
            .filter(|l| l.starts_with(&head))
            .filter_map(|l| {
                let (stack, n) = l.rsplit_once(' ')?;
                let last = stack.rsplit(';').next()?;
                last.starts_with(&format!("{leaf} ("))
                    .then(|| n.parse::<u64>().ok())?
            })
            .sum()
    };
    let holder = weight_of(format!("holder ({})", fx.tid("holder")), "hold_in_c");
    let spinner = weight_of(
        format!(
            "spinner-with-a-long-name ({})",
            fx.tid("spinner-with-a-long-name")
        ),
        "spin_here",
    );
    let total: u64 = folded
        .lines()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    if holder == 0 || spinner == 0 || holder + spinner > total {
        return Err(format!(
            "blame: hold_in_c {holder}, spin_here {spinner} of {total}:\n{}",
            head(&folded)
        )
        .into());
    }
    Ok(())
}

/// --gil-only keeps the fractions and reads no stacks.
fn gil_only(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "stacks", &["--duration", "60"])?;
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1",
        "--format",
        "json",
        "--gil-only",
    ])?;
    let report: Value = serde_json::from_str(&stdout_of(&out))?;
    let holder = row(&report, &fx, "holder")?;
    expect(
        report["blame"]["stacks_recorded"] == false
            && holder["top_hold"].as_array().is_some_and(|a| a.is_empty())
            && fraction(holder, "hold") > 0.1,
        "--gil-only: no stacks, fractions still there",
        &report,
    )
}

/// `--switch-sites` says in the report whether it was in effect: "perf" where the GIL's
/// symbols and perf are there (or, without perf, "unavailable" and a degraded line saying
/// so); never silently off. With a copy of libpython stripped of its symbol table (no
/// take_gil to tell where a thread left its CPU) it cannot be, and the report says why; with
/// the stripped copy's separate debug file beside it, it is again.
/// Without the option: null.
fn switch_sites_status(python: &Python) -> Result<(), Failed> {
    let status = |library_dir: Option<&Path>, flag: bool| -> Result<(Value, String), Failed> {
        let fx =
            common::start_with_libraries(python, library_dir, "spinners", &["--duration", "60"])?;
        let dir = tempfile::tempdir()?;
        let json = dir.path().join("r.json");
        let pid = fx.pid.to_string();
        let mut args = vec!["record", "--pid", &pid, "--duration", "0.5"];
        if flag {
            args.push("--switch-sites");
        }
        let mut text_args = args.clone();
        args.extend(["-o", json.to_str().ok_or("path")?]);
        gilscope_ok(&args)?;
        text_args.extend(["--format", "text"]);
        let text = stdout_of(&gilscope_ok(&text_args)?);
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        Ok((report, text))
    };
    let (report, _) = status(None, false)?;
    if !report["sampler"]["switch_sites"].is_null() {
        return Err(format!(
            "without --switch-sites: {}",
            report["sampler"]["switch_sites"]
        )
        .into());
    }
    let (report, text) = status(None, true)?;
    let said = report["sampler"]["switch_sites"].as_str().unwrap_or("");
    let said_first = said.to_string();
    let degraded = report["sampler"]["degraded"].to_string();
    let consistent = match said {
        "perf" => !degraded.contains("switch sites"),
        other => {
            other.starts_with("unavailable (perf_event_open")
                && degraded.contains("switch sites")
                && text.contains("degraded: without switch sites")
        }
    };
    if !consistent {
        return Err(format!(
            "{}: switch_sites {said:?}, degraded {degraded}",
            python.label
        )
        .into());
    }
    // The same interpreter with its libpython stripped: no GIL symbols.
    let Some(stripped) = common::stripped_libpython(python)? else {
        return Ok(());
    };
    let (report, text) = status(Some(stripped.path()), true)?;
    let said = report["sampler"]["switch_sites"].as_str().unwrap_or("");
    if !said.starts_with("unavailable (") || !text.contains("degraded: without switch sites (") {
        return Err(
            format!("stripped libpython: switch_sites {said:?}; text report:\n{text}").into(),
        );
    }
    // Stripped, with its debug file beside it (a distribution's -dbg package): take_gil is
    // found there, and switch sites are in effect as with the unstripped library.
    let Some(with_debug) = common::stripped_libpython_with(python, true)? else {
        return Ok(());
    };
    let (report, text) = status(Some(with_debug.path()), true)?;
    let with_debug_said = report["sampler"]["switch_sites"].as_str().unwrap_or("");
    if with_debug_said != said_first {
        return Err(format!(
            "stripped libpython with its debug file: switch_sites {with_debug_said:?}, \
             unstripped {said_first:?}; text report:\n{text}"
        )
        .into());
    }
    // `dump --sample` says the same in its own terms, and takes the option with --sample only.
    let dump = |library_dir: Option<&Path>, flag: bool| -> Result<(Value, String), Failed> {
        let fx =
            common::start_with_libraries(python, library_dir, "spinners", &["--duration", "60"])?;
        let pid = fx.pid.to_string();
        let mut args = vec!["dump", "--pid", &pid, "--sample", "0.5"];
        if flag {
            args.push("--switch-sites");
        }
        let text = stdout_of(&gilscope_ok(&args)?);
        args.push("--json");
        let json: Value = serde_json::from_str(&stdout_of(&gilscope_ok(&args)?))?;
        matches_documented_schema(&json, "docs/DUMP_SCHEMA.md")?;
        Ok((json, text))
    };
    let (json, _) = dump(None, false)?;
    if !json["sample"]["switch_sites"].is_null() {
        return Err(format!(
            "dump without --switch-sites: {}",
            json["sample"]["switch_sites"]
        )
        .into());
    }
    let (json, text) = dump(None, true)?;
    let said = json["sample"]["switch_sites"].as_str().unwrap_or("");
    let consistent = match said {
        "perf" => !text.contains("degraded: without switch sites"),
        other => {
            other.starts_with("unavailable (perf_event_open")
                && text.contains("degraded: without switch sites (")
        }
    };
    if !consistent {
        return Err(format!("dump --switch-sites: {said:?}; text:\n{text}").into());
    }
    let (json, text) = dump(Some(stripped.path()), true)?;
    let said = json["sample"]["switch_sites"].as_str().unwrap_or("");
    if !said.starts_with("unavailable (") || !text.contains("degraded: without switch sites (") {
        return Err(format!("dump, stripped libpython: {said:?}; text:\n{text}").into());
    }
    let out = common::gilscope(&["dump", "--pid", "1", "--switch-sites"]);
    if out.status.code() != Some(2) || !String::from_utf8_lossy(&out.stderr).contains("--sample") {
        return Err(format!(
            "dump --switch-sites without --sample: {:?}, {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// One thread running Python alone holds the GIL on a CPU at almost every tick: its CPU
/// clock is left unread (a perf counter read of a thread on another CPU interrupts that CPU),
/// and it is still seen holding.
fn running_holder_clock(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "single", &["--duration", "60"])?;
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--rate",
        "1000",
        "--duration",
        "1",
        "--format",
        "json",
    ])?;
    let report: Value = serde_json::from_str(&stdout_of(&out))?;
    let stats = &report["sampler"]["stats"];
    let ticks = stats["ticks"].as_u64().unwrap_or(0);
    let skipped = stats["clock_reads_skipped"].as_u64().unwrap_or(0);
    let reads = stats["clock_reads"].as_u64().unwrap_or(0);
    expect(
        ticks >= 200 && skipped * 2 >= ticks && reads < skipped,
        format!("{ticks} ticks: clock reads {reads}, left out {skipped}"),
        &report,
    )?;
    let main = row(&report, &fx, "main")?;
    expect(
        fraction(main, "hold") > 0.9,
        "the lone Python thread holds",
        &report,
    )
}

/// 300 idle threads at 2000 Hz: a tick may spend 125 us on first walks of sleeping threads,
/// far too little for all of them, so most are put off. None of them runs, so every put-off
/// tick must end up with the stack found later: each idle thread has one innermost frame for
/// all its samples.
fn late_walks(python: &Python) -> Result<(), Failed> {
    let args = ["--duration", "60", "--threads", "300", "--busy", "0"];
    let fx = Fixture::start(&python.path, "many_threads", &args)?;
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--rate",
        "2000",
        "--duration",
        "2",
        "--format",
        "json",
    ])?;
    let report: Value = serde_json::from_str(&stdout_of(&out))?;
    let stats = &report["sampler"]["stats"];
    let deferred = stats["walks_deferred"].as_u64().unwrap_or(0);
    let resolved = stats["walks_resolved"].as_u64().unwrap_or(0);
    expect(
        deferred > 0 && resolved >= 250,
        format!("first walks put off {deferred}, resolved {resolved} (of 300 idle threads)"),
        &report,
    )?;
    for (role, &tid) in fx.threads.iter().filter(|(r, _)| r.starts_with("idle-")) {
        let row = common::thread_row(&report, tid).ok_or(format!("no row for {role}"))?;
        let samples = row["samples"].as_u64().unwrap_or(0);
        let top = row["top_idle"].as_array().and_then(|a| a.first());
        let at_top = top.and_then(|t| t["samples"].as_u64()).unwrap_or(0);
        expect(
            samples > 0 && at_top == samples,
            format!("{role}: {at_top} of {samples} idle samples have its stack"),
            &report,
        )?;
    }
    Ok(())
}

/// Threads named in every way `threading` stores names (plain, non-ASCII, renamed, with a
/// materialised `__dict__`, with so many attributes that they move to a dict), and a thread
/// `threading` did not start. Prints "ident\tname" per thread, then a blank line.
const NAMED_THREADS: &str = r#"
import sys
sys.stdout.write("no threading: %s\n" % ("threading" not in sys.modules))
sys.stdout.flush()
sys.stdin.readline()
import threading, _thread
stop = threading.Event()
def run():
    stop.wait()
names = ["worker-1", "数据-2", "🐍 snake-3", "café-4"]
threads = [threading.Thread(target=run, name=n) for n in names]
for t in threads:
    t.daemon = True
    t.start()
threads[0].name = "renamed-1"
vars(threads[1])
for i in range(40):
    setattr(threads[2], "extra_%d" % i, i)
started = threading.Event()
def dummy():
    threading.current_thread()
    started.set()
    stop.wait()
_thread.start_new_thread(dummy, ())
started.wait()
lines = ["%d\t%s" % (t.ident, t.name) for t in threading.enumerate()]
sys.stdout.buffer.write(("\n".join(lines) + "\n\n").encode("utf-8"))
sys.stdout.flush()
sys.stdin.read()
stop.set()
"#;

/// Python thread names read from outside equal what `threading` says inside, before
/// `threading` is imported (none) and after, and every thread state's ident is among them.
fn thread_names(python: &Python) -> Result<(), Failed> {
    use gilscope::python::interpreter::Interpreter;
    use gilscope::python::thread_names::ThreadNames;
    use gilscope::target::memory::ProcessMemory;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};

    let mut child = Command::new(&python.path)
        .args(["-S", "-c", NAMED_THREADS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let result = (|| -> Result<(), Failed> {
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let without_threading = line.trim_end() == "no threading: True";
        let memory = ProcessMemory::new(pid);
        let mut interpreter =
            Interpreter::attach(pid, &memory).map_err(|e| format!("attach: {e}"))?;
        let mut names = ThreadNames::new(
            &interpreter.description().version,
            &interpreter.description().layout,
        )
        .ok_or("no thread-name reader for this version")?;
        let interp = *interpreter
            .interpreters(&memory)?
            .first()
            .ok_or("no interpreter")?;
        let before = names.read(&memory, interp)?;
        if without_threading && !before.is_empty() {
            return Err(format!("names before threading was imported: {before:?}").into());
        }
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"go\n")?;
        let mut expected = HashMap::new();
        loop {
            line.clear();
            stdout.read_line(&mut line)?;
            let Some((ident, name)) = line.trim_end_matches('\n').split_once('\t') else {
                break;
            };
            expected.insert(ident.parse::<u64>()?, name.to_string());
        }
        let found = names.read(&memory, interp)?;
        let again = names.read(&memory, interp)?;
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort();
        let tstates = interpreter.threads(&memory, &tids)?;
        drop(stdin);
        if found != expected || again != expected {
            return Err(
                format!("read {found:?}, then {again:?}; threading says {expected:?}").into(),
            );
        }
        // `threading.get_ident()` is the thread state's `thread_id`.
        if tstates.len() != expected.len()
            || tstates.iter().any(|t| !found.contains_key(&t.thread_id))
        {
            return Err(format!("thread states {tstates:?} vs names {found:?}").into());
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Runs gilscope (argv after the script) on a pseudo-terminal and prints all it wrote there.
const ON_A_TERMINAL: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
data = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
sys.stdout.buffer.write(data)
"#;

/// On a terminal, record shows a self-overwriting progress line and clears it at the end;
/// into a pipe it writes none.
fn progress(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let pid = fx.pid.to_string();
    let dir = tempfile::tempdir()?;
    let report = dir.path().join("r.json");
    let args = [
        "record",
        "--pid",
        &pid,
        "--duration",
        "1.3",
        "-o",
        report.to_str().ok_or("path")?,
    ];
    let out = Command::new(&python.path)
        .args(["-c", ON_A_TERMINAL, common::gilscope_bin()])
        .args(args)
        .output()?;
    let screen = String::from_utf8_lossy(&out.stdout);
    let lines = screen.matches("\r\x1b[2Kgilscope: ").count();
    if lines < 2 || !screen.contains(" / 1.3 s, ") || !screen.contains(" samples, 0 errors") {
        return Err(format!("no progress on the terminal: {screen:?}").into());
    }
    let piped = common::gilscope(&args);
    if String::from_utf8_lossy(&piped.stderr).contains('\x1b') {
        return Err("progress escapes written into a pipe".into());
    }
    Ok(())
}

/// The findings section of a 2 s text report of `fixture`.
fn findings_of(python: &Python, fixture: &str) -> Result<(Fixture, String), Failed> {
    let fx = Fixture::start(&python.path, fixture, &["--duration", "60"])?;
    let before = gilscope::target::process::cpu_times();
    let out = common::gilscope(&["record", "--pid", &fx.pid.to_string(), "--duration", "2"]);
    let steal =
        gilscope::target::process::steal_share(before, gilscope::target::process::cpu_times());
    // The worst window decides whether a miss is measured again.
    LAST_STEAL.set(match (LAST_STEAL.get(), steal) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    });
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let text = stdout_of(&out);
    let section = text
        .split_once("\nFindings:\n")
        .map(|(_, f)| f.to_string())
        .unwrap_or_default();
    Ok((fx, section))
}

/// Findings appear where the figures call for them, naming the thread and the figure, and
/// not at all for a lone thread that nobody waits on.
fn findings(python: &Python) -> Result<(), Failed> {
    // Each fixture is ended before the next starts: a busy machine changes the figures.
    {
        let (fx, found) = findings_of(python, "spinners")?;
        // The three spinners want it; the main thread too when, woken from its sleeps, it
        // waits long enough for the GIL (the convoy effect of 3.7 and earlier, say).
        let wanting = found
            .split_once(" threads wanted it")
            .and_then(|(before, _)| before.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        if !found.contains("The GIL was held") || !wanting.is_some_and(|n| (3..=4).contains(&n)) {
            return Err(format!("spinners: no saturation finding:\n{found}").into());
        }
        let spinner = format!("({}) waited for the GIL", fx.tid("spinner-0"));
        if !found.contains(&spinner) || !found.contains("in spin (") {
            return Err(format!("spinners: no waiting finding on spin:\n{found}").into());
        }
    }
    {
        // The convoy finding needs 20 wake-ups; how many a second brings is the machine's
        // doing. Record longer until the I/O thread has made them (or say it never did).
        let fx = Fixture::start(&python.path, "io_pingpong", &["--duration", "120"])?;
        let io = fx.tid("io");
        let mut seen = Vec::new();
        let mut found = None;
        for secs in [2.0, 4.0, 8.0, 16.0] {
            let report = common::record_json(fx.pid, secs)?;
            let thread = thread_row(&report, io).ok_or("io is not in the report")?;
            let wakeups = thread["wakeups"].as_u64().unwrap_or(0);
            seen.push(format!("{wakeups} in {secs} s"));
            if wakeups >= 30 {
                found = Some(report);
                break;
            }
        }
        let Some(report) = found else {
            return Err(format!(
                "io_pingpong: the I/O thread made too few wake-ups for the test ({})",
                seen.join(", ")
            )
            .into());
        };
        let convoy = format!("io ({io}) waited");
        let findings: Vec<&str> = report["findings"]
            .as_array()
            .map(|f| f.iter().filter_map(|l| l.as_str()).collect())
            .unwrap_or_default();
        if !findings.iter().any(|l| {
            l.contains(&convoy) && l.contains("after each wake-up") && l.contains("convoy")
        }) {
            let rows = common::thread_rows(&report);
            return Err(format!(
                "io_pingpong: no convoy finding for io:\n{}\n  {}",
                findings.join("\n"),
                rows.join("\n  ")
            )
            .into());
        }
    }
    {
        let (_fx, found) = findings_of(python, "native_release")?;
        if !found.contains("ran native code without the GIL") {
            return Err(format!("native_release: no native finding:\n{found}").into());
        }
    }
    let (_fx, found) = findings_of(python, "single")?;
    if !found.is_empty() {
        return Err(format!("a single thread got findings:\n{found}").into());
    }
    Ok(())
}
