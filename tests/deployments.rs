//! Pythons as production runs them, not as `python app.py`: embedded in another program
//! (libpython linked into an application), started through the dynamic loader, inside
//! another mount namespace where the interpreter's files are not at their paths, and in
//! containers (own PID namespace, and user namespace) seen from the host, from a debug
//! container sharing their PID namespace and from inside, with CAP_SYS_PTRACE alone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{fixture_path, gilscope_ok, Container, Fixture, Privileges, Python};

/// The dynamic loader of x86_64 glibc systems.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

type Test = fn(&Python) -> Result<Completion, Failed>;

fn main() {
    let mut suite = common::Suite::new(common::pythons());
    let tests: [(&str, Test); 3] = [
        ("an_application_embedding_libpython_is_measured", embedded),
        ("a_python_started_by_the_dynamic_loader_is_measured", loader),
        ("a_python_in_another_mount_namespace_is_measured", namespace),
    ];
    // How the interpreter was deployed, not its layout, is what each tests: each on half of
    // the layout families in the default pass (CI's second pass runs the rest).
    for (part, (name, test)) in tests.into_iter().enumerate() {
        let trials = common::turn_trials(&suite.pythons, 2, part % 2, name, test);
        suite.add(trials);
    }
    // Each container on each interpreter of the default matrix in turn, the other way round
    // from tests/accuracy.rs's trials in containers (which measure the same reading against
    // the reference): between the two binaries the default pass reads every layout family
    // from inside both; the `rest` pass completes each.
    let kinds = Container::ALL.len();
    for (part, kind) in Container::ALL.into_iter().enumerate() {
        let name = format!(
            "a_python_in_its_own_{}_is_measured_from_the_host",
            kind.label()
        );
        let turn = common::matrix_in_turn(&suite.pythons, kinds, (part + 1) % kinds);
        let trials = common::per_interpreter(&turn, &name, move |python| {
            if let Some(why) = Container::unavailable() {
                return Ok(Completion::ignored_with(why));
            }
            let _exclusive = common::exclusive();
            contained(python, kind)
        });
        suite.add(trials);
    }
    let once: [(&str, Test); 5] = [
        (
            "top_names_the_threads_of_a_python_in_a_container",
            contained_top,
        ),
        (
            "serve_follows_a_python_in_a_container_by_name",
            contained_serve,
        ),
        (
            "subprocesses_of_a_container_are_each_measured",
            contained_tree,
        ),
        (
            "a_debug_container_sharing_the_pid_namespace_measures_with_sys_ptrace_alone",
            debug_container,
        ),
        (
            "gilscope_inside_the_container_measures_with_sys_ptrace_alone",
            inside_container,
        ),
    ];
    for (name, test) in once {
        suite.add([common::on_cli_python(&suite.pythons, name, move |python| {
            if let Some(why) = Container::unavailable() {
                return Ok(Completion::ignored_with(why));
            }
            test(python)
        })]);
    }
    for privileges in [
        Privileges::SysPtraceOnly,
        Privileges::NoPerfEvents,
        Privileges::SysPtraceOnlyNoPerfEvents,
    ] {
        let name = format!("{}_the_report_names_what_was_missing", privileges.label());
        suite.add([common::on_cli_python(
            &suite.pythons,
            &name,
            move |python| restricted(python, privileges),
        )]);
    }
    suite.once(
        "perf_event_paranoid_2_and_3_with_sys_ptrace_alone",
        paranoid_levels,
    );
    suite.add([libtest_mimic::Trial::ignorable_test(
        "the_static_binary_measures_an_old_distributions_python_in_a_chroot",
        || {
            let _exclusive = common::exclusive();
            old_distribution()
        },
    )]);
    suite.run()
}

/// Record the spinners fixture (three threads) for a second and check that gilscope saw what
/// it does: the GIL held nearly all the time, by the spinners, each holding some of it and
/// waiting for the rest. Returns the report.
fn spinners_measured(fx: &Fixture) -> Result<Value, Failed> {
    let out = gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "1.5",
        "--format",
        "json",
    ])?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    spinners_in(&report, &fx.threads)?;
    Ok(report)
}

