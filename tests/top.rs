//! `gilscope top` end to end: the plain line per second into a pipe on every interpreter (known
//! answers), and the live view in a real terminal (tmux): keys, resizing, and a clean exit.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed};
use regex::Regex;

use common::{Attempt, Fixture, Python};

/// Lines read from a plain `top` in the known-answer test.
const PLAIN_LINES: usize = 3;

fn main() {
    let mut suite = common::Suite::new(common::pythons());
    // top draws what record's sampler reads (tests/record.rs reads every layout family):
    // every other interpreter of the default matrix here, the others in CI's rest pass.
    let trials = common::per_interpreter(
        &common::matrix_in_turn(&suite.pythons, 2, 0),
        "top_prints_a_line_of_the_last_seconds_figures_into_a_pipe",
        |python| {
            let _exclusive = common::exclusive();
            common::unless_host_steals(|| plain_lines(python))
        },
    );
    suite.add(trials);
    type Cli = fn(&Python) -> Result<Completion, Failed>;
    let cli: [(&str, Cli); 5] = [
        (
            "top_with_subprocesses_shows_each_process_and_follows_new_workers",
            subprocesses,
        ),
        (
            "top_in_a_terminal_follows_keys_and_resizes_and_restores_the_terminal",
            terminal_keys,
        ),
        (
            "top_in_a_terminal_ends_cleanly_on_ctrl_c_and_when_the_target_exits",
            terminal_ends,
        ),
        (
            "top_into_a_pipe_ends_when_the_reader_goes_or_the_target_exits",
            pipe_ends,
        ),
        ("top_says_when_switch_sites_are_not_in_effect", switch_sites),
    ];
    for (name, test) in cli {
        suite.once(name, test);
    }
    suite.run()
}

/// A `gilscope top` whose stdout is a pipe; killed if still running when dropped.
struct PipedTop {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl PipedTop {
    fn start(pid: i32) -> Result<PipedTop, Failed> {
        PipedTop::start_with(pid, &[])
    }

