//! `gilscope serve` end to end: a real Prometheus server scrapes it and answers queries with
//! the fixture's known answers; it ends with its target, or follows a name across restarts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::Value;

use common::{Fixture, Python};

type Test = fn(&Python) -> Result<Completion, Failed>;

fn main() {
    let mut args = Arguments::from_args();
    // Python processes on a shared two-core machine: one at a time.
    args.test_threads = Some(1);
    let pythons = common::pythons();
    let tests: [(&str, Test); 5] = [
        (
            "subprocesses_are_served_as_series_of_their_own_pids",
            subprocesses,
        ),
        (
            "prometheus_scrapes_the_shares_of_two_spinners",
            prometheus_scrapes,
        ),
        ("serve_ends_when_its_target_exits", ends_with_target),
        (
            "follow_name_samples_the_next_process_of_that_name",
            follows_name,
        ),
        (
            "only_get_metrics_is_served_and_a_taken_port_is_an_error",
            http_surface,
        ),
    ];
    let python = common::cli_python(&pythons);
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let python = python.clone();
            Trial::ignorable_test(name, move || {
                let Some(python) = python else {
                    return Ok(Completion::ignored_with("no Python interpreter found"));
                };
                let _exclusive = common::exclusive();
                test(&python)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// A running `gilscope serve`; killed when dropped.
struct Serve {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    address: String,
}

impl Serve {
    fn start(args: &[&str]) -> Result<Serve, Failed> {
        let mut child = Command::new(common::gilscope_bin())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start gilscope serve: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut serve = Serve {
            child,
            lines,
            seen: Vec::new(),
            address: String::new(),
        };
        let line = serve.wait_for("serving metrics on http://", Duration::from_secs(15))?;
        serve.address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .ok_or_else(|| format!("no address in {line:?}"))?
            .to_string();
        Ok(serve)
    }

    /// Wait for a stderr line containing `text`.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<String, Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "no line with {text:?} from gilscope serve in {timeout:?}; it said:\n{}",
                        self.seen.join("\n")
                    )
                    .into())
                }
            }
        }
    }

    fn metrics(&self) -> Result<String, Failed> {
        let (status, body) = http_get(&self.address, "/metrics")?;
        if status != 200 {
            return Err(format!("/metrics answered {status}: {body}").into());
        }
        Ok(body)
    }

    /// Wait for the process to end by itself; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Result<i32, Failed> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return Ok(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("gilscope serve still runs after {timeout:?}").into())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
fn http_get(address: &str, path: &str) -> Result<(u16, String), Failed> {
    http_request(address, "GET", path)
}

