//! Reliability end to end: targets that exec or churn threads, gilscope killed in the middle
//! of a recording, output files replaced only whole, and memory that stays bounded.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use common::{fixture_path, gilscope, stderr_of, stdout_of, Fixture, Python};

/// Sampling rate of the churn and kill tests: the highest a user would ask for with stacks.
const RATE_HZ: f64 = 1000.0;

type Test = fn(&Python) -> Result<(), Failed>;

fn main() {
    let pythons = common::pythons();
    let mut trials: Vec<Trial> = Vec::new();
    let per_version: [(&str, Test); 2] = [
        (
            "a_target_that_execs_ends_the_recording_with_a_note",
            exec_note,
        ),
        ("thread_churn_reports_no_thread_after_it_ended", churn),
    ];
    // Each on half of the layout families in the default pass, the two halves crossed; CI's
    // second pass runs each on the rest.
    for (part, (name, test)) in per_version.into_iter().enumerate() {
        trials.extend(common::turn_trials(&pythons, 2, part, name, test));
    }
    let once: [(&str, Test); 14] = [
        (
            "a_started_command_ends_with_a_gilscope_killed_by_sigkill",
            orphan,
        ),
        (
            "a_stopped_target_is_stopped_not_holding_or_waiting",
            stopped_target,
        ),
        (
            "a_target_with_more_threads_than_gilscope_may_open_files_is_measured",
            more_threads_than_files,
        ),
        (
            "a_python_that_execs_from_another_thread_is_followed_as_a_new_process",
            exec_from_thread,
        ),
        (
            "an_exec_without_address_randomisation_ends_the_recording",
            exec_without_aslr,
        ),
        (
            "a_pid_reused_by_another_process_is_an_exit_not_an_exec",
            pid_reused,
        ),
        (
            "a_process_whose_main_thread_exited_is_measured",
            main_thread_exited,
        ),
        (
            "the_duration_ends_a_recording_before_a_slow_rate_s_next_tick",
            duration_before_tick,
        ),
        (
            "a_second_sigterm_while_the_report_is_written_is_ignored",
            second_sigterm,
        ),
        (
            "a_run_killed_while_writing_leaves_no_temporary_file_behind",
            killed_while_writing,
        ),
        (
            "a_python_that_execs_python_is_followed_as_a_new_process",
            exec_followed,
        ),
        (
            "sigkill_mid_recording_leaves_the_target_running_and_the_old_output",
            sigkill,
        ),
        (
            "sigterm_ends_the_recording_and_replaces_the_output_whole",
            sigterm,
        ),
        (
            "a_long_recording_of_thread_churn_keeps_its_memory_bounded",
            long_churn_memory,
        ),
    ];
    for (name, test) in once {
        trials.push(common::on_cli_python(&pythons, name, move |python| {
            test(python).map(|()| Completion::Completed)
        }));
    }
    // A copy of an interpreter that runs on its own (the system's, statically linked).
    let standalone = pythons
        .found
        .iter()
        .find(|p| p.label.starts_with("system-"))
        .cloned();
    // A build whose `_Py_DebugOffsets` say where the thread list's head is (3.13 on).
    let with_debug_offsets = pythons
        .found
        .iter()
        .find(|p| {
            let minor = p
                .version
                .split('.')
                .nth(1)
                .and_then(|m| m.parse::<u32>().ok());
            p.version.starts_with("3.") && minor.is_some_and(|m| m >= 13)
        })
        .cloned();
    // Each needs one kind of interpreter; a machine without it skips the test and says so.
    // The `rest` pass of the matrix only completes the default, which ran these.
    let rest = common::matrix_mode() == common::Matrix::Rest;
    let on = |python: &Option<Python>, lacking: &'static str, test: Test| {
        let python = python.clone();
        move || match &python {
            _ if rest => Ok(Completion::ignored_with("in the default matrix")),
            Some(python) => {
                let _exclusive = common::exclusive();
                test(python).map(|()| Completion::Completed)
            }
            None => Ok(Completion::ignored_with(lacking)),
        }
    };
    trials.push(Trial::ignorable_test(
        "a_corrupt_thread_list_is_an_error_not_an_exit",
        on(
            &with_debug_offsets,
            "no CPython 3.13 or later to corrupt the thread list of",
            corrupt_thread_list,
        ),
    ));
    trials.push(Trial::ignorable_test(
        "a_program_name_sends_no_escape_sequence_to_the_terminal",
        on(
            &standalone,
            "no statically linked system python3 to copy under a hostile name",
            escapes_in_program_names,
        ),
    ));
    trials.push(Trial::ignorable_test(
        "a_target_that_replaces_its_program_with_a_fifo_cannot_hang_gilscope",
        on(
            &standalone,
            "no statically linked system python3 to copy",
            fifo_over_program,
        ),
    ));
    common::Suite::run_trials(trials);
}

/// A script in `dir` that announces itself like a fixture, spins in a thread, and after
/// `after` seconds execs `program` with `args`.
fn exec_script(dir: &Path, after: f64, program: &str, args: &[&str]) -> Result<PathBuf, Failed> {
    let script = dir.join("execs.py");
    let argv: Vec<String> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| format!("{a:?}"))
        .collect();
    std::fs::write(
        &script,
        format!(
            "import json, os, sys, threading, time\n\
             def spin():\n    while True:\n        pass\n\
             t = threading.Thread(target=spin)\nt.daemon = True\nt.start()\n\
             print(json.dumps({{'fixture': 'execs', 'pid': os.getpid(), 'threads': {{}}, \
             'facts': {{}}}}), flush=True)\n\
             time.sleep({after})\n\
             os.execv({program:?}, [{}])\n",
            argv.join(", ")
        ),
    )?;
    Ok(script)
}

