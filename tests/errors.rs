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
        &["record", "--pid", "1", "--rate", "100000"],
        &["record", "--pid", "1", "--rate", "0.1"],
        &["record", "--pid", "1", "--rate", "0.0001"],
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

/// Root, or the test is skipped with a message: it acts as another user through setpriv.
fn root_for_hostile_user_tests() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root to act as another user");
    }
    root
}

/// Run `args` as `nobody` (setpriv, util-linux); panics if that cannot be done.
fn as_nobody(args: &[&str]) {
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .status()
        .expect("setpriv");
    assert!(status.success(), "as nobody: {args:?}");
}

/// A sleeping process that is not Python: a command that checks its output before it looks
/// at the target fails on the output (7); one that looks first fails on the target (5).
fn not_python() -> std::process::Child {
    let child = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(100));
    child
}

/// Run gilscope, killed after 10 s: a FIFO nobody reads must not hang it.
fn run_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(common::gilscope_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gilscope");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("gilscope {args:?} hung on its output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn outputs_planted_by_another_user_are_refused_before_recording() {
    if !root_for_hostile_user_tests() {
        return;
    }
    // A root-only file and directory, and a shared sticky directory like /tmp.
    let private = tempfile::tempdir().expect("tempdir");
    let victim = private.path().join("victim");
    std::fs::write(&victim, "root's secret\n").expect("victim");
    let shared = tempfile::tempdir().expect("tempdir");
    let chmod = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod")
    };
    chmod(shared.path(), 0o1777);
    chmod(private.path(), 0o700);
    let at = |name: &str| {
        shared
            .path()
            .join(name)
            .to_str()
            .expect("utf-8")
            .to_string()
    };
    let victim_path = victim.to_str().expect("utf-8");
    let private_path = private.path().to_str().expect("utf-8");
    as_nobody(&["ln", "-s", victim_path, &at("report.json")]);
    as_nobody(&["ln", "-s", private_path, &at("dir")]);
    as_nobody(&["mkfifo", &at("fifo.txt")]);
    as_nobody(&["sh", "-c", &format!("echo theirs > {}", at("theirs.txt"))]);
    let mut sleeper = not_python();
    let pid = sleeper.id().to_string();
    let (link, through_dir, new_in_dir) = (
        at("report.json"),
        format!("{}/victim", at("dir")),
        format!("{}/new.txt", at("dir")),
    );
    let (fifo, theirs, dir_link) = (at("fifo.txt"), at("theirs.txt"), at("dir"));
    let cases: [(Vec<&str>, &str); 7] = [
        (
            vec!["record", "--pid", &pid, "-o", &link],
            "symbolic link of user",
        ),
        (
            vec!["record", "--pid", &pid, "-o", &through_dir],
            "symbolic link of user",
        ),
        (
            vec!["record", "--pid", &pid, "-o", &new_in_dir],
            "symbolic link of user",
        ),
        (vec!["record", "--pid", &pid, "-o", &fifo], "FIFO of user"),
        (vec!["record", "--pid", &pid, "-o", &theirs], "file of user"),
        (
            vec!["record", "--pid", &pid, "--observations", &link],
            "symbolic link of user",
        ),
        (vec!["man", "--out-dir", &dir_link], "symbolic link of user"),
    ];
    let outs: Vec<(Vec<&str>, &str, Output)> = cases
        .iter()
        .map(|(args, why)| (args.clone(), *why, run_bounded(args)))
        .collect();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    for (args, why, out) in &outs {
        let stderr = assert_error(out, 7, why);
        assert!(stderr.contains("other users"), "{args:?}: {stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "root's secret\n"
    );
    let in_private: Vec<_> = std::fs::read_dir(private.path()).expect("ls").collect();
    assert_eq!(
        in_private.len(),
        1,
        "files written into the private directory"
    );
    assert_eq!(
        std::fs::read_to_string(at("theirs.txt")).expect("theirs"),
        "theirs\n"
    );
}

#[test]
fn a_name_too_long_or_a_directory_is_refused_before_recording() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = dir.path().join("x".repeat(300));
    let mut sleeper = not_python();
    let pid = sleeper.id().to_string();
    let outs: Vec<Output> = [
        long.to_str().expect("utf-8"),
        dir.path().to_str().expect("utf-8"),
        &format!("{}/", dir.path().display()),
    ]
    .iter()
    .map(|path| run(&["record", "--pid", &pid, "-o", path]))
    .collect();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_error(&outs[0], 7, "File name too long");
    assert_error(&outs[1], 7, "it is a directory");
    assert_error(&outs[2], 7, "it is a directory");
}