/// Check a report of the spinners fixture (see [`spinners_measured`]); `tids` are its
/// threads' ids as gilscope sees them.
fn spinners_in(report: &Value, tids: &BTreeMap<String, i32>) -> Result<(), Failed> {
    let held = report["gil"]["held"].as_f64().unwrap_or(0.0);
    // Between two spinners the GIL is free while the woken one waits for a CPU: on a machine
    // saturated by other work (load average 13 on 2 CPUs) that came to 10% of the time. A
    // gilscope that matches no thread says 0%.
    if held < 0.8 {
        return Err(format!("GIL held {held}: three spinners hold it all the time").into());
    }
    // Over a second the scheduler does not share the GIL fairly between three spinners on a
    // loaded machine (one held 12% beside two CPU hogs): what gilscope must get right is that
    // each holds some of it, the three together all that is held, and each waits the rest.
    // A gilscope that matches the wrong threads gives a spinner nothing.
    let mut holds = 0.0;
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let row = common::thread_row(report, tids[role]).ok_or(format!("no {role}"))?;
        let (hold, wait) = (common::fraction(row, "hold"), common::fraction(row, "wait"));
        holds += hold;
        if hold < 0.03 || hold + wait < 0.9 {
            return Err(format!("{role}: hold {hold} wait {wait}").into());
        }
    }
    if holds < held - 0.05 {
        return Err(format!("the spinners held {holds} of a GIL held {held}").into());
    }
    Ok(())
}