/// `record --pid` of a Python that execs `sleep`: the recording ends at the exec, not at
/// --duration, says so, and keeps what it measured before.
fn exec_note(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let script = exec_script(dir.path(), 1.5, "/bin/sleep", &["30"])?;
    let fx = Fixture::start_script(&python.path, &script, &[])?;
    let out = gilscope(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "20",
        "--format",
        "json",
    ]);
    let stderr = stderr_of(&out);
    if !out.status.success() {
        return Err(format!("exit {}: {stderr}", out.status).into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let (ended, samples, errors) = (
        &report["sampler"]["ended"],
        report["samples"].as_u64().unwrap_or(0),
        report["sampler"]["errors"].as_u64().unwrap_or(u64::MAX),
    );
    // 1.5 s at 100 Hz before the exec; the spinner held the GIL all that time.
    if ended != "target_execed" || samples < 50 || report["duration_s"].as_f64() > Some(10.0) {
        return Err(format!("ended {ended} after {samples} samples: {stderr}").into());
    }
    if !stderr.contains(&format!("process {} exec'd another program", fx.pid)) {
        return Err(format!("no note of the exec: {stderr}").into());
    }
    // The ticks that met the new program's memory are not counted as the target's errors.
    if errors > 5 {
        return Err(format!("{errors} errors around the exec").into());
    }
    if report["gil"]["held"].as_f64().unwrap_or(0.0) < 0.8 {
        return Err(format!("held {} before the exec", report["gil"]["held"]).into());
    }
    Ok(())
}

/// With --subprocesses, a Python that execs another Python (a re-exec, a launcher) is
/// recorded as two processes with one pid: the first ends at the exec, the second runs the
/// new program to its end.
fn exec_followed(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let single = fixture_path("single");
    let python_path = python.path.to_str().ok_or("path")?;
    let script = exec_script(
        dir.path(),
        1.5,
        python_path,
        &[single.to_str().ok_or("path")?, "--duration", "2"],
    )?;
    let output = dir.path().join("r.json");
    let out = Command::new(common::gilscope_bin())
        .args(["record", "--subprocesses", "--duration", "30", "-o"])
        .arg(&output)
        .args(["--format", "json", "--", python_path])
        .arg(&script)
        .env("PYTHONPATH", single.parent().ok_or("fixtures")?)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    let processes = report["processes"].as_array().ok_or("no processes")?;
    let summary: Vec<String> = processes
        .iter()
        .map(|p| {
            format!(
                "pid {} {} ended {} samples {}",
                p["target"]["pid"],
                p["target"]["command_line"],
                p["sampler"]["ended"],
                p["samples"]
            )
        })
        .collect();
    let [before, after] = processes.as_slice() else {
        return Err(format!("expected two processes: {summary:?}").into());
    };
    if before["target"]["pid"] != after["target"]["pid"]
        || before["sampler"]["ended"] != "target_execed"
        || !after["target"]["command_line"]
            .as_str()
            .unwrap_or("")
            .contains("single.py")
        || after["sampler"]["ended"] == "duration"
        || after["samples"].as_u64().unwrap_or(0) < 50
    {
        return Err(format!("{summary:?}").into());
    }
    Ok(())
}

/// When the kernel freed each thread, from the sched_process_free tracepoint in a private
/// ftrace instance (CLOCK_MONOTONIC, as gilscope's tick times). A thread leaves
/// /proc/PID/task when it is unhashed at exit, and is freed an RCU grace period later, so no
/// listing that started after the free can show it. (sched_process_exit fires earlier in
/// do_exit: on a loaded machine the thread was seen listed 2-3 ms after it.) Removed on drop.
struct ExitTracer {
    instance: PathBuf,
}

impl ExitTracer {
    fn start() -> Result<ExitTracer, String> {
        let root = Path::new("/sys/kernel/tracing");
        if !root.join("instances").is_dir() {
            return Err("tracefs is not mounted at /sys/kernel/tracing".into());
        }
        let instance = root
            .join("instances")
            .join(format!("gilscope_exits_{}", std::process::id()));
        match std::fs::create_dir(&instance) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("ftrace instance: {e}")),
        }
        let tracer = ExitTracer { instance };
        for (file, value) in [
            ("trace_clock", "mono"),
            ("buffer_size_kb", "16384"),
            ("events/sched/sched_process_free/enable", "1"),
            ("tracing_on", "1"),
        ] {
            std::fs::write(tracer.instance.join(file), value)
                .map_err(|e| format!("{file}: {e}"))?;
        }
        Ok(tracer)
    }

    /// tid -> time (ns) it was freed, for every thread freed since the start.
    fn exits(&self) -> Result<HashMap<i32, u64>, String> {
        let text = std::fs::read_to_string(self.instance.join("trace"))
            .map_err(|e| format!("trace: {e}"))?;
        Ok(text.lines().filter_map(parse_exit).collect())
    }
}

impl Drop for ExitTracer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.instance.join("tracing_on"), "0");
        let _ = std::fs::remove_dir(&self.instance);
    }
}

/// `<idle>-0 [001] ..s1. 9915.700340: sched_process_free: comm=x pid=123 prio=120`
fn parse_exit(line: &str) -> Option<(i32, u64)> {
    let (head, event) = line.split_once(": sched_process_free: ")?;
    let stamp = head.split_whitespace().last()?;
    let (secs, micros) = stamp.split_once('.')?;
    let time_ns = secs.parse::<u64>().ok()? * 1_000_000_000 + micros.parse::<u64>().ok()? * 1000;
    let pid = event
        .split_whitespace()
        .find_map(|f| f.strip_prefix("pid="))?;
    Some((pid.parse().ok()?, time_ns))
}

