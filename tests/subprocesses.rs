//! `--subprocesses` end to end: a multiprocessing pool whose workers exit early and are
//! replaced while recording, and a shell script that starts Python late; every report format
//! rooted per process, dumps of a whole tree, and a tree with no Python in it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{
    fixture_path, fraction, gilscope, gilscope_ok, matches_documented_schema, stderr_of, stdout_of,
    Fixture, Python,
};

/// Seconds the pool fixture runs at least: it runs two rounds of 1 s tasks whatever this is
/// (`--rounds 2`), so two generations of two workers, the second started while the recording
/// runs; a longer run proves nothing more.
const POOL_S: &str = "1";
/// Seconds after which a recording of a fixture that should have ended by itself is cut.
const GUARD_S: &str = "30";

/// A test of one interpreter.
type Test = fn(&Python) -> Result<(), Failed>;

fn main() {
    let pythons = common::pythons();
    let mut trials = Vec::new();
    let per_version: [(&str, Test); 2] = [
        (
            "a_pool_is_recorded_per_worker_including_workers_that_exit_early",
            pool_workers,
        ),
        (
            "a_python_started_late_by_a_shell_script_is_found",
            late_python,
        ),
    ];
    // Finding and following processes reads no layout of its own: each test on half of the
    // layout families, the halves crossed (CI's second pass runs the rest).
    for (part, (name, test)) in per_version.into_iter().enumerate() {
        trials.extend(common::turn_trials(&pythons, 2, part, name, test));
    }
    let once: [(&str, Test); 5] = [
        ("every_format_roots_each_process", formats),
        ("a_shell_that_execs_python_late_is_followed", late_exec),
        ("dump_shows_every_process_of_the_tree", dump_tree),
        ("a_pid_given_later_follows_its_children_too", by_pid),
        ("a_tree_without_python_is_a_clear_error", no_python),
    ];
    for (name, test) in once {
        trials.push(common::on_cli_python(&pythons, name, move |python| {
            test(python).map(|()| Completion::Completed)
        }));
    }
    common::Suite::run_trials(trials);
}

/// The workers the pool fixture logged: pid -> its spinner tids.
fn logged_workers(log: &Path) -> Result<Vec<(i64, Vec<i64>)>, Failed> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line)?;
            let pid = entry["worker"].as_i64().ok_or("no worker pid")?;
            let tids = entry["threads"]
                .as_object()
                .ok_or("no threads")?
                .values()
                .filter_map(Value::as_i64)
                .collect();
            Ok((pid, tids))
        })
        .collect()
}

/// Record the pool fixture to the end, started by gilscope, in `format` to `output`.
fn record_pool(
    python: &Python,
    dir: &Path,
    format: &str,
    output: &Path,
) -> Result<Vec<(i64, Vec<i64>)>, Failed> {
    let log = dir.join("pool.log");
    let _ = std::fs::remove_file(&log);
    let script = fixture_path("pool");
    // The recording ends when the pool has exited; --duration only bounds a hang.
    let out = gilscope(&[
        "record",
        "--subprocesses",
        "--duration",
        GUARD_S,
        "--format",
        format,
        "-o",
        output.to_str().ok_or("path")?,
        "--",
        python.path.to_str().ok_or("path")?,
        script.to_str().ok_or("path")?,
        "--duration",
        POOL_S,
        "--rounds",
        "2",
        "--log",
        log.to_str().ok_or("path")?,
    ]);
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report_end = std::fs::read_to_string(output).unwrap_or_default();
    if report_end.contains("\"ended\": \"duration\"") {
        return Err(format!("the pool did not exit within {GUARD_S} s").into());
    }
    let workers = logged_workers(&log)?;
    if workers.len() < 4 {
        return Err(format!(
            "the pool logged {} workers, at least 4 (two rounds)",
            workers.len()
        )
        .into());
    }
    Ok(workers)
}

fn processes(report: &Value) -> Result<&Vec<Value>, Failed> {
    report["processes"]
        .as_array()
        .ok_or_else(|| format!("no processes in {report}").into())
}

fn process_of(report: &Value, pid: i64) -> Option<&Value> {
    report["processes"]
        .as_array()?
        .iter()
        .find(|p| p["target"]["pid"].as_i64() == Some(pid))
}