fn http_request(address: &str, method: &str, path: &str) -> Result<(u16, String), Failed> {
    let mut stream =
        TcpStream::connect(address).map_err(|e| format!("connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {address}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of the metric line that starts with `series` (name and labels), if any.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16, Failed> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn prometheus_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("prometheus"))
        .find(|p| p.is_file())
}

/// A Prometheus server scraping one target every second, in its own directory.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &Path, target: &str) -> Result<Prometheus, Failed> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: gilscope\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let address = format!("127.0.0.1:{}", free_port()?);
        let log =
            std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        Ok(Prometheus {
            child,
            address,
            _dir: dir,
        })
    }

    /// The result vector of an instant query (empty while there is no data yet).
    fn query(&self, promql: &str) -> Result<Vec<Value>, Failed> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http_get(&self.address, &path)?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| format!("query {promql}: {status} {body:?}: {e}"))?;
        if json["status"] != "success" {
            return Err(format!("query {promql}: {body}").into());
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_value(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// Prometheus, scraping `serve` beside two spinners, answers with their known shares: each
/// holds about half the time, together nearly all of it, and the GIL is held throughout.
fn prometheus_scrapes(python: &Python) -> Result<Completion, Failed> {
    let Some(binary) = prometheus_binary() else {
        return Ok(Completion::ignored_with(
            "prometheus is not installed (.ci/run installs Debian's prometheus package)",
        ));
    };
    common::unless_host_steals(|| {
        Ok(common::steal_measured(|| {
            let fixture = Fixture::start(&python.path, "spinners", &["--threads", "2"])?;
            let pid = fixture.pid.to_string();
            let serve = Serve::start(&["--pid", &pid, "--listen", "127.0.0.1:0"])?;
            let prometheus = Prometheus::start(&binary, &serve.address)?;
            // Wait for about five seconds of samples in Prometheus.
            let enough = format!("gilscope_samples_total{{pid=\"{pid}\"}} > 400");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if prometheus.query(&enough).is_ok_and(|r| !r.is_empty()) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "no samples in Prometheus after 60 s; its log:\n{}",
                        prometheus.log()
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let up = prometheus.query("up{job=\"gilscope\"}")?;
            if up.len() != 1 || sample_value(&up[0]) != Some(1.0) {
                return Err(format!("up: {up:?}").into());
            }
            let shares = prometheus.query(&format!(
                "sum by (thread) (gilscope_thread_gil_seconds_total{{pid=\"{pid}\",state=\"hold\"}}) \
                 / sum by (thread) (gilscope_thread_gil_seconds_total{{pid=\"{pid}\"}})"
            ))?;
            let share = |thread: &str| {
                shares
                    .iter()
                    .find(|s| s["metric"]["thread"] == thread)
                    .and_then(sample_value)
                    .ok_or_else(|| format!("no hold share of {thread} in {shares:?}"))
            };
            let (first, second) = (share("spinner-0")?, share("spinner-1")?);
            if !(0.3..=0.7).contains(&first)
                || !(0.3..=0.7).contains(&second)
                || first + second < 0.85
            {
                return Err(format!("hold shares {first:.3} and {second:.3}").into());
            }
            let held = prometheus.query(&format!(
                "gilscope_gil_held_seconds_total{{pid=\"{pid}\"}} / on (pid) \
                 sum by (pid) (gilscope_thread_gil_seconds_total{{pid=\"{pid}\",thread=\"MainThread\"}})"
            ))?;
            match held.first().and_then(sample_value) {
                Some(h) if h >= 0.85 => Ok(()),
                other => Err(format!("GIL held share {other:?}: {held:?}").into()),
            }
        }))
    })
}

/// Without --follow-name, serve ends by itself (success) when its target exits.
fn ends_with_target(python: &Python) -> Result<Completion, Failed> {
    let mut fixture = Fixture::start(&python.path, "spinners", &["--threads", "1"])?;
    let pid = fixture.pid.to_string();
    let mut serve = Serve::start(&["--pid", &pid, "--listen", "127.0.0.1:0"])?;
    serve.wait_for(&format!("sampling pid {pid}"), Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2));
    let _ = fixture.child.kill();
    let _ = fixture.child.wait();
    let code = serve.wait_exit(Duration::from_secs(10))?;
    let said = serve.seen.join("\n");
    if code != 0 || !said.contains(&format!("pid {pid} exited")) {
        return Err(format!("exit {code}; it said:\n{said}").into());
    }
    Ok(Completion::Completed)
}

/// With --follow-name, a restart of the target is followed: the old pid's counters stay, the
/// new pid's grow, and SIGTERM ends serve with success.
fn follows_name(python: &Python) -> Result<Completion, Failed> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // A name no stray process can have.
    let name = format!("follow_me_{}.py", std::process::id());
    let script = dir.path().join(&name);
    std::fs::copy(common::fixture_path("spinners"), &script).map_err(|e| e.to_string())?;
    let args = ["--threads", "1"];
    let mut first = Fixture::start_script(&python.path, &script, &args)?;
    let mut serve = Serve::start(&["--follow-name", &name, "--listen", "127.0.0.1:0"])?;
    serve.wait_for(
        &format!("sampling pid {}", first.pid),
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let _ = first.child.kill();
    let _ = first.child.wait();
    serve.wait_for(
        &format!("waiting for a process named {name}"),
        Duration::from_secs(10),
    )?;
    let between = serve.metrics()?;
    if value(&between, "gilscope_attached") != Some(0.0) {
        return Err(format!("attached while there is no target:\n{between}").into());
    }
    let second = Fixture::start_script(&python.path, &script, &args)?;
    serve.wait_for(
        &format!("sampling pid {}", second.pid),
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let text = serve.metrics()?;
    let samples = |pid: i32| value(&text, &format!("gilscope_samples_total{{pid=\"{pid}\"}}"));
    let (old, new) = (samples(first.pid), samples(second.pid));
    if !old.is_some_and(|n| n > 100.0) || !new.is_some_and(|n| n > 100.0) {
        return Err(format!("samples of the old pid {old:?}, of the new {new:?}:\n{text}").into());
    }
    let target = format!("gilscope_target_info{{pid=\"{}\"", second.pid);
    if value(&text, "gilscope_attached") != Some(1.0)
        || !text.contains(&target)
        || text.contains(&format!("gilscope_target_info{{pid=\"{}\"", first.pid))
    {
        return Err(format!("the target series should name only the new pid:\n{text}").into());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|e| e.to_string())?;
    let code = serve.wait_exit(Duration::from_secs(10))?;
    if code != 0 {
        return Err(format!("exit {code} after SIGTERM:\n{}", serve.seen.join("\n")).into());
    }
    Ok(Completion::Completed)
}

/// Only /metrics serves metrics; a port in use is a one-line error before anything runs.
fn http_surface(python: &Python) -> Result<Completion, Failed> {
    let fixture = Fixture::start(&python.path, "spinners", &["--threads", "1"])?;
    let pid = fixture.pid.to_string();
    let serve = Serve::start(&["--pid", &pid, "--listen", "127.0.0.1:0"])?;
    let (status, _) = http_get(&serve.address, "/nothing")?;
    if status != 404 {
        return Err(format!("/nothing answered {status}").into());
    }
    // Only /metrics is served: no index, no other path, no other method.
    for path in ["/", "/metrics/", "/../metrics", "/debug"] {
        let (status, _) = http_get(&serve.address, path)?;
        if status != 404 {
            return Err(format!("{path} answered {status}").into());
        }
    }
    let (status, body) = http_get(&serve.address, "/metrics?name[]=x")?;
    if status != 200 || !body.contains("gilscope_attached") {
        return Err(format!("/metrics with a query answered {status}").into());
    }
    let (status, _) = http_request(&serve.address, "POST", "/metrics")?;
    if status != 405 {
        return Err(format!("POST /metrics answered {status}").into());
    }
    let out = common::gilscope(&["serve", "--pid", &pid, "--listen", &serve.address]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2)
        || !stderr.starts_with(&format!("gilscope: cannot listen on {}", serve.address))
    {
        return Err(format!("a taken port gave {:?}: {stderr}", out.status.code()).into());
    }
    Ok(Completion::Completed)
}

/// With --subprocesses, each worker of a pool is announced and counted under its own pid:
/// about a second of GIL held per worker (its task's length), the waiting main process
/// next to nothing; a worker that exited keeps its counters but loses its target_info.
fn subprocesses(python: &Python) -> Result<Completion, Failed> {
    let fixture = Fixture::start(&python.path, "pool", &["--duration", "60"])?;
    let pid = fixture.pid.to_string();
    let mut serve = Serve::start(&["--pid", &pid, "--subprocesses", "--listen", "127.0.0.1:0"])?;
    serve.wait_for(&format!("sampling pid {pid}"), Duration::from_secs(10))?;
    // Tasks last 1 s and each worker one task: wait for a worker to come and go.
    let first = serve.wait_for("sampling pid ", Duration::from_secs(10))?;
    let worker = first
        .split("sampling pid ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .ok_or_else(|| format!("no pid in {first:?}"))?
        .to_string();
    serve.wait_for(&format!("pid {worker} exited"), Duration::from_secs(10))?;
    // Its last second reaches the counters on the next update.
    std::thread::sleep(Duration::from_millis(1500));
    let text = serve.metrics()?;
    let held = |p: &str| {
        value(
            &text,
            &format!("gilscope_gil_held_seconds_total{{pid=\"{p}\"}}"),
        )
    };
    match (held(&worker), held(&pid)) {
        (Some(w), Some(main)) if (0.6..=1.3).contains(&w) && main < 0.2 => {}
        other => return Err(format!("held seconds (worker, main): {other:?}\n{text}").into()),
    }
    if text.contains(&format!("gilscope_target_info{{pid=\"{worker}\"")) {
        return Err(format!("the exited worker {worker} is still a target:\n{text}").into());
    }
    if !text.contains(&format!("gilscope_target_info{{pid=\"{pid}\"")) {
        return Err(format!("the pool's main process is not a target:\n{text}").into());
    }
    Ok(Completion::Completed)
}