/// Each short-lived thread the churn fixture logged: tid -> (created, ended) in ns, where
/// "ended" is when its Python work ended (the OS thread lives a little longer).
fn churn_log(path: &Path) -> Result<HashMap<i32, (u64, u64)>, Failed> {
    let text = std::fs::read_to_string(path)?;
    let ns = |v: &Value| (v.as_f64().unwrap_or(0.0) * 1e9) as u64;
    text.lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line)?;
            let tid = entry["tid"].as_i64().ok_or("no tid")? as i32;
            Ok((tid, (ns(&entry["created"]), ns(&entry["end"]))))
        })
        .collect()
}

/// Wait for `child` for at most `limit`; kill it and fail if it is still running.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> Result<(), Failed> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{what} did not end within {} s: a hang", limit.as_secs()).into())
}

/// Hundreds of threads started and ended a second (8 s on the versions whose thread ids are
/// hardest to follow, 5 s elsewhere): gilscope does not crash or hang, reports errors that
/// stay bounded, reports no thread it did not see (every thread row is a thread the fixture
/// started) and never lists a thread after the kernel freed it.
fn churn(python: &Python) -> Result<(), Failed> {
    // Hundreds of threads a second: 8 s is thousands of thread lives, each a chance to
    // list a thread the kernel freed (the long recording below runs for minutes).
    let long = ["3.6.", "3.12.", "3.13."]
        .iter()
        .any(|v| python.version.starts_with(v));
    let secs: u64 = if long { 8 } else { 5 };
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("churn.log");
    let observations = dir.path().join("ticks.jsonl");
    let exits = ExitTracer::start();
    let fx = Fixture::start(
        &python.path,
        "churn",
        &[
            "--duration",
            &(secs + 2).to_string(),
            "--log",
            log.to_str().ok_or("path")?,
        ],
    )?;
    let mut recorder = Command::new(common::gilscope_bin())
        .args(["record", "--pid", &fx.pid.to_string(), "--format", "json"])
        .args([
            "--rate",
            &RATE_HZ.to_string(),
            "--duration",
            &secs.to_string(),
        ])
        .arg("--observations")
        .arg(&observations)
        .arg("-o")
        .arg(dir.path().join("r.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_bounded(&mut recorder, Duration::from_secs(secs + 60), "gilscope")?;
    let out = recorder.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let mut fixture = fx;
    wait_bounded(
        &mut fixture.child,
        Duration::from_secs(30),
        "the churn fixture",
    )?;
    let lives = churn_log(&log)?;
    // Hundreds a second on a quiet host; a loaded one starts fewer (45 a second at a load of
    // 17), still hundreds of lives to check.
    if lives.len() < 200 {
        return Err(format!(
            "the fixture started only {} threads in {secs} s",
            lives.len()
        )
        .into());
    }
    let report: Value = serde_json::from_slice(&std::fs::read(dir.path().join("r.json"))?)?;
    let samples = report["samples"].as_u64().unwrap_or(0);
    let errors = report["sampler"]["errors"].as_u64().unwrap_or(u64::MAX);
    let stack_errors = report["sampler"]["stack_errors"].as_u64();
    if samples < secs * 100 || errors > samples / 100 || stack_errors.is_none() {
        return Err(
            format!("samples {samples}, errors {errors}, stack errors {stack_errors:?}").into(),
        );
    }
    let known: BTreeSet<i32> = fixture
        .threads
        .values()
        .copied()
        .chain(lives.keys().copied())
        .collect();
    let threads = report["threads"].as_array().ok_or("no threads")?;
    let strangers: Vec<i64> = threads
        .iter()
        .filter_map(|t| t["native_id"].as_i64())
        .filter(|&tid| tid != 0 && !known.contains(&(tid as i32)))
        .collect();
    if !strangers.is_empty() {
        return Err(format!("threads the fixture never started: {strangers:?}").into());
    }
    let exits = match exits.and_then(|tracer| tracer.exits()) {
        Ok(exits) => exits,
        Err(why) => {
            eprintln!("  (no kernel free times: {why}; the after-exit check is skipped)");
            return Ok(());
        }
    };
    // Every tick that listed a short thread started before it exited, and ended after it
    // was created.
    let mut checked = 0;
    for line in std::fs::read_to_string(&observations)?.lines() {
        let tick: Value = serde_json::from_str(line)?;
        let (start, end) = (
            tick["start_ns"].as_u64().unwrap_or(0),
            tick["end_ns"].as_u64().unwrap_or(0),
        );
        for tid in tick["threads"]
            .as_array()
            .ok_or("no threads in a tick")?
            .iter()
            .filter_map(|t| t["tid"].as_i64())
        {
            let tid = tid as i32;
            let Some(&(created, _)) = lives.get(&tid) else {
                continue;
            };
            let Some(&exit) = exits.get(&tid) else {
                continue;
            };
            checked += 1;
            if start > exit || end < created {
                return Err(format!(
                    "thread {tid} listed by the tick at {start}..{end} ns; it was created \
                     at {created} and freed at {exit} ns"
                )
                .into());
            }
        }
    }
    // Enough sightings to mean something: a loaded host ticks less often in a thread's
    // short life (1,033 sightings of 2,097 lives on 3.15 under load).
    if checked < 200 {
        return Err(format!(
            "only {checked} sightings of {} short threads could be checked (free events: {})",
            lives.len(),
            exits.len()
        )
        .into());
    }
    Ok(())
}

/// The state letters of every thread of `pid` (from /proc/PID/task/*/stat).
fn task_states(pid: i32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            stat.rsplit_once(") ")?.1.chars().next()
        })
        .collect()
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Start recording `fx` at 1 kHz with stacks into `output`, and let it run 1.5 s.
fn recording_into(fx: &Fixture, output: &Path) -> Result<Child, Failed> {
    let child = Command::new(common::gilscope_bin())
        .args(["record", "--pid", &fx.pid.to_string(), "--rate", "1000"])
        .arg("-o")
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    Ok(child)
}

/// gilscope killed with SIGKILL in the middle of a recording: the target is not stopped or
/// traced and goes on running, and the file given to -o is the old one, untouched, with no
/// temporary file left beside it.
fn sigkill(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("report.json");
    std::fs::write(&output, "the previous report\n")?;
    let mut child = recording_into(&fx, &output)?;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL)?;
    child.wait()?;
    std::thread::sleep(Duration::from_millis(200));
    let states = task_states(fx.pid);
    if states.is_empty() || states.iter().any(|s| matches!(s, 'T' | 't' | 'Z' | 'X')) {
        return Err(format!("target threads in states {states:?} after the kill").into());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", fx.pid))?;
    if !status.lines().any(|l| l == "TracerPid:\t0") {
        return Err("the target is being traced after the kill".into());
    }
    // It runs on: its spinners go on using CPU (a stopped target uses none). On a loaded
    // host they get a share of a CPU, not a whole one: wait for 10 ticks of 10 ms, bounded.
    let before = cpu_ticks(fx.pid).ok_or("no cpu time")?;
    let start = Instant::now();
    let mut used = 0;
    while used < 10 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        used = cpu_ticks(fx.pid).ok_or("no cpu time")? - before;
    }
    if used < 10 {
        return Err(format!("the target used {used} ticks in 10 s after the kill").into());
    }
    if std::fs::read_to_string(&output)? != "the previous report\n" {
        return Err("the old report was changed by a recording that never finished".into());
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if files.len() != 1 {
        return Err(format!("files left beside the report: {files:?}").into());
    }
    Ok(())
}

/// SIGTERM ends a recording like Ctrl-C: exit 0, and the old file at -o is replaced by the
/// whole new report (read while being replaced, it is either one or the other).
fn sigterm(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("report.json");
    std::fs::write(&output, "the previous report\n")?;
    let child = recording_into(&fx, &output)?;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
    // Watch the file while gilscope writes it: never empty, never a part.
    let watcher_path = output.clone();
    let watcher = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(text) = std::fs::read_to_string(&watcher_path) {
                let kind = if text == "the previous report\n" {
                    "old"
                } else if serde_json::from_str::<Value>(&text).is_ok() {
                    "new"
                } else {
                    "partial"
                };
                seen.insert(kind);
                if kind == "new" {
                    break;
                }
            }
        }
        seen
    });
    let out = child.wait_with_output()?;
    let seen = watcher.join().map_err(|_| "watcher")?;
    if !out.status.success() {
        return Err(format!("exit {} after SIGTERM: {}", out.status, stderr_of(&out)).into());
    }
    if seen.contains("partial") {
        return Err(format!("a reader saw a partial report: {seen:?}").into());
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&output)?)?;
    if report["sampler"]["ended"] != "interrupted" || report["samples"].as_u64() < Some(500) {
        return Err(format!(
            "ended {} with {} samples",
            report["sampler"]["ended"], report["samples"]
        )
        .into());
    }
    Ok(())
}

