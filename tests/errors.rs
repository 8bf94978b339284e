//! Bad input gets one clear line (and a hint where one helps), the documented exit code
//! (docs/EXIT_CODES.md), and never a panic or a backtrace.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    common::gilscope(args)
}

/// The output of a failed run: `code`, a first line starting "gilscope: " and containing
/// `needle`, at most one more line (a hint), and no trace of a panic.
fn assert_error(out: &Output, code: i32, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        lines.len() <= 2,
        "expected one line and an optional hint: {stderr}"
    );
    assert!(lines[0].starts_with("gilscope: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    if let Some(hint) = lines.get(1) {
        assert!(hint.starts_with("hint: "), "{stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout after an error");
    stderr
}

/// A pid that is not in use now.
fn free_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (1..max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

/// Each command that attaches to a pid, with the options that make it end by itself.
const ATTACHING: [&[&str]; 4] = [
    &["record", "--duration", "1"],
    &["dump"],
    &["top"],
    &["serve", "--listen", "127.0.0.1:0"],
];

fn attach_args<'a>(command: &[&'a str], pid: &'a str) -> Vec<&'a str> {
    let mut args = vec![command[0], "--pid", pid];
    args.extend_from_slice(&command[1..]);
    args
}

#[test]
fn a_missing_pid_is_reported_with_a_hint() {
    let pid = free_pid().to_string();
    for command in ATTACHING {
        let out = run(&attach_args(command, &pid));
        let stderr = assert_error(&out, 3, &format!("no process with pid {pid}"));
        assert!(stderr.contains("hint: "), "{command:?}: {stderr}");
    }
}

#[test]
fn a_non_python_process_is_named_as_such() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(200));
    let pid = sleeper.id().to_string();
    let outs: Vec<Output> = ATTACHING
        .iter()
        .map(|command| run(&attach_args(command, &pid)))
        .collect();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    for out in &outs {
        assert_error(out, 5, "is not a Python process");
    }
}

#[test]
fn a_kernel_thread_is_not_a_target() {
    let kthreadd = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    if kthreadd.trim() != "kthreadd" {
        eprintln!("skipped: pid 2 is not kthreadd here (pid namespace?)");
        return;
    }
    let out = run(&["record", "--pid", "2", "--duration", "1"]);
    assert_error(&out, 3, "kernel thread");
}

#[test]
fn a_zombie_is_not_a_target() {
    // A child that exits and is not reaped stays a zombie until we wait for it.
    let mut child = Command::new("true").spawn().expect("true");
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&[
        "record",
        "--pid",
        &child.id().to_string(),
        "--duration",
        "1",
    ]);
    let _ = child.wait();
    assert_error(&out, 3, "has exited");
}

#[test]
fn gilscope_refuses_to_record_itself() {
    // `exec` makes the shell's pid gilscope's.
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "exec {} record --pid $$ --duration 1",
                common::gilscope_bin()
            ),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert_error(&out, 5, "gilscope itself");
}