/// A Python that sleeps, for the tests that need a recording to succeed or fail.
fn sleeping_python() -> Option<std::process::Child> {
    let pythons = common::pythons();
    let Some(python) = common::cli_python(&pythons) else {
        eprintln!("skipped: no Python found");
        return None;
    };
    let child = Command::new(python.path)
        .args(["-c", "import time; time.sleep(60)"])
        .spawn()
        .expect("python");
    std::thread::sleep(Duration::from_millis(500));
    Some(child)
}

#[test]
fn a_failed_run_leaves_the_old_output_alone() {
    let Some(mut python) = sleeping_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.txt");
    std::fs::write(&old, "the previous report\n").expect("old");
    // Over before the first tick: no sample, a failed run.
    let out = run(&[
        "record",
        "--pid",
        &python.id().to_string(),
        "--duration",
        "1e-9",
        "-o",
        old.to_str().expect("utf-8"),
    ]);
    let _ = python.kill();
    let _ = python.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("wrote"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&old).expect("old"),
        "the previous report\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
}

/// `cmd > /dev/full`.
fn run_into_full_disk(args: &[&str]) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    Command::new(common::gilscope_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("gilscope")
}

#[test]
fn a_write_error_on_standard_output_is_an_output_error() {
    for args in [
        &["man"][..],
        &["man", "record"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let out = run_into_full_disk(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // --help is clap's: it may only not claim success silently with a panic.
        if args == ["--help"] {
            assert!(!stderr.contains("panicked"), "{stderr}");
            continue;
        }
        assert_error(
            &out,
            7,
            "cannot write standard output: No space left on device",
        );
    }
    let Some(mut python) = sleeping_python() else {
        return;
    };
    let pid = python.id().to_string();
    let outs = [
        run_into_full_disk(&["dump", "--pid", &pid]),
        run_into_full_disk(&["record", "--pid", &pid, "--duration", "0.3"]),
    ];
    let _ = python.kill();
    let _ = python.wait();
    for out in &outs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{stderr}");
        assert!(
            stderr
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("gilscope: cannot write standard output")),
            "{stderr}"
        );
    }
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
            [".speedscope.json", ".json", ".html", ".pb.gz"]
                .iter()
                .all(|known| stderr.contains(known)),
            "{stderr}"
        );
        assert!(!path.exists(), "{name} was written");
    }
}

#[test]
fn a_full_disk_is_reported_under_the_path_given() {
    if !root_for_hostile_user_tests() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    // Filled but for a few bytes: the check before recording passes, the report does not fit.
    let mut fill = std::fs::File::create(dir.path().join("fill")).expect("fill");
    let _ = std::io::Write::write_all(&mut fill, &[0; 16 * 1024]);
    drop(fill);
    let Some(mut python) = sleeping_python() else {
        return;
    };
    let report = dir.path().join("report.json");
    let out = run(&[
        "record",
        "--pid",
        &python.id().to_string(),
        "--duration",
        "0.3",
        "-o",
        report.to_str().expect("utf-8"),
    ]);
    let _ = python.kill();
    let _ = python.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "gilscope: cannot write {}: No space left",
            report.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(".gilscope"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["fill"], "nothing left beside the full disk's file");
}

#[test]
fn options_a_format_ignores_are_said_before_recording() {
    // The target need not exist for the plan to be made: the warning comes first.
    let pid = free_pid().to_string();
    for (args, option) in [
        (&["--view", "blame"][..], "--view"),
        (&["--state", "hold"], "--state"),
        (&["--format", "flamegraph", "--gil-only"], "--gil-only"),
        // pprof has a sample type per state; the HTML report switches between both views.
        (&["--format", "pprof", "--state", "hold"], "--state"),
        (&["-o", "report.html", "--view", "blame"], "--view"),
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