/// Two SIGTERMs a moment apart (`timeout` signals gilscope and its process group; a
/// terminal's Ctrl-C does too): the first ends the recording, the second is ignored while
/// the report is written. Before, the second ended gilscope at once with 130 and no report.
/// The report goes to a FIFO whose reader waits, so that the second signal comes while
/// gilscope is still writing.
fn second_sigterm(python: &Python) -> Result<(), Failed> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("report.svg");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)?;
    // The smallest pipe: a report longer than a page blocks its writer until it is read.
    nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))?;
    let child = recording_into(&fx, &fifo)?;
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(500));
    kill(pid, Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(100));
    // Read it all now, waiting for the writer (it writes or ends: no hang).
    let flags = nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_GETFL)?;
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(blocking))?;
    let mut report = Vec::new();
    reader.read_to_end(&mut report)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "exit {} after two SIGTERMs: {}",
            out.status,
            stderr_of(&out)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&report);
    if report.len() <= 4096 || !text.trim_end().ends_with("</svg>") {
        return Err(format!("a report of {} bytes: {text:.200}", report.len()).into());
    }
    Ok(())
}

/// gilscope killed with SIGKILL at 20 moments of its ending (0 to 19 ms after SIGTERM, when
/// it finishes the recording and writes the report): no temporary file is left beside the
/// output once the next run is over. Before, one kill in 20 left a `.gilscope-XXXXXX`.
fn killed_while_writing(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("report.json");
    let record = |duration: Option<&str>| {
        let mut command = Command::new(common::gilscope_bin());
        command
            .args(["record", "--pid", &fx.pid.to_string(), "-o"])
            .arg(&output)
            .args(duration.map(|d| vec!["--duration", d]).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn()
    };
    for delay_ms in 0..20 {
        let mut child = record(None)?;
        std::thread::sleep(Duration::from_millis(400));
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM)?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = kill(pid, Signal::SIGKILL);
        child.wait()?;
    }
    let status = record(Some("0.3"))?.wait()?;
    if !status.success() {
        return Err(format!("the run after the kills: {status}").into());
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if files != ["report.json"] {
        return Err(format!("files beside the report: {files:?}").into());
    }
    Ok(())
}

/// A program's name is its user's to choose: copies of the interpreter and of `sleep` named
/// with an OSC sequence (it sets a terminal's title; others answer back into its input),
/// BEL, a colour, U+202E and U+2028. `dump` and `record` of the Python copy (their headers
/// name the program) and `dump` of the `sleep` copy (the error names it) print none of
/// them raw, on standard output or error, and say the name escaped. Before, the headers and
/// the error wrote the name as it was, so a target could write escape sequences to root's
/// terminal.
fn escapes_in_program_names(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let name = "py\x1b]0;owned\x07\x1b[31m\u{202e}x\u{2028}y";
    let (copy, sleep_copy) = (
        dir.path().join(name),
        dir.path().join(format!("sleep{name}")),
    );
    std::fs::copy(&python.path, &copy)?;
    std::fs::copy("/bin/sleep", &sleep_copy)?;
    let mut targets = Vec::new();
    let mut start = |command: &mut Command| -> Result<String, Failed> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id().to_string();
        targets.push(child);
        Ok(pid)
    };
    let python_pid = start(Command::new(&copy).args(["-c", "import time; time.sleep(60)"]))?;
    let sleep_pid = start(Command::new(&sleep_copy).arg("60"))?;
    // The interpreter's start (its first thread state) before it is read.
    std::thread::sleep(Duration::from_millis(800));
    let runs = [
        vec!["dump", "--pid", &python_pid],
        vec!["record", "--pid", &python_pid, "--duration", "0.3"],
        vec!["dump", "--pid", &sleep_pid],
    ];
    let mut failures = Vec::new();
    for args in runs {
        let out = gilscope(&args);
        let all = format!("{}{}", stdout_of(&out), stderr_of(&out));
        let raw: Vec<char> = ['\x1b', '\x07', '\u{202e}', '\u{2028}']
            .into_iter()
            .filter(|&c| all.contains(c))
            .collect();
        if !raw.is_empty() || !all.contains("py\\u{1b}]0;owned\\u{7}") {
            failures.push(format!("{args:?}: raw {raw:?} in {all:?}"));
        }
    }
    for mut target in targets {
        let _ = target.kill();
        let _ = target.wait();
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// As `nobody`: a copy of the interpreter runs from a directory of theirs, then a FIFO (and
/// then a link to a device) is renamed over the copy. gilscope opens the file the target
/// mapped, never what is at its path now: `dump` works, as root and as root without
/// CAP_SYS_ADMIN (no /proc/PID/map_files: the path in the target's root is used, and what is
/// there is not a regular file any more, so the target is unreadable, exit 5). Nothing hangs.
/// Before, the open of the FIFO blocked for good.
fn fifo_over_program(python: &Python) -> Result<(), Failed> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root to act as another user".into());
    }
    let dir = tempfile::tempdir()?;
    nix::unistd::chown(dir.path(), Some(65534.into()), Some(65534.into()))?;
    let copy = dir.path().join("py");
    let nobody = |script: &str| {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let status = nobody(&format!("cp {} {}", python.path.display(), copy.display())).status()?;
    if !status.success() {
        return Err("cannot copy the interpreter as nobody".into());
    }
    let mut target = nobody(&format!(
        "exec {} -c 'import time; time.sleep(60)'",
        copy.display()
    ))
    .spawn()?;
    std::thread::sleep(Duration::from_millis(800));
    let pid = target.id().to_string();
    let mut failures = Vec::new();
    let without_admin = [
        "setpriv",
        "--inh-caps=-sys_admin,-checkpoint_restore",
        "--bounding-set=-sys_admin,-checkpoint_restore",
    ];
    for replacement in ["mkfifo {}.new", "ln -s /dev/zero {}.new"] {
        let swap = format!(
            "{} && mv -f {}.new {}",
            replacement.replace("{}", &copy.display().to_string()),
            copy.display(),
            copy.display()
        );
        nobody(&swap).status()?;
        for (label, prefix) in [
            ("root", &[][..]),
            ("without CAP_SYS_ADMIN", &without_admin[..]),
        ] {
            let (program, args) = match prefix.split_first() {
                Some((first, rest)) => (first.to_string(), rest.to_vec()),
                None => (common::gilscope_bin().to_string(), Vec::new()),
            };
            let mut command = Command::new(program);
            command.args(args);
            if !prefix.is_empty() {
                command.arg(common::gilscope_bin());
            }
            let mut child = command
                .args(["dump", "--pid", &pid])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if wait_bounded(&mut child, Duration::from_secs(20), "gilscope dump").is_err() {
                failures.push(format!("{replacement}, {label}: hung"));
                continue;
            }
            let out = child.wait_with_output()?;
            let expected = if prefix.is_empty() { Some(0) } else { Some(5) };
            if out.status.code() != expected {
                failures.push(format!(
                    "{replacement}, {label}: exit {}: {}",
                    out.status,
                    stderr_of(&out)
                ));
            }
        }
    }
    let _ = target.kill();
    let _ = target.wait();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// `--rate 1 --duration 0.05`: the second tick is due 0.5 to 1.5 s after the first, the
/// recording ends at 0.05 s. gilscope ends soon after it says it started sampling: well
/// within the half second that the next tick would have taken at the earliest. Before, it
/// waited for that tick (`--rate 0.1 --duration 1` took 15 s).
fn duration_before_tick(python: &Python) -> Result<(), Failed> {
    use std::io::BufRead;
    let fx = Fixture::start(&python.path, "single", &["--duration", "60"])?;
    let mut child = Command::new(common::gilscope_bin())
        .args(["record", "--pid", &fx.pid.to_string(), "--rate", "1"])
        .args(["--duration", "0.05", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().ok_or("stderr")?);
    let mut line = String::new();
    stderr.read_line(&mut line)?;
    let started = Instant::now();
    if !line.contains("sampling process") {
        return Err(format!("unexpected: {line}").into());
    }
    let status = child.wait()?;
    let took = started.elapsed();
    if !status.success() || took >= Duration::from_millis(450) {
        return Err(format!("{status} after {} ms", took.as_millis()).into());
    }
    Ok(())
}

/// A script that announces itself like a fixture (its main thread's tid as "main"), then
/// runs `body` (Python source, indented by four spaces in a function).
fn script_fixture(dir: &Path, name: &str, body: &str) -> Result<PathBuf, Failed> {
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "import ctypes, json, os, sys, threading, time\n\
             from gilfixture import native_id\n\
             def spin(seconds):\n    end = time.time() + seconds\n    while time.time() < end:\n        pass\n\
             print(json.dumps({{'fixture': {name:?}, 'pid': os.getpid(), \
             'threads': {{'main': native_id()}}, 'facts': {{}}}}), flush=True)\n\
             def body():\n{body}\n\
             body()\n"
        ),
    )?;
    Ok(script)
}

/// With --subprocesses, a Python whose exec comes from a thread other than the main one (the
/// kernel ends the other 200 threads first, and for that while the process cannot be read)
/// is followed into its new program. Before, the tick that found it unreadable called it
/// exited, and the new program was never followed (2 runs in 36; every run with 200 threads).
fn exec_from_thread(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let single = fixture_path("single");
    let body = format!(
        "    for _ in range(200):\n        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
         \x20   threading.Thread(target=spin, args=(60,), daemon=True).start()\n\
         \x20   time.sleep(1.5)\n\
         \x20   argv = [sys.executable, {:?}, '--duration', '2']\n\
         \x20   threading.Thread(target=os.execv, args=(sys.executable, argv)).start()\n\
         \x20   time.sleep(60)",
        single.display()
    );
    let script = script_fixture(dir.path(), "thread_exec.py", &body)?;
    let output = dir.path().join("r.json");
    let python_path = python.path.to_str().ok_or("path")?;
    let out = Command::new(common::gilscope_bin())
        .args(["record", "--subprocesses", "--duration", "30", "-o"])
        .arg(&output)
        .args(["--format", "json", "--", python_path])
        .arg(&script)
        .env("PYTHONPATH", single.parent().ok_or("fixtures")?)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    let processes = report["processes"].as_array().ok_or("no processes")?;
    let summary: Vec<String> = processes
        .iter()
        .map(|p| {
            format!(
                "{} ended {} samples {}",
                p["target"]["command_line"], p["sampler"]["ended"], p["samples"]
            )
        })
        .collect();
    let [before, after] = processes.as_slice() else {
        return Err(format!("expected two processes: {summary:?}").into());
    };
    if before["sampler"]["ended"] != "target_execed"
        || !after["target"]["command_line"]
            .as_str()
            .unwrap_or("")
            .contains("single.py")
        || after["samples"].as_u64().unwrap_or(0) < 50
    {
        return Err(format!("{summary:?}").into());
    }
    Ok(())
}

/// `setarch -R` (no address space randomisation): the Python execs the same interpreter
/// with arguments of the same lengths, so the new program's stack is laid out exactly as the
/// old one's. `record --pid` ends at the exec. Before, the exec went unseen (the address of
/// the kernel's random bytes, all gilscope compared, was the same), and the new program was
/// read at the old one's addresses to the end of --duration.
fn exec_without_aslr(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    // The new program says nothing (the test stopped reading the fixture's output).
    std::fs::write(
        dir.path().join("b.py"),
        "import time\nend = time.time() + 30\nwhile time.time() < end:\n    pass\n",
    )?;
    let body = "    threading.Thread(target=spin, args=(60,), daemon=True).start()\n\
                \x20   time.sleep(1.5)\n\
                \x20   os.execv(sys.executable, [sys.executable, sys.argv[0].replace('a.py', 'b.py')])";
    let script = script_fixture(dir.path(), "a.py", body)?;
    let setarch = Path::new("/usr/bin/setarch");
    if !setarch.exists() {
        return Err("no setarch (util-linux)".into());
    }
    let python_path = python.path.to_str().ok_or("path")?;
    let script_path = script.to_str().ok_or("path")?;
    let fx = Fixture::start_command(setarch, &["-R", python_path, script_path])?;
    let out = gilscope(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "10",
        "--format",
        "json",
    ]);
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    if report["sampler"]["ended"] != "target_execed" || report["duration_s"].as_f64() > Some(5.0) {
        return Err(format!(
            "ended {} after {} s: {}",
            report["sampler"]["ended"],
            report["duration_s"],
            stderr_of(&out)
        )
        .into());
    }
    Ok(())
}