fn fixtures_dir() -> PathBuf {
    fixture_path("gilfixture")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `python3.X-config`'s answer to `args`, if the interpreter has one.
fn config(python: &Python, args: &[&str]) -> Option<String> {
    let name = python.path.file_name()?.to_str()?;
    let tool = python.path.with_file_name(format!("{name}-config"));
    let out = Command::new(tool).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The directory of the interpreter's shared libpython, if it has one.
fn shared_libpython_dir(python: &Python) -> Option<PathBuf> {
    let out = Command::new(&python.path)
        .args([
            "-c",
            "import sysconfig as s; print(s.get_config_var('LIBDIR') if \
             s.get_config_var('Py_ENABLE_SHARED') else '')",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (!dir.as_os_str().is_empty() && dir.is_dir()).then_some(dir)
}

/// A C program that links libpython and runs the fixture in Python threads (the uwsgi or
/// plugin case): the executable is not python and does not define the interpreter.
fn embedded(python: &Python) -> Result<Completion, Failed> {
    let Some(libdir) = shared_libpython_dir(python) else {
        return Ok(Completion::ignored_with(
            "this build has no shared libpython to embed",
        ));
    };
    let flags = config(python, &["--embed", "--cflags", "--ldflags"])
        .or_else(|| config(python, &["--cflags", "--ldflags"]));
    let Some(flags) = flags else {
        return Ok(Completion::ignored_with("no python3.X-config beside it"));
    };
    let dir = tempfile::tempdir()?;
    let host = dir.path().join("embedding-app");
    let source = fixtures_dir().join("embedded").join("host.c");
    let out = Command::new("cc")
        .arg("-o")
        .arg(&host)
        .arg(&source)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-Wno-deprecated-declarations")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "cc {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let spinners = fixture_path("spinners");
    let fx = Fixture::start_command(&host, &[spinners.as_os_str()])?;
    let report = spinners_measured(&fx)?;
    let binary = report["target"]["binary"].as_str().unwrap_or("");
    if !binary.contains("libpython") {
        return Err(format!("the interpreter was found in {binary}, not libpython").into());
    }
    Ok(Completion::Completed)
}

/// The program interpreter an ELF64 executable asks for (PT_INTERP), read from the program
/// headers alone (a stripped binary's other parts need not parse).
fn requested_loader(elf: &[u8]) -> Option<PathBuf> {
    const PT_INTERP: u32 = 3;
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let (phoff, size, count) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    (0..count as usize).find_map(|i| {
        let header = phoff + i * size as usize;
        if u32_at(header)? != PT_INTERP {
            return None;
        }
        let (offset, len) = (u64_at(header + 8)? as usize, u64_at(header + 32)? as usize);
        let path = elf.get(offset..offset + len)?;
        let path = path.split(|&b| b == 0).next()?;
        Some(PathBuf::from(std::str::from_utf8(path).ok()?))
    })
}

/// `ld.so python3.X app.py`: /proc/PID/exe is the loader, not the interpreter. The loader
/// is the one the executable asks for (its PT_INTERP), or the system's for a static one.
fn loader(python: &Python) -> Result<Completion, Failed> {
    let bytes = std::fs::read(&python.path)?;
    let loader = requested_loader(&bytes).unwrap_or_else(|| PathBuf::from(LOADER));
    if !loader.exists() {
        return Ok(Completion::ignored_with(format!("no {}", loader.display())));
    }
    let spinners = fixture_path("spinners");
    let fx = Fixture::start_command(&loader, &[python.path.as_os_str(), spinners.as_os_str()])?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", fx.pid))?;
    if !exe.to_string_lossy().contains("ld-linux") {
        return Err(format!("the fixture's executable is {}", exe.display()).into());
    }
    spinners_measured(&fx)?;
    Ok(Completion::Completed)
}

/// The interpreter's installation (the directory above its bin/) mounted at a path that
/// exists only in the target's own mount namespace, as in a container: gilscope must open
/// the executable and libpython through /proc/PID/root.
fn namespace(python: &Python) -> Result<Completion, Failed> {
    if Command::new("unshare").arg("--version").output().is_err() {
        return Ok(Completion::ignored_with("no unshare (util-linux)"));
    }
    let (Some(bin), Some(name)) = (python.path.parent(), python.path.file_name()) else {
        return Err(format!("{} has no directory", python.path.display()).into());
    };
    let prefix = bin.parent().ok_or("no installation directory")?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().display().to_string();
    let program = format!(
        "{root}/py/{}/{}",
        bin.file_name().unwrap_or_default().to_string_lossy(),
        name.to_string_lossy()
    );
    let spinners = fixture_path("spinners");
    let script = format!(
        "mount -t tmpfs none {root} && mkdir {root}/py && mount --bind '{}' {root}/py && \
         exec env LD_LIBRARY_PATH={root}/py/lib {program} '{}'",
        prefix.display(),
        spinners.display()
    );
    let fx = Fixture::start_command(
        Path::new("unshare"),
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )?;
    let report = spinners_measured(&fx)?;
    let binary = report["target"]["binary"].as_str().unwrap_or("");
    if !binary.starts_with(&root) {
        return Err(format!("interpreter {binary}: not the namespace's {root}").into());
    }
    if Path::new(binary).exists() {
        return Err(format!("{binary} is visible outside the namespace: not a test").into());
    }
    Ok(Completion::Completed)
}

/// The spinners in a container, recorded and dumped from the host: each thread is the
/// fixture's own (its Python name, its stack, its id inside the container beside the host's),
/// with the figures of an uncontained run. Accuracy against the uprobe reference in the same
/// containers is tests/accuracy.rs's.
fn contained(python: &Python, kind: Container) -> Result<Completion, Failed> {
    let fx = Fixture::start_contained(&python.path, "spinners", &[], kind)?;
    let report = spinners_measured(&fx)?;
    check_contained_report(&report, &fx)?;
    let pid = fx.pid.to_string();
    let dump = gilscope_ok(&["dump", "--pid", &pid])?;
    let text = String::from_utf8_lossy(&dump.stdout);
    let header = format!("pid {pid} (1 in its namespace)");
    if !text.contains(&header) {
        return Err(format!("no {header:?} in the dump:\n{text}").into());
    }
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let own = fx.ns_threads[role];
        let line = format!(
            "Thread {} ({own} in its namespace) \"{role}\"",
            fx.tid(role)
        );
        let Some(at) = text.find(&line) else {
            return Err(format!("no {line:?} in the dump:\n{text}").into());
        };
        let stack = text[at..].lines().nth(1).unwrap_or("");
        if !stack.contains("spin (") {
            return Err(format!("{role}'s stack starts {stack:?}:\n{text}").into());
        }
    }
    let dump = gilscope_ok(&["dump", "--pid", &pid, "--json"])?;
    let snapshot: Value = serde_json::from_slice(&dump.stdout)?;
    for role in ["spinner-0", "main"] {
        let row = common::thread_row(&snapshot, fx.tid(role)).ok_or(format!("no {role}"))?;
        if row["ns_tid"].as_i64() != Some(fx.ns_threads[role] as i64)
            || !row["stack_captured"].as_bool().unwrap_or(false)
        {
            return Err(format!("{role} in the dump: {row}").into());
        }
    }
    Ok(Completion::Completed)
}

/// A record report of the contained spinners names every thread as the fixture does, gives
/// its id inside the container, and has its Python stack.
fn check_contained_report(report: &Value, fx: &Fixture) -> Result<(), Failed> {
    if report["target"]["ns_pid"].as_i64() != Some(1) {
        return Err(format!("target {}: not pid 1 in its namespace", report["target"]).into());
    }
    for (role, &tid) in &fx.threads {
        let row = common::thread_row(report, tid).ok_or(format!("no {role} ({tid})"))?;
        let name = if role == "main" { "MainThread" } else { role };
        let own = fx.ns_threads[role] as i64;
        if row["name"] != name
            || row["ns_tid"].as_i64() != Some(own)
            || !row["python"].as_bool().unwrap_or(false)
        {
            return Err(format!("{role} ({tid}, {own} inside): {row}").into());
        }
        if role != "main" {
            let top = &row["top_hold"][0]["function"];
            if top != "spin" {
                return Err(format!("{role} held the GIL in {top}, not spin: {row}").into());
            }
        }
    }
    Ok(())
}

/// `gilscope top` of a contained Python: its threads by their Python names, the holder's code.
fn contained_top(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start_contained(&python.path, "spinners", &[], Container::Pid)?;
    let line = common::top_first_line(fx.pid)?;
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let named = format!("{role} ({})", fx.tid(role));
        if !line.contains(&named) {
            return Err(format!("no {named:?} in: {line}").into());
        }
    }
    if !line.contains("in spin (") {
        return Err(format!("no holder's code in: {line}").into());
    }
    Ok(Completion::Completed)
}

/// `gilscope serve --follow-name` finds a Python by name inside a container and serves its
/// threads' figures under their Python names.
fn contained_serve(python: &Python) -> Result<Completion, Failed> {
    let dir = tempfile::tempdir()?;
    let name = format!("contained_{}.py", std::process::id());
    let script = dir.path().join(&name);
    std::fs::copy(fixture_path("spinners"), &script)?;
    let mut argv: Vec<std::ffi::OsString> = ["--pid", "--fork", "--kill-child", "--mount-proc"]
        .iter()
        .map(Into::into)
        .collect();
    argv.extend([
        python.path.clone().into_os_string(),
        script.into_os_string(),
    ]);
    let _fx = Fixture::start_command(Path::new("unshare"), &argv)?;
    let mut serve = Command::new(common::gilscope_bin())
        .args(["serve", "--follow-name", &name, "--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let result = serve_metrics(&mut serve).and_then(|metrics| {
        let series = "gilscope_thread_gil_seconds_total{";
        for role in ["spinner-0", "spinner-1", "spinner-2"] {
            let held = metrics.lines().find(|l| {
                l.starts_with(series)
                    && l.contains(&format!("thread=\"{role}\""))
                    && l.contains("state=\"hold\"")
            });
            let seconds = held
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok());
            if !seconds.is_some_and(|s| s > 0.1) {
                return Err(format!("{role} held {seconds:?} s:\n{metrics}").into());
            }
        }
        Ok(())
    });
    let _ = serve.kill();
    let _ = serve.wait();
    result.map(|()| Completion::Completed)
}

/// The metrics of a `gilscope serve` started with `--listen 127.0.0.1:0`, three seconds
/// after it says where it serves them.
fn serve_metrics(serve: &mut std::process::Child) -> Result<String, Failed> {
    use std::io::{BufRead, Read, Write};
    let stderr = serve.stderr.take().ok_or("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().ok_or("serve ended before serving")??;
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    // The rest of what it says must not fill the pipe while it runs.
    std::thread::spawn(move || lines.for_each(drop));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut stream = std::net::TcpStream::connect(&address)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// `--subprocesses` of a container's first process (a shell) finds the two Pythons it
/// started and measures each, with its threads' own names and ids inside.
fn contained_tree(python: &Python) -> Result<Completion, Failed> {
    let spinners = fixture_path("spinners");
    let run = format!(
        "'{}' '{}' --threads 1 --duration 60",
        python.path.display(),
        spinners.display()
    );
    // One announces itself to the test; the other must not write into a closed pipe.
    let script = format!("{run} >/dev/null & {run} & wait");
    let fx = Fixture::start_command(
        Path::new("unshare"),
        &[
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ],
    )?;
    let out = gilscope_ok(&[
        "record",
        "--subprocesses",
        "--pid",
        &fx.pid.to_string(),
        "--duration",
        "2",
        "--format",
        "json",
    ])?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let processes = report["processes"].as_array().ok_or("no processes")?;
    if processes.len() != 2 {
        return Err(format!(
            "{} processes, not the two Pythons: {report}",
            processes.len()
        )
        .into());
    }
    for process in processes {
        let threads = process["threads"].as_array().ok_or("no threads")?;
        let spinner = threads
            .iter()
            .find(|t| t["name"] == "spinner-0")
            .ok_or(format!("no spinner-0 in {}", process["target"]))?;
        let hold = common::fraction(spinner, "hold");
        if hold < 0.3 || spinner["ns_tid"].as_i64().is_none_or(|t| t <= 1) {
            return Err(format!("spinner-0 of {}: {spinner}", process["target"]).into());
        }
        if process["target"]["ns_pid"].as_i64().is_none_or(|p| p <= 1) {
            return Err(format!("{}: not a child inside the container", process["target"]).into());
        }
    }
    Ok(Completion::Completed)
}

/// Run gilscope as a pod with `capabilities: add: [SYS_PTRACE]` does (root without any
/// other capability), in the namespaces of `target` that `enter` names (nsenter's options).
fn gilscope_with_sys_ptrace(target: i32, enter: &[&str], args: &[&str]) -> Result<Value, Failed> {
    let target = target.to_string();
    let mut command = Command::new("nsenter");
    command.args(["--target", &target]).args(enter).arg("--");
    // A debug container has a mount namespace of its own, with a /proc of the PID namespace
    // it shares.
    if !enter.contains(&"--mount") {
        command.args(["unshare", "--mount", "--mount-proc", "--"]);
    }
    let out = command
        .args([
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-all,+sys_ptrace",
            "--",
        ])
        .arg(common::gilscope_bin())
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A record of the contained spinners from within its PID namespace (as `--pid 1`), by a
/// gilscope with CAP_SYS_PTRACE alone: the container's own ids, the fixture's names, and a
/// report that names the missing CAP_SYS_NICE.
fn measured_inside(python: &Python, kind: Container, enter: &[&str]) -> Result<Completion, Failed> {
    let fx = Fixture::start_contained(&python.path, "spinners", &[], kind)?;
    let args = [
        "record",
        "--pid",
        "1",
        "--duration",
        "1.5",
        "--format",
        "json",
    ];
    let report = gilscope_with_sys_ptrace(fx.pid, enter, &args)?;
    spinners_in(&report, &fx.ns_threads)?;
    if !report["target"]["ns_pid"].is_null() {
        return Err(format!("inside, pid 1 is pid 1: {}", report["target"]).into());
    }
    for role in ["spinner-0", "main"] {
        let row = common::thread_row(&report, fx.ns_threads[role]).ok_or("no thread")?;
        let name = if role == "main" { "MainThread" } else { role };
        if row["name"] != name || !row["ns_tid"].is_null() {
            return Err(format!("{role}: {row}").into());
        }
    }
    let degraded = &report["sampler"]["degraded"];
    let names_nice = degraded
        .as_array()
        .is_some_and(|d| d.iter().any(|d| d["missing"] == "CAP_SYS_NICE"));
    if !names_nice || report["sampler"]["realtime"] != false {
        return Err(format!(
            "the missing CAP_SYS_NICE is not named: {}",
            report["sampler"]
        )
        .into());
    }
    Ok(Completion::Completed)
}

/// `kubectl debug --target`, `docker run --pid=container:X --cap-add SYS_PTRACE`: gilscope
/// in a container of its own that shares the target's PID namespace, not its files.
fn debug_container(python: &Python) -> Result<Completion, Failed> {
    measured_inside(python, Container::PidAndUser, &["--pid"])
}

/// `docker exec` into a container started with `--cap-add SYS_PTRACE`.
fn inside_container(python: &Python) -> Result<Completion, Failed> {
    measured_inside(python, Container::Pid, &["--pid", "--mount"])
}

/// Each restricted deployment, from the host: the recording is still right, and the report
/// names what was missing and what stood in.
fn restricted(python: &Python, privileges: Privileges) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "spinners", &[])?;
    let report = common::record_json_with(fx.pid, 1.5, privileges)?;
    spinners_in(&report, &fx.threads)?;
    let sampler = &report["sampler"];
    let missing: Vec<&str> = sampler["degraded"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["missing"].as_str()).collect())
        .unwrap_or_default();
    let no_nice = missing.contains(&"CAP_SYS_NICE");
    let no_perf = missing
        .iter()
        .any(|m| m.contains("perf_event_open") || m.contains("CAP_PERFMON"));
    let (want_nice, want_perf) = match privileges {
        Privileges::Full => (false, false),
        Privileges::SysPtraceOnly => (true, false),
        Privileges::NoPerfEvents => (false, true),
        Privileges::SysPtraceOnlyNoPerfEvents => (true, true),
    };
    let schedstat = sampler["cpu_clock"]
        .as_str()
        .is_some_and(|c| c.starts_with("schedstat"));
    if no_nice != want_nice
        || no_perf != want_perf
        || schedstat != want_perf
        || sampler["realtime"] != !want_nice
    {
        return Err(format!("{}: {sampler}", privileges.label()).into());
    }
    Ok(Completion::Completed)
}

/// perf_event_paranoid 2 (the usual default) and 3 (Debian's and Ubuntu's kernels refuse
/// unprivileged perf events there; upstream treats it as 2) with CAP_SYS_PTRACE alone:
/// exact clocks where the kernel opens them, else the report names CAP_PERFMON and the level.
fn paranoid_levels(python: &Python) -> Result<Completion, Failed> {
    const KNOB: &str = "/proc/sys/kernel/perf_event_paranoid";
    let Ok(before) = std::fs::read_to_string(KNOB) else {
        return Ok(Completion::ignored_with("no perf_event_paranoid"));
    };
    let fx = Fixture::start(&python.path, "spinners", &[])?;
    let result = (|| -> Result<(), Failed> {
        for level in ["2", "3"] {
            std::fs::write(KNOB, level)?;
            let report = common::record_json_with(fx.pid, 1.0, Privileges::SysPtraceOnly)?;
            spinners_in(&report, &fx.threads)?;
            let sampler = &report["sampler"];
            let exact = sampler["cpu_clock"] == "perf";
            let named = sampler["degraded"].as_array().is_some_and(|d| {
                d.iter().any(|d| {
                    d["missing"].as_str().is_some_and(|m| {
                        m == format!("CAP_PERFMON (kernel.perf_event_paranoid is {level})")
                    })
                })
            });
            if level == "2" && !exact || exact == named {
                return Err(format!("at perf_event_paranoid {level}: {sampler}").into());
            }
        }
        Ok(())
    })();
    std::fs::write(KNOB, before.trim())?;
    result.map(|()| Completion::Completed)
}

/// The static (musl) build: `GILSCOPE_BIN` where that is one, else the one
/// `cargo build --release --target x86_64-unknown-linux-musl` makes beside this build.
fn static_binary() -> Option<PathBuf> {
    let is_static = |path: &Path| {
        std::fs::read(path)
            .ok()
            .is_some_and(|elf| elf.starts_with(b"\x7fELF") && requested_loader(&elf).is_none())
    };
    let chosen = PathBuf::from(common::gilscope_bin());
    if is_static(&chosen) {
        return Some(chosen);
    }
    // .../target/release/gilscope -> .../target/x86_64-unknown-linux-musl/release/gilscope
    let target_dir = Path::new(env!("CARGO_BIN_EXE_gilscope"))
        .parent()?
        .parent()?;
    let musl = target_dir.join("x86_64-unknown-linux-musl/release/gilscope");
    is_static(&musl).then_some(musl)
}

/// Run `program` with `args` chrooted into `root`, with a /proc of its own mount namespace.
fn in_chroot(root: &Path, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    let script = format!(
        "mount -t proc proc '{}/proc' && exec chroot '{}' \"$@\"",
        root.display(),
        root.display()
    );
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            program,
        ])
        .args(args);
    command
}