#[test]
fn usage_errors_exit_2_without_a_backtrace() {
    for args in [
        &["record", "--pid", "1", "--rate", "0"][..],
        &["record", "--pid", "1", "--rate", "-5"],
        &["record", "--pid", "1", "--rate", "lots"],
        &["record", "--pid", "1", "--rate", "1e9"],
        &["record", "--pid", "1", "--duration", "-1"],
        &["record", "--pid", "1", "--format", "xml"],
        &["record", "--pid", "abc"],
        &["record", "--pid", "1", "--", "python3"],
        &["record"],
        &["frobnicate"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_pid_that_is_not_a_number_or_beyond_any_pid_is_a_usage_error() {
    for pid in ["/etc/passwd", "99999999999", "12abc", ""] {
        for command in ["record", "dump", "top"] {
            let out = run(&[command, "--pid", pid]);
            assert_error(&out, 2, "not a valid pid");
        }
    }
    let out = run(&["serve", "--pid", "/etc/passwd"]);
    assert_error(&out, 2, "not a valid pid");
}

#[test]
fn a_pid_above_pid_max_is_no_such_process() {
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let out = run(&[
        "record",
        "--pid",
        &(pid_max + 1).to_string(),
        "--duration",
        "1",
    ]);
    assert_error(&out, 3, "no process with pid");
}

#[test]
fn an_unwritable_output_is_refused_before_recording_without_naming_temporary_files() {
    for path in ["/nonexistent-dir/r.json", "/proc/r.json"] {
        let out = run(&["record", "--pid", "1", "-o", path, "--duration", "1"]);
        let stderr = assert_error(&out, 7, &format!("cannot write {path}"));
        assert!(!stderr.contains(".gilscope"), "{stderr}");
    }
}

#[test]
fn usage_errors_are_one_line_and_a_hint() {
    for args in [
        &["record", "--pid", "1", "--format", "xml"][..],
        &["record", "--pid", "1", "--bogus"],
        &["dump"],
        &["frobnicate"],
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("gilscope: "), "{args:?}: {stderr}");
        assert!(lines[1].starts_with("hint: "), "{args:?}: {stderr}");
    }
    let out = run(&["record", "--pid", "1", "--format", "xml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: text, json"));
    let out = run(&["dump"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid <PID>"));
}

#[test]
fn a_negative_or_zero_pid_is_a_usage_error() {
    let out = run(&["record", "--pid", "0", "--duration", "1"]);
    assert_error(&out, 2, "not a valid pid");
    let out = run(&["record", "--pid=-7", "--duration", "1"]);
    assert_error(&out, 2, "not a valid pid");
}

#[test]
fn a_command_that_does_not_exist_cannot_be_started() {
    let out = run(&["record", "--", "/nonexistent/python3", "app.py"]);
    assert_error(&out, 8, "cannot start");
}

#[test]
fn permission_denied_says_what_is_needed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run gilscope as an unprivileged user");
        return;
    }
    // A root-owned Python, recorded by `nobody`: the kernel refuses ptrace access.
    let python = match common::pythons().found.first() {
        Some(p) => p.path.clone(),
        None => {
            eprintln!("skipped: no Python found");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("gilscope");
    std::fs::copy(common::gilscope_bin(), &bin).expect("copy");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut target = Command::new(python)
        .args(["-c", "import time; time.sleep(30)"])
        .spawn()
        .expect("python");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args([
            "record",
            "--pid",
            &target.id().to_string(),
            "--duration",
            "1",
        ])
        .output()
        .expect("setpriv");
    let _ = target.kill();
    let _ = target.wait();
    let stderr = assert_error(&out, 4, "permission denied");
    assert!(stderr.contains("CAP_SYS_PTRACE"), "{stderr}");
    assert!(stderr.contains("--cap-add SYS_PTRACE"), "{stderr}");
}

#[test]
fn a_negative_number_is_refused_for_what_it_is_not_taken_for_a_command() {
    for (args, needle) in [
        (
            &["record", "--pid", "1", "--duration", "-1"][..],
            "duration",
        ),
        (&["record", "--pid", "1", "--rate", "-5"], "rate"),
        (&["dump", "--pid", "1", "--sample", "-2"], "duration"),
    ] {
        let out = run(args);
        let stderr = assert_error(&out, 2, needle);
        assert!(!stderr.contains("'-- -"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_output_extension_gilscope_does_not_write_is_refused_with_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["out.xyz", "x.speedscope", "report.pdf"] {
        let path = dir.path().join(name);
        let out = run(&[
            "record",
            "--pid",
            "1",
            "-o",
            path.to_str().unwrap(),
            "--duration",
            "1",
        ]);
        let stderr = assert_error(&out, 2, "cannot tell the format");
        assert!(
            stderr.contains(".speedscope.json") && stderr.contains(".json"),
            "{stderr}"
        );
        assert!(!path.exists(), "{name} was written");
    }
}

#[test]
fn options_a_format_ignores_are_said_before_recording() {
    // The target need not exist for the plan to be made: the warning comes first.
    let pid = free_pid().to_string();
    for (args, option) in [
        (&["--view", "blame"][..], "--view"),
        (&["--state", "hold"], "--state"),
        (&["--format", "flamegraph", "--gil-only"], "--gil-only"),
    ] {
        let mut all = vec!["record", "--pid", &pid, "--duration", "1"];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().next().is_some_and(|l| l.contains(option)),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn man_pages_go_into_a_directory_that_did_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("share/man/man1");
    let out = run(&["man", "--out-dir", pages.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pages.join("gilscope-record.1").is_file());
}

#[test]
fn a_shell_above_python_is_answered_with_subprocesses() {
    let mut shell = Command::new("sh")
        .args(["-c", "sleep 30 & wait"])
        .spawn()
        .expect("sh");
    // The shell forks its child at once; give it the moment.
    let pid = shell.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|c| c.trim().is_empty())
        .unwrap_or(true)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(&["dump", "--pid", &pid.to_string()]);
    let _ = shell.kill();
    let _ = shell.wait();
    let stderr = assert_error(&out, 5, "is not a Python process");
    assert!(stderr.contains("--subprocesses"), "{stderr}");
}