/// The target is killed and its pid given to a new process (`ns_last_pid`) before the next
/// tick (1 Hz): the recording says the target exited, not that it exec'd another program.
fn pid_reused(python: &Python) -> Result<(), Failed> {
    use std::io::BufRead;
    let mut target = Command::new(&python.path)
        .args(["-c", "import time; time.sleep(60)"])
        .stdin(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = target.id() as i32;
    let mut child = Command::new(common::gilscope_bin())
        .args(["record", "--pid", &pid.to_string(), "--rate", "1"])
        .args(["--duration", "30", "--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().ok_or("stderr")?);
    let mut line = String::new();
    stderr.read_line(&mut line)?;
    // The line is printed as sampling starts: after its first tick (at once), gilscope is
    // frozen while the pid changes hands, so its next tick always meets the new process.
    std::thread::sleep(Duration::from_millis(500));
    let gilscope_pid = Pid::from_raw(child.id() as i32);
    kill(gilscope_pid, Signal::SIGSTOP)?;
    target.kill()?;
    target.wait()?;
    let mut reused = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())?;
        let mut other = Command::new("sleep").arg("30").spawn()?;
        if other.id() as i32 == pid {
            reused = Some(other);
            break;
        }
        let _ = other.kill();
        let _ = other.wait();
    }
    kill(gilscope_pid, Signal::SIGCONT)?;
    let Some(mut reused) = reused else {
        let _ = child.kill();
        return Err("could not give the pid to another process".into());
    };
    wait_bounded(&mut child, Duration::from_secs(20), "gilscope")?;
    let _ = reused.kill();
    let _ = reused.wait();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest)?;
    let mut report = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().ok_or("stdout")?, &mut report)?;
    let report: Value = serde_json::from_str(&report)?;
    if report["sampler"]["ended"] != "target_exited" || rest.contains("exec'd") {
        return Err(format!("ended {}: {rest}", report["sampler"]["ended"]).into());
    }
    Ok(())
}