    fn start_with(pid: i32, extra: &[&str]) -> Result<PipedTop, Failed> {
        let mut child = Command::new(common::gilscope_bin())
            .args(["top", "--pid", &pid.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (line_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let mut err = child.stderr.take().ok_or("no stderr")?;
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            let _ = err_tx.send(text);
        });
        Ok(PipedTop {
            child,
            lines,
            stderr,
        })
    }

    fn line(&self, timeout: Duration) -> Result<String, Failed> {
        self.lines
            .recv_timeout(timeout)
            .map_err(|_| "no line from gilscope top in time".into())
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), Failed> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// Wait for it to exit; its exit status and stderr.
    fn finish(mut self, timeout: Duration) -> Result<(std::process::ExitStatus, String), Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let stderr = self
                    .stderr
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                return Ok((status, stderr));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("gilscope top still running after {timeout:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PipedTop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One thread's figures in a plain line.
#[derive(Debug)]
struct PlainThread {
    tid: i32,
    hold: f64,
    wait: f64,
    running: f64,
    idle: f64,
}

/// The process figures and the threads of a plain line.
fn parse_plain(line: &str) -> Result<(f64, Vec<PlainThread>), Failed> {
    let head = Regex::new(
        r"^\d+\.\d s: held ([\d.]+)% contended ([\d.]+)% switches (\d+|-)/s samples (\d+)",
    )?;
    let thread = Regex::new(
        r"^(.*) \((\d+)\) hold ([\d.]+)% wait ([\d.]+)% running ([\d.]+)% idle ([\d.]+)%$",
    )?;
    let caps = head
        .captures(line)
        .ok_or_else(|| format!("not a plain top line: {line:?}"))?;
    let held: f64 = caps[1].parse::<f64>()? / 100.0;
    let mut threads = Vec::new();
    for part in line.split(" | ").skip(1) {
        if let Some(c) = thread.captures(part) {
            let pct = |i: usize| c[i].parse::<f64>().map(|v| v / 100.0);
            let t = PlainThread {
                tid: c[2].parse()?,
                hold: pct(3)?,
                wait: pct(4)?,
                running: pct(5)?,
                idle: pct(6)?,
            };
            let sum = t.hold + t.wait + t.running + t.idle;
            if (sum - 1.0).abs() > 0.003 {
                return Err(format!("fractions of {} add up to {sum}: {line}", t.tid).into());
            }
            threads.push(t);
        }
    }
    Ok((held, threads))
}

/// Into a pipe, top prints a line per second: on the regex fixture the GIL is held all the
/// time, by the regex thread, the ticker waits, the waiting is blamed on the regex thread's
/// `backtrack`, and the thread that waits on an event for ever is left out as idle.
fn plain_lines(python: &Python) -> Result<Attempt, Failed> {
    let fx = Fixture::start(&python.path, "regex_backtrack", &["--duration", "60"])?;
    // The idle thread must win the GIL from the regex (which keeps it for a whole match,
    // most of a second) once more to enter its endless wait: until then it waits, and a
    // thread that waited in the steady window is rightly not an idle one. top starts once
    // a snapshot shows it in that wait.
    idle_thread_settled(&fx)?;
    let cpu = gilscope::target::process::cpu_times();
    let top = PipedTop::start(fx.pid)?;
    let mut lines = Vec::new();
    for _ in 0..PLAIN_LINES {
        lines.push(top.line(Duration::from_secs(10))?);
    }
    let steal = gilscope::target::process::steal_share(cpu, gilscope::target::process::cpu_times());
    top.signal(nix::sys::signal::Signal::SIGINT)?;
    let (status, stderr) = top.finish(Duration::from_secs(5))?;
    if !status.success() {
        return Err(format!("exit {status} after Ctrl-C: {stderr}").into());
    }
    if !stderr.contains(&format!("watching process {}", fx.pid)) {
        return Err(format!("no note of what is watched on stderr: {stderr:?}").into());
    }
    let (regex, ticker, idle) = (fx.tid("regex"), fx.tid("ticker"), fx.tid("idle"));
    let blame = format!("; waited on regex ({regex}) in backtrack (");
    let miss = |what: String| {
        Ok(Attempt::Missed {
            message: format!("{what}\n  {}", lines.join("\n  ")),
            steal,
        })
    };
    for line in &lines {
        if line.contains('\x1b') {
            return Err(format!("terminal escapes in a pipe: {line:?}").into());
        }
        let (held, threads) = parse_plain(line)?;
        let by_tid = |tid: i32| threads.iter().find(|t| t.tid == tid);
        if threads.iter().any(|t| t.tid == idle) || !line.contains("| 1 idle thread") {
            return Err(format!("the idle thread is shown: {line}").into());
        }
        let (Some(r), Some(t)) = (by_tid(regex), by_tid(ticker)) else {
            return miss("regex or ticker missing".into());
        };
        if held < 0.9 || r.hold < 0.9 || t.wait < 0.7 {
            return miss(format!(
                "held {held}, regex hold {}, ticker wait {}",
                r.hold, t.wait
            ));
        }
        if !line.contains(&blame) {
            return miss(format!("no `{blame}`"));
        }
    }
    Ok(Attempt::Done(Completion::Completed))
}

/// Wait (10 s at most) until a snapshot shows the fixture's "idle" thread idle inside
/// `never`, its endless wait.
fn idle_thread_settled(fx: &Fixture) -> Result<(), Failed> {
    let idle = fx.tid("idle") as i64;
    let start = std::time::Instant::now();
    loop {
        let out = common::gilscope(&["dump", "--pid", &fx.pid.to_string(), "--json"]);
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let settled = dump["threads"].as_array().is_some_and(|threads| {
            threads.iter().any(|t| {
                t["native_id"].as_i64() == Some(idle)
                    && t["state"] == "idle"
                    && t["stack"]
                        .as_array()
                        .is_some_and(|frames| frames.iter().any(|f| f["function"] == "never"))
            })
        });
        if settled {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("the idle thread never settled in its wait: {dump}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `top --switch-sites` says on its lines when they cannot be in effect (a libpython
/// stripped of take_gil's symbol) and why; not where they are.
fn switch_sites(python: &Python) -> Result<Completion, Failed> {
    let Some(stripped) = common::stripped_libpython(python)? else {
        return Ok(Completion::ignored_with(format!(
            "{}: no shared libpython to strip",
            python.label
        )));
    };
    for library_dir in [None, Some(stripped.path())] {
        let fx =
            common::start_with_libraries(python, library_dir, "spinners", &["--duration", "60"])?;
        let top = PipedTop::start_with(fx.pid, &["--switch-sites"])?;
        // The second line: the first second's slice may come before the process's perf
        // events were opened.
        top.line(Duration::from_secs(15))?;
        let line = top.line(Duration::from_secs(15))?;
        let said = line.contains("| without switch sites (");
        match library_dir {
            None if line.contains("without switch sites (perf_event_open") => {
                return Ok(Completion::ignored_with(format!(
                    "perf is refused here: {line}"
                )))
            }
            None if said => return Err(format!("with take_gil's symbol: {line}").into()),
            Some(_) if !said => {
                return Err(format!("stripped libpython, and nothing said: {line}").into())
            }
            _ => {}
        }
    }
    Ok(Completion::Completed)
}

/// Into a pipe: a reader that goes (`| head -1`) ends top at its next line, with success;
/// a target that exits ends it with a note.
fn pipe_ends(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let mut top = PipedTop::start(fx.pid)?;
    top.line(Duration::from_secs(10))?;
    // The reader goes: the pipe closes.
    top.lines = mpsc::channel().1;
    std::thread::sleep(Duration::from_millis(100));
    let (status, stderr) = top.finish(Duration::from_secs(5))?;
    if !status.success() {
        return Err(format!("exit {status} when the reader went: {stderr}").into());
    }
    drop(fx);
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "2.5"])?;
    let top = PipedTop::start(fx.pid)?;
    let (status, stderr) = top.finish(Duration::from_secs(10))?;
    if !status.success() || !stderr.contains(&format!("process {} exited", fx.pid)) {
        return Err(format!("exit {status} when the target exited: {stderr}").into());
    }
    Ok(Completion::Completed)
}

/// A tmux server of this test's own, with one session running a shell command in a terminal
/// of a given size; killed when dropped.
struct Tmux {
    socket: String,
}

const TMUX_SESSION: &str = "top";

impl Tmux {
    /// None (with the reason) when tmux is missing or cannot start here.
    fn start(command: &str, width: u16, height: u16) -> Result<Result<Tmux, String>, Failed> {
        // A server of its own each time: one just killed may still hold its socket.
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let socket = format!(
            "gilscope-test-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux { socket };
        let out = match tmux
            .command()
            .args(["new-session", "-d", "-s", TMUX_SESSION])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                return Ok(Err(format!(
                    "tmux cannot be run ({e}): the terminal tests need it (.ci/run installs it)"
                )))
            }
        };
        if !out.status.success() {
            return Ok(Err(format!(
                "tmux cannot start a session here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Ok(tmux))
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Result<String, Failed> {
        let out = self.command().args(args).output()?;
        if !out.status.success() {
            return Err(format!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String, Failed> {
        self.run(&["capture-pane", "-p", "-t", TMUX_SESSION])
    }

    fn keys(&self, keys: &str) -> Result<(), Failed> {
        self.run(&["send-keys", "-t", TMUX_SESSION, keys]).map(drop)
    }

    fn resize(&self, width: u16, height: u16) -> Result<(), Failed> {
        self.run(&[
            "resize-window",
            "-t",
            TMUX_SESSION,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ])
        .map(drop)
    }

    fn alternate_screen(&self) -> Result<bool, Failed> {
        Ok(self
            .run(&[
                "display-message",
                "-p",
                "-t",
                TMUX_SESSION,
                "#{alternate_on}",
            ])?
            .trim()
            == "1")
    }

    /// The screen once `ready` holds for it (polled for up to 15 s).
    fn wait_for(&self, what: &str, ready: impl Fn(&Screen) -> bool) -> Result<Screen, Failed> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = Screen(self.screen()?);
            if ready(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                return Err(format!("the screen never showed {what}:\n{}", screen.0).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// A captured terminal screen.
struct Screen(String);

impl Screen {
    /// The thread rows: (tid, the figures in order).
    fn rows(&self) -> Vec<(i32, Vec<f64>)> {
        self.0
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let tid = words.next()?.parse().ok()?;
                let figures = words
                    .filter_map(|w| w.strip_suffix('%')?.parse::<f64>().ok())
                    .map(|v| v / 100.0)
                    .collect();
                Some((tid, figures))
            })
            .collect()
    }

    fn tids(&self) -> Vec<i32> {
        self.rows().into_iter().map(|(tid, _)| tid).collect()
    }

    fn header(&self) -> Option<&str> {
        self.0.lines().find(|l| l.trim_start().starts_with("TID "))
    }

    fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}

/// The shell line run in tmux: top, then its exit status and the terminal's modes.
fn in_terminal(pid: i32) -> String {
    in_terminal_with(pid, "")
}

fn in_terminal_with(pid: i32, extra: &str) -> String {
    format!(
        "'{}' top --pid {pid}{extra}; echo \"top exited with $?\"; stty -a; sleep 600",
        common::gilscope_bin()
    )
}

/// After top: it exited with success and left the terminal as it found it (line editing
/// and echo on, the normal screen).
fn check_restored(tmux: &Tmux) -> Result<(), Failed> {
    let screen = tmux.wait_for("top's exit", |s| s.contains("top exited with"))?;
    if !screen.contains("top exited with 0") {
        return Err(format!("top failed:\n{}", screen.0).into());
    }
    let modes = tmux.wait_for("the terminal's modes", |s| s.contains("icanon"))?;
    let words: Vec<&str> = modes.0.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        if !words.contains(&mode) {
            return Err(format!("terminal mode {mode} not restored:\n{}", modes.0).into());
        }
    }
    if tmux.alternate_screen()? {
        return Err("the alternate screen was left on".into());
    }
    Ok(())
}

/// Keys: the rows are sorted by hold, then by wait on `w`; the idle thread appears on
/// `i`; the view fits a terminal resized smaller and widens again; `q` quits.
fn terminal_keys(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "regex_backtrack", &["--duration", "60"])?;
    let (regex, ticker, idle) = (fx.tid("regex"), fx.tid("ticker"), fx.tid("idle"));
    let tmux = match Tmux::start(&in_terminal(fx.pid), 100, 30)? {
        Ok(tmux) => tmux,
        Err(why) => return Ok(Completion::ignored_with(why)),
    };
    let screen = tmux.wait_for("rows for regex and ticker", |s| {
        let tids = s.tids();
        tids.contains(&regex) && tids.contains(&ticker)
    })?;
    if !tmux.alternate_screen()? {
        return Err("top does not draw on the alternate screen".into());
    }
    if !screen.contains(&format!("pid {}", fx.pid)) || !screen.contains("held") {
        return Err(format!("no title or GIL figures:\n{}", screen.0).into());
    }
    let rows = screen.rows();
    if rows[0].0 != regex || rows[0].1.first().is_none_or(|&hold| hold < 0.8) {
        return Err(format!("the regex thread is not first by hold:\n{}", screen.0).into());
    }
    if rows.iter().any(|r| r.0 == idle) || !screen.contains("1 idle thread hidden") {
        return Err(format!("the idle thread is shown:\n{}", screen.0).into());
    }
    tmux.keys("w")?;
    tmux.wait_for("the ticker first, sorted by wait", |s| {
        s.tids().first() == Some(&ticker) && s.contains("sorted by wait")
    })?;
    tmux.keys("i")?;
    tmux.wait_for("the idle thread", |s| s.tids().contains(&idle))?;
    tmux.resize(60, 12)?;
    let narrow = tmux.wait_for("a narrow view", |s| {
        s.header().is_some_and(|h| h.trim_end().ends_with("IDLE"))
    })?;
    if narrow.0.lines().any(|l| l.chars().count() > 60) || narrow.tids().len() != 4 {
        return Err(format!("the view does not fit 60x12:\n{}", narrow.0).into());
    }
    tmux.resize(120, 40)?;
    tmux.wait_for("the 10 s and 60 s columns again", |s| {
        s.header().is_some_and(|h| h.trim_end().ends_with(" s"))
    })?;
    tmux.keys("q")?;
    check_restored(&tmux)?;
    Ok(Completion::Completed)
}

/// Ctrl-C quits (a key in the view's raw mode, not a signal); a terminal that hangs up ends
/// top; a target that exits ends it with a note. The terminal is left restored.
fn terminal_ends(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "spinners", &["--duration", "60"])?;
    let tmux = match Tmux::start(&in_terminal(fx.pid), 100, 30)? {
        Ok(tmux) => tmux,
        Err(why) => return Ok(Completion::ignored_with(why)),
    };
    let spinner = fx.tid("spinner-0");
    tmux.wait_for("the spinners", |s| s.tids().contains(&spinner))?;
    tmux.keys("C-c")?;
    check_restored(&tmux)?;
    drop(tmux);
    // The terminal hangs up (an ssh connection drops): top must end, not go on reading a
    // terminal that is gone.
    let dir = tempfile::tempdir()?;
    let pidfile = dir.path().join("top.pid");
    let command = format!(
        "echo $$ > '{}'; exec '{}' top --pid {}",
        pidfile.display(),
        common::gilscope_bin(),
        fx.pid
    );
    let tmux = Tmux::start(&command, 100, 30)??;
    tmux.wait_for("the spinners", |s| s.tids().contains(&spinner))?;
    let top: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gilscope::target::process::liveness(top) == gilscope::target::process::Liveness::Alive {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(top),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err("top kept running after its terminal hung up".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // tmux started a moment ago: a failure now is a failure.
    let tmux = Tmux::start(&in_terminal(fx.pid), 100, 30)??;
    tmux.wait_for("the spinners", |s| s.tids().contains(&spinner))?;
    let pid = fx.pid;
    drop(fx);
    tmux.wait_for("the target's exit", |s| {
        s.contains(&format!("process {pid} exited"))
    })?;
    check_restored(&tmux)?;
    Ok(Completion::Completed)
}

/// `top --subprocesses` into a pipe prints a line per process per second, "pid N: ...": the
/// pool's workers appear as they start (each task's workers are new processes), each with its
/// two spinners sharing its GIL, and the waiting main process never wants the GIL for long.
/// On a terminal, each process heads its threads.
fn subprocesses(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "pool", &["--duration", "60"])?;
    let top = PipedTop::start_with(fx.pid, &["--subprocesses"])?;
    let mut lines = Vec::new();
    let mut workers = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    // Tasks last 1 s: in 5 s, at least two generations of two workers.
    while started.elapsed() < Duration::from_secs(5) {
        let line = top.line(Duration::from_secs(10))?;
        let (pid, rest) = line
            .strip_prefix("pid ")
            .and_then(|l| l.split_once(": "))
            .ok_or_else(|| format!("a line without its process: {line:?}"))?;
        let pid: i32 = pid.parse()?;
        let (_, threads) = parse_plain(rest)?;
        let samples: u64 = rest
            .split(" samples ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // A worker's first and last seconds may hold a few samples only: judged on full ones.
        if pid != fx.pid && threads.len() == 2 && samples >= 300 {
            // Lines of the seconds in which a worker ran its task throughout.
            let sharing = threads.iter().all(|t| t.hold + t.wait > 0.9);
            let even = threads.iter().all(|t| t.hold > 0.2 && t.wait > 0.2);
            if sharing && !even {
                return Err(format!("spinners of {pid} do not share: {line}").into());
            }
        }
        if pid != fx.pid && threads.len() == 2 {
            workers.insert(pid);
        }
        // The main process starts workers now and then, but never needs the GIL for long.
        if pid == fx.pid && threads.iter().any(|t| t.hold + t.wait > 0.5) {
            return Err(format!("the pool's main process has busy threads: {line}").into());
        }
        lines.push(line);
    }
    top.signal(nix::sys::signal::Signal::SIGINT)?;
    let (status, _) = top.finish(Duration::from_secs(5))?;
    if !status.success() || workers.len() < 4 {
        return Err(format!(
            "exit {status}, {} workers seen:\n  {}",
            workers.len(),
            lines.join("\n  ")
        )
        .into());
    }
    drop(fx);
    // On the terminal, workers that live through the test: their headings stay on screen.
    let fx = Fixture::start(&python.path, "pool", &["--duration", "60", "--task", "60"])?;
    let tmux = match Tmux::start(&in_terminal_with(fx.pid, " --subprocesses"), 150, 30)? {
        Ok(tmux) => tmux,
        Err(why) => return Ok(Completion::ignored_with(why)),
    };
    let headings = |s: &Screen| {
        s.0.lines()
            .filter(|l| l.starts_with("pid ") && l.contains(" - Python "))
            .count()
    };
    let screen = tmux.wait_for("a heading per process", |s| headings(s) >= 3)?;
    if !screen.contains(&format!("pid {} and below", fx.pid)) {
        return Err(format!("no title for the tree:\n{}", screen.0).into());
    }
    tmux.keys("q")?;
    check_restored(&tmux)?;
    Ok(Completion::Completed)
}