/// Every worker of the pool, the ones that exited long before the end and the ones started
/// after the recording began, is a process of the report; each worker's two spinners
/// share its GIL (held or waited for all the time they ran), and the main process waits.
/// Ticks of a spinner below which its shares are left unjudged (a tick is 10 ms at the
/// default rate: half a second of its one-second life).
const MIN_SHARE_SAMPLES: u64 = 50;

fn pool_workers(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("pool.json");
    let workers = record_pool(python, dir.path(), "json", &output)?;
    let report: Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    if report["schema"] != "gilscope.processes/5" {
        return Err(format!("schema {}", report["schema"]).into());
    }
    let all = processes(&report)?;
    let root = &all[0];
    if root["target"]["python_version"] != python.version.as_str() {
        return Err(format!("root process: {}", root["target"]).into());
    }
    let outer: Vec<&String> = report.as_object().ok_or("not an object")?.keys().collect();
    if outer != ["processes", "schema"] {
        return Err(format!("gilscope.processes/5 has fields {outer:?}").into());
    }
    for process in all {
        matches_documented_schema(process, "docs/JSON_SCHEMA.md")?;
    }
    let mut exited = 0;
    let mut judged = 0;
    for (pid, tids) in &workers {
        let process = process_of(&report, *pid).ok_or_else(|| {
            let found: Vec<&Value> = all.iter().map(|p| &p["target"]["pid"]).collect();
            format!("worker {pid} is not in the report (processes {found:?})")
        })?;
        if process["sampler"]["ended"] == "target_exited" {
            exited += 1;
        }
        for tid in tids {
            let row = process["threads"]
                .as_array()
                .and_then(|rows| rows.iter().find(|t| t["native_id"].as_i64() == Some(*tid)))
                .ok_or_else(|| format!("worker {pid}: spinner {tid} missing"))?;
            let (hold, wait) = (fraction(row, "hold"), fraction(row, "wait"));
            let samples = row["samples"].as_u64().unwrap_or(0);
            // A worker found late (a loaded host delays the attach, and a worker lives a
            // second) leaves too few ticks of its spinners to judge their shares by.
            if samples < MIN_SHARE_SAMPLES {
                continue;
            }
            judged += 1;
            // Two pure-Python threads: each holds or waits for the GIL whenever it exists,
            // and each has its turns. (How evenly depends on how the host schedules them:
            // 0.14 / 0.86 on a loaded one; a worker's life is one second.)
            if hold + wait < 0.9 || hold < 0.05 || wait < 0.05 {
                return Err(format!(
                    "worker {pid} spinner {tid}: hold {hold} wait {wait} over {samples} \
                     ticks: not sharing the GIL"
                )
                .into());
            }
        }
    }
    if exited < workers.len() {
        return Err(format!("{exited} of {} workers are marked exited", workers.len()).into());
    }
    // Most workers are found early enough to be judged; four spinners at least.
    if judged < 4 {
        return Err(
            format!("only {judged} spinners were seen for {MIN_SHARE_SAMPLES} ticks").into(),
        );
    }
    // The main process only waits on the pool's results.
    let main = root["threads"]
        .as_array()
        .and_then(|rows| rows.iter().find(|t| t["name"] == "MainThread"))
        .ok_or("the root has no MainThread")?;
    // Between its waits it hands out tasks and logs results, for longer on a loaded host
    // (0.83 idle beside other work, 0.95 quiet): mostly idle, whatever the host.
    if fraction(main, "idle") < 0.6 {
        return Err(format!("the pool's main thread is idle {}", fraction(main, "idle")).into());
    }
    Ok(())
}

/// A shell script that sleeps, then runs Python: the recording starts before any Python
/// exists, finds the interpreter when it appears, and measures its spinners.
fn late_python(python: &Python) -> Result<(), Failed> {
    late_spinners(python, None)
}

/// The same when the shell execs Python after 3 s: its own process becomes Python, later than
/// a starting program is waited for.
fn late_exec(python: &Python) -> Result<(), Failed> {
    late_spinners(python, Some("exec"))
}