/// The main thread calls `pthread_exit` while another thread runs Python: the process lives
/// on. A recording that began before goes on to its --duration, and one that begins after
/// attaches (through a thread that lives) and measures the spinner. Before, the process
/// was refused as a zombie (exit 3), and a recording under way ended as "exited".
fn main_thread_exited(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let body = "    threading.Thread(target=spin, args=(30,)).start()\n\
                \x20   time.sleep(1.0)\n\
                \x20   ctypes.CDLL(None).pthread_exit(None)";
    let script = script_fixture(dir.path(), "main_exits.py", body)?;
    let fx = Fixture::start_script(&python.path, &script, &[])?;
    let pid = fx.pid.to_string();
    let during = gilscope(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "3",
        "--format",
        "json",
    ]);
    let after = gilscope(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "1",
        "--format",
        "json",
    ]);
    for (when, out) in [("during", &during), ("after", &after)] {
        if !out.status.success() {
            return Err(format!("{when}: exit {}: {}", out.status, stderr_of(out)).into());
        }
        let report: Value = serde_json::from_slice(&out.stdout)?;
        let spinner = report["threads"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["tid"].as_i64() != Some(fx.pid as i64)))
            .ok_or("no spinner")?;
        if report["sampler"]["ended"] != "duration" || common::fraction(spinner, "hold") < 0.5 {
            return Err(format!(
                "{when}: ended {}, spinner {spinner}",
                report["sampler"]["ended"]
            )
            .into());
        }
    }
    Ok(())
}