/// Debian 11 (glibc 2.31), where the glibc build does not start (it needs 2.34): the static
/// build, copied into a chroot of it, measures that distribution's own python3.9 (a stripped,
/// statically linked interpreter, as Debian builds it).
fn old_distribution() -> Result<Completion, Failed> {
    let cache = std::env::var("GILSCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/gilscope")
        });
    let root = cache.join("bullseye");
    if !root.join("usr/bin/python3.9").exists() {
        return Ok(Completion::ignored_with(format!(
            "no Debian 11 root in {} (run scripts/old-distro)",
            root.display()
        )));
    }
    let Some(binary) = static_binary() else {
        return Ok(Completion::ignored_with(
            "no static build (cargo build --release --target x86_64-unknown-linux-musl, or \
             GILSCOPE_BIN)",
        ));
    };
    let dir = tempfile::tempdir_in(root.join("tmp"))?;
    let inside = |name: &str| {
        format!(
            "/tmp/{}/{name}",
            dir.path().file_name().unwrap_or_default().to_string_lossy()
        )
    };
    for (from, name) in [
        (binary.clone(), "gilscope"),
        (
            PathBuf::from(env!("CARGO_BIN_EXE_gilscope")),
            "gilscope-glibc",
        ),
        (fixture_path("spinners"), "spinners.py"),
        (fixture_path("gilfixture"), "gilfixture.py"),
    ] {
        std::fs::copy(&from, dir.path().join(name))?;
    }
    let glibc = in_chroot(&root, &inside("gilscope-glibc"), &["--version"]).output()?;
    if glibc.status.success() {
        eprintln!(
            "note: the glibc build runs in this root too: the test shows less than it should"
        );
    }
    let fixture = in_chroot(
        &root,
        "/usr/bin/python3.9",
        &[&inside("spinners.py"), "--duration", "60"],
    );
    let args: Vec<String> = fixture
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let fx = Fixture::start_command(Path::new("unshare"), &args)?;
    let pid = fx.pid.to_string();
    // The fixture is the shell's exec'd chroot's exec'd python: one process, pid `fx.pid`.
    let out = in_chroot(
        &root,
        &inside("gilscope"),
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "1.5",
            "--format",
            "json",
        ],
    )
    .output()?;
    if !out.status.success() {
        return Err(format!(
            "the static build in the chroot: exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    spinners_in(&report, &fx.threads)?;
    let version = report["target"]["python_version"].as_str().unwrap_or("");
    let program = report["target"]["binary"].as_str().unwrap_or("");
    // Named as the kernel names it to a reader in another mount namespace: from its root.
    if !version.starts_with("3.9.") || !program.ends_with("/usr/bin/python3.9") {
        return Err(format!("not Debian 11's python: {}", report["target"]).into());
    }
    for role in ["spinner-0", "spinner-1", "spinner-2"] {
        let row = common::thread_row(&report, fx.tid(role)).ok_or("no spinner")?;
        if row["name"] != role || row["top_hold"][0]["function"] != "spin" {
            return Err(format!("{role}: {row}").into());
        }
    }
    Ok(Completion::Completed)
}