fn late_spinners(python: &Python, exec: Option<&str>) -> Result<(), Failed> {
    let delay = if exec.is_some() { "3" } else { "1" };
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("late.json");
    let script = fixture_path("late_python").with_extension("sh");
    let out = gilscope(&[
        "record",
        "--subprocesses",
        "--duration",
        GUARD_S,
        "-o",
        output.to_str().ok_or("path")?,
        "--",
        "sh",
        script.to_str().ok_or("path")?,
        python.path.to_str().ok_or("path")?,
        delay,
        "2",
        exec.unwrap_or(""),
    ]);
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    let all = processes(&report)?;
    if all.len() != 1 {
        return Err(format!("{} processes: only the Python child is Python", all.len()).into());
    }
    let process = &all[0];
    let command = process["target"]["command_line"].as_str().unwrap_or("");
    if !command.contains("spinners.py") {
        return Err(format!("the process found runs {command:?}").into());
    }
    let spinners: Vec<&Value> = process["threads"]
        .as_array()
        .ok_or("no threads")?
        .iter()
        .filter(|t| {
            t["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("spinner-"))
        })
        .collect();
    if spinners.len() != 3 {
        return Err(format!("{} spinner threads, the fixture starts 3", spinners.len()).into());
    }
    let held = process["gil"]["held"].as_f64().unwrap_or(0.0);
    if held < 0.9 {
        return Err(format!("three spinners held the GIL only {held} of the time").into());
    }
    if process["duration_s"].as_f64().unwrap_or(0.0) < 1.0 {
        return Err(format!("recorded only {} s of a 2 s run", process["duration_s"]).into());
    }
    Ok(())
}

/// Each stack format puts each process at its root, with its pid.
fn formats(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let folded = dir.path().join("pool.folded");
    let workers = record_pool(python, dir.path(), "collapsed", &folded)?;
    let text = std::fs::read_to_string(&folded)?;
    let mut roots = BTreeSet::new();
    for line in text.lines() {
        let root = line.split(';').next().unwrap_or("");
        let pid = root
            .rsplit_once("(pid ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .and_then(|pid| pid.parse::<i64>().ok())
            .ok_or_else(|| format!("a stack without a process root: {line}"))?;
        roots.insert(pid);
    }
    for (pid, _) in &workers {
        if !roots.contains(pid) {
            return Err(format!("worker {pid} has no stacks in the folded output").into());
        }
    }
    let trace = dir.path().join("pool.trace.json");
    let workers = record_pool(python, dir.path(), "chrometrace", &trace)?;
    let trace: Value = serde_json::from_slice(&std::fs::read(&trace)?)?;
    let events = trace["traceEvents"].as_array().ok_or("no events")?;
    for (pid, tids) in &workers {
        let named = events
            .iter()
            .any(|e| e["name"] == "process_name" && e["pid"].as_i64() == Some(*pid));
        let spans = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"].as_i64() == Some(*pid))
            .filter(|e| tids.contains(&e["tid"].as_i64().unwrap_or(0)))
            .count();
        if !named || spans == 0 {
            return Err(
                format!("worker {pid}: named {named}, {spans} spans of its spinners").into(),
            );
        }
    }
    // One time axis: each process's spans start when it was sampled first, so the last
    // generation of workers starts well after the first one (tasks last 1 s).
    let first_span = |pid: i64| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"].as_i64() == Some(pid))
            .filter_map(|e| e["ts"].as_f64())
            .fold(f64::INFINITY, f64::min)
    };
    let starts: Vec<f64> = workers.iter().map(|(pid, _)| first_span(*pid)).collect();
    let earliest = starts.iter().copied().fold(f64::INFINITY, f64::min);
    let latest = starts.iter().copied().fold(0.0, f64::max);
    if latest - earliest < 500_000.0 {
        return Err(format!("workers' first spans at {starts:?} µs: not on one time axis").into());
    }
    for (format, file) in [
        ("flamegraph", "pool.svg"),
        ("timeline", "pool.timeline.svg"),
        ("speedscope", "pool.speedscope.json"),
    ] {
        let path = dir.path().join(file);
        let workers = record_pool(python, dir.path(), format, &path)?;
        let body = std::fs::read_to_string(&path)?;
        for (pid, _) in &workers {
            if !body.contains(&format!("(pid {pid})")) {
                return Err(format!("the {format} output does not name worker {pid}").into());
            }
        }
    }
    let text = dir.path().join("pool.txt");
    let workers = record_pool(python, dir.path(), "text", &text)?;
    let body = std::fs::read_to_string(&text)?;
    if !body.starts_with("gilscope: ") || !body.contains(" Python processes\n") {
        return Err(format!("text report heading: {:?}", body.lines().next()).into());
    }
    for (pid, _) in &workers {
        if !body.contains(&format!("gilscope: pid {pid} - Python")) {
            return Err(format!("the text report has no section for worker {pid}").into());
        }
    }
    Ok(())
}

/// The threads of one process of a dump named `spinner-N`.
fn spinners_of(process: &Value) -> usize {
    process["threads"].as_array().map_or(0, |threads| {
        threads
            .iter()
            .filter(|t| {
                t["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("spinner-"))
            })
            .count()
    })
}

/// `dump --subprocesses` shows the pool's main process and its live workers, each process's
/// document as DUMP_SCHEMA.md has it.
fn dump_tree(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "pool", &["--duration", "60", "--task", "30"])?;
    let pid = fx.pid.to_string();
    // The main process announces itself before its workers have forked and started their
    // spinners (a second or more on a busy host): dump until both are there, for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (dump, workers) = loop {
        let out = gilscope_ok(&["dump", "--pid", &pid, "--subprocesses", "--json"])?;
        let dump: Value = serde_json::from_str(&stdout_of(&out))?;
        if dump["schema"] != "gilscope.dumps/4" {
            return Err(format!("schema {}", dump["schema"]).into());
        }
        let workers = processes(&dump)?
            .iter()
            .filter(|p| spinners_of(p) == 2)
            .count();
        if workers == 2 || Instant::now() > deadline {
            break (dump, workers);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let all = processes(&dump)?;
    if all[0]["target"]["pid"].as_i64() != Some(fx.pid as i64) {
        return Err("the pid given is not the first process".into());
    }
    // The two workers, each with its two spinners (and perhaps multiprocessing's helpers).
    if workers != 2 {
        return Err(format!("{workers} workers with two spinners in the dump after 30 s").into());
    }
    for process in all {
        matches_documented_schema(process, "docs/DUMP_SCHEMA.md")?;
    }
    let out = gilscope_ok(&["dump", "--pid", &pid, "--subprocesses"])?;
    let text = stdout_of(&out);
    if !text.starts_with(&format!("gilscope: {} Python processes", all.len())) {
        return Err(format!("text dump heading: {:?}", text.lines().next()).into());
    }
    Ok(())
}

/// `record --pid` of a shell that starts Python after recording began.
fn by_pid(python: &Python) -> Result<(), Failed> {
    let script = fixture_path("late_python").with_extension("sh");
    let mut shell = Command::new("sh")
        .arg(&script)
        .arg(&python.path)
        .args(["1", "2"])
        .stdout(Stdio::null())
        .spawn()?;
    let pid = shell.id().to_string();
    let out = gilscope(&[
        "record",
        "--pid",
        &pid,
        "--subprocesses",
        "--duration",
        GUARD_S,
        "-f",
        "json",
    ]);
    let _ = shell.kill();
    let _ = shell.wait();
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let all = processes(&report)?;
    let found = all.iter().any(|p| {
        p["target"]["command_line"]
            .as_str()
            .is_some_and(|c| c.contains("spinners.py"))
            && p["gil"]["held"].as_f64().unwrap_or(0.0) > 0.9
    });
    if !found {
        return Err(format!("no spinners process under the shell: {report}").into());
    }
    // The recording ended with the shell's tree, not at the guard's timeout.
    if all.iter().any(|p| p["sampler"]["ended"] != "target_exited") {
        return Err(format!("the recording outlived the shell's tree: {report}").into());
    }
    Ok(())
}

/// A tree with no Python in it is refused in one line, with the exit code of "not Python".
fn no_python(_: &Python) -> Result<(), Failed> {
    let mut sleeper = Command::new("sleep").arg("30").spawn()?;
    let pid = sleeper.id().to_string();
    let out = gilscope(&["dump", "--pid", &pid, "--subprocesses"]);
    let record = gilscope(&["record", "--pid", &pid, "--subprocesses", "-d", "0.5"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    for (what, out) in [("dump", out), ("record", record)] {
        let err = stderr_of(&out);
        if out.status.code() != Some(5) || !err.contains("no Python process was found") {
            return Err(format!("{what}: exit {:?}: {err}", out.status.code()).into());
        }
    }
    Ok(())
}