/// 1,500 threads, gilscope limited to 256 open files (soft and hard, so that it cannot raise
/// them): it keeps as many files open as its budget allows and opens the others for each
/// read. `dump` and `record` work. Before, every tick failed with EMFILE: dump said "errno
/// 24" and record "exited after 0.00 s".
fn more_threads_than_files(python: &Python) -> Result<(), Failed> {
    use std::os::unix::process::CommandExt;
    let args = ["--duration", "60", "--threads", "1500", "--busy", "1"];
    let fx = Fixture::start(&python.path, "many_threads", &args)?;
    let pid = fx.pid.to_string();
    let limited = |args: &[&str]| -> std::io::Result<std::process::Output> {
        let mut command = Command::new(common::gilscope_bin());
        command.args(args).stdin(Stdio::null());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 256,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.output()
    };
    let dump = limited(&["dump", "--pid", &pid])?;
    if !dump.status.success() {
        return Err(format!("dump: exit {}: {}", dump.status, stderr_of(&dump)).into());
    }
    let out = limited(&["record", "--pid", &pid, "--duration", "2", "--gil-only"])?;
    let out_json = limited(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "2",
        "--gil-only",
        "--format",
        "json",
    ])?;
    if !out.status.success() || !out_json.status.success() {
        return Err(format!("record: exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&out_json.stdout)?;
    if report["sampler"]["ended"] != "duration" || report["samples"].as_u64() < Some(5) {
        return Err(format!(
            "ended {} with {} samples: {}",
            report["sampler"]["ended"],
            report["samples"],
            stderr_of(&out_json)
        )
        .into());
    }
    Ok(())
}

/// The interpreter's thread list head is overwritten with a pointer no object can be at (a
/// 3.13+ build, whose `_Py_DebugOffsets` say where the head is), while the process goes on
/// living. The recording ends as `target_unreadable`, says why, and is not called an exit.
fn corrupt_thread_list(python: &Python) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    // _Py_DebugOffsets: cookie, version, free_threaded, runtime_state (3 words), then
    // interpreter_state: size, id, next, threads_head (the offset in PyInterpreterState).
    let body =
        "    runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, '_PyRuntime'))\n\
                \x20   head = ctypes.c_uint64.from_address(runtime + 72).value\n\
                \x20   get = ctypes.pythonapi.PyInterpreterState_Get\n\
                \x20   get.restype = ctypes.c_void_p\n\
                \x20   interp = get()\n\
                \x20   time.sleep(1.0)\n\
                \x20   ctypes.c_uint64.from_address(interp + head).value = 0x10\n\
                \x20   time.sleep(60)";
    let script = script_fixture(dir.path(), "corrupt.py", body)?;
    let fx = Fixture::start_script(&python.path, &script, &[])?;
    let out = gilscope(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "20",
        "--format",
        "json",
    ]);
    let stderr = stderr_of(&out);
    let alive = std::path::Path::new(&format!("/proc/{}", fx.pid)).exists();
    if !out.status.success() {
        return Err(format!("exit {}: {stderr}", out.status).into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    if !alive
        || report["sampler"]["ended"] != "target_unreadable"
        || !report["sampler"]["unreadable"]
            .as_str()
            .is_some_and(|why| why.contains("not a valid pointer"))
        || !stderr.contains("could no longer be read")
        || stderr.contains("exited")
    {
        return Err(format!(
            "alive {alive}, ended {}, why {}: {stderr}",
            report["sampler"]["ended"], report["sampler"]["unreadable"]
        )
        .into());
    }
    Ok(())
}

/// Three spinners contend for the GIL; the process is stopped (SIGSTOP) for a second in the
/// middle of a 3 s recording. Its threads are `stopped` that second, `stopped_s` says how
/// long, the GIL figures cover the time it ran (held, contended as before and after), and
/// the first finding says the process was stopped. A dump of the stopped process shows every
/// thread stopped. Before, the stopped second counted as "GIL held, contended" (a stopped
/// holder still holds, stopped waiters still sleep on the GIL) and findings blamed the GIL.
fn stopped_target(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let target = Pid::from_raw(fx.pid);
    let child = Command::new(common::gilscope_bin())
        .args(["record", "--pid", &fx.pid.to_string(), "--duration", "3"])
        .args(["--format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1000));
    kill(target, Signal::SIGSTOP)?;
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let dump = gilscope(&["dump", "--pid", &fx.pid.to_string(), "--json"]);
    let stopped_for = stopped_at.elapsed().as_secs_f64();
    kill(target, Signal::SIGCONT)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("exit {}: {}", out.status, stderr_of(&out)).into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let duration = report["duration_s"].as_f64().unwrap_or(0.0);
    let stopped_s = report["stopped_s"].as_f64().unwrap_or(-1.0);
    // The stop is timed by this test to within its own scheduling (tens of ms on a loaded
    // machine) and by the ticks to within a tick or two: 0.2 s is a generous bound.
    if (stopped_s - stopped_for).abs() > 0.2 {
        return Err(format!("stopped_s {stopped_s}, stopped for {stopped_for:.2} s").into());
    }
    let share = stopped_s / duration;
    for row in report["threads"].as_array().ok_or("threads")? {
        let stopped = row["stopped"].as_f64().unwrap_or(-1.0);
        if (stopped - share).abs() > 0.1 {
            return Err(format!(
                "thread {} stopped {stopped}, the process {share:.2}",
                row["native_id"]
            )
            .into());
        }
    }
    let (held, contended) = (
        report["gil"]["held"].as_f64().unwrap_or(0.0),
        report["gil"]["contended"].as_f64().unwrap_or(0.0),
    );
    if held < 0.9 || contended < 0.5 {
        return Err(format!("held {held}, contended {contended} while it ran").into());
    }
    let text = gilscope(&["record", "--pid", &fx.pid.to_string(), "--duration", "0.5"]);
    if stdout_of(&text).contains("stopped:") {
        return Err("a run without a stop says the process was stopped".into());
    }
    let dump: Value = serde_json::from_slice(&dump.stdout)?;
    let states: Vec<&str> = dump["threads"]
        .as_array()
        .ok_or("dump threads")?
        .iter()
        .filter_map(|t| t["state"].as_str())
        .collect();
    if states.is_empty() || states.iter().any(|&s| s != "stopped") {
        return Err(format!("the stopped process dumped as {states:?}").into());
    }
    Ok(())
}

/// `record -- python ...`, then gilscope is killed with SIGKILL (no chance to end what it
/// started): the kernel kills the command too (PR_SET_PDEATHSIG). Before, the command ran
/// on, orphaned.
fn orphan(python: &Python) -> Result<(), Failed> {
    use std::io::BufRead;
    let mut child = Command::new(common::gilscope_bin())
        .args(["record", "--duration", "60", "--format", "json", "--"])
        .arg(&python.path)
        .args(["-c", "import time\nwhile True: time.sleep(0.01)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = std::io::BufReader::new(child.stderr.take().ok_or("stderr")?);
    let mut line = String::new();
    stderr.read_line(&mut line)?;
    // "gilscope: sampling process PID (Python ...": the command's pid.
    let command_pid: i32 = line
        .split("sampling process ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| format!("no pid in {line:?}"))?;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL)?;
    child.wait()?;
    let start = Instant::now();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z") && !stat.contains(") X"))
    };
    while alive(command_pid) {
        if start.elapsed() > Duration::from_secs(5) {
            let _ = kill(Pid::from_raw(command_pid), Signal::SIGKILL);
            return Err(format!("the command {command_pid} outlived gilscope by 5 s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Resident memory of `pid` in kB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A 1 kHz recording of a target that starts hundreds of threads a second aggregates as it
/// goes: once more threads have lived than it keeps rows for (1,024), its memory stays within
/// a few MB while a thousand more live (it grew by 1.2 MB every 3,000 threads, a row per
/// thread, before ended threads were folded), and the threads that ended are folded into one
/// row, not a row each. It runs until the fixture has started that many threads, however
/// long a loaded host takes (bounded), rather than for a time a quiet host fills.
fn long_churn_memory(python: &Python) -> Result<(), Failed> {
    const FOLDS_AFTER: u64 = 1_100;
    const THEN: u64 = 1_000;
    let dir = tempfile::tempdir()?;
    let progress = dir.path().join("started");
    let fx = Fixture::start(
        &python.path,
        "churn",
        &[
            "--duration",
            "150",
            "--progress",
            progress.to_str().ok_or("path")?,
        ],
    )?;
    let output = dir.path().join("r.json");
    let mut child = Command::new(common::gilscope_bin())
        .args(["record", "--pid", &fx.pid.to_string(), "--rate", "1000"])
        .args(["--duration", "140", "--format", "json", "-o"])
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = || {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let wait_for = |count: u64| -> Result<(), Failed> {
        while started() < count {
            if Instant::now() > deadline {
                return Err(format!(
                    "the fixture started only {} threads in 120 s ({count} wanted)",
                    started()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    wait_for(FOLDS_AFTER)?;
    let early = rss_kb(child.id()).ok_or("no rss")?;
    let at_early = started();
    wait_for(at_early + THEN)?;
    let late = rss_kb(child.id()).ok_or("no rss")?;
    // Ctrl-C ends the recording and writes what it has.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    wait_bounded(&mut child, Duration::from_secs(60), "gilscope")?;
    let report: Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    let rows = report["threads"].as_array().map_or(0, Vec::len);
    let folded = report["threads"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["native_id"] == 0))
        .map(|t| t["name"].to_string());
    // Rows are folded when there are more than 1,024 of them; the fixture has few threads
    // alive at once.
    if late > early + 3 * 1024 || rows > 1024 + 64 || folded.is_none() {
        return Err(format!(
            "rss {early} kB after {at_early} threads, {late} kB after {} more; {rows} rows; \
             folded row {folded:?}",
            THEN
        )
        .into());
    }
    Ok(())
}
