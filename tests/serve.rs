//! `gilscope serve` end to end: a real Prometheus server scrapes it and answers queries with
//! the fixture's known answers; it ends with its target, or follows a name across restarts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{Fixture, Python};

type Test = fn(&Python) -> Result<Completion, Failed>;

fn main() {
    let mut suite = common::Suite::new(common::pythons());
    let tests: [(&str, Test); 18] = [
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
            "switch_sites_not_in_effect_are_said_when_a_process_is_sampled",
            switch_sites,
        ),
        (
            "follow_name_samples_the_next_process_of_that_name",
            follows_name,
        ),
        (
            "follow_name_never_samples_another_users_process_of_that_name",
            follows_one_user,
        ),
        (
            "follow_name_with_two_matches_says_which_it_samples_and_how_to_choose",
            follow_name_chooses_aloud,
        ),
        ("only_get_and_head_of_metrics_are_served", http_surface),
        ("a_taken_port_is_an_error_with_a_hint", taken_port),
        (
            "pipelined_and_keep_alive_requests_are_answered_in_order",
            pipelining,
        ),
        (
            "the_exposition_format_follows_the_accept_header",
            exposition_formats,
        ),
        ("metrics_are_served_on_ipv6_loopback", ipv6_loopback),
        (
            "a_client_that_closes_its_side_after_the_request_gets_its_answer",
            half_closed,
        ),
        (
            "a_client_that_pipelines_without_reading_blocks_no_other_scrape",
            pipeliner_blocks_nobody,
        ),
        (
            "idle_slow_and_stalled_connections_are_closed_by_their_deadlines",
            deadlines,
        ),
        (
            "huge_headers_and_request_lines_are_refused_with_bounded_memory",
            huge_heads,
        ),
        (
            "under_a_low_file_limit_the_endpoint_keeps_answering",
            low_file_limit,
        ),
        (
            "thousands_of_hostile_connections_leave_a_bounded_footprint_and_scrapes_answered",
            hostile_crowd,
        ),
    ];
    for (name, test) in tests {
        suite.once(name, test);
    }
    suite.run()
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
        Serve::start_with_file_limit(args, None)
    }

    /// Start serve with RLIMIT_NOFILE set to `files` (soft and hard), as `ulimit -n` would.
    fn start_with_file_limit(args: &[&str], files: Option<u64>) -> Result<Serve, Failed> {
        let mut command = Command::new(common::gilscope_bin());
        command
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(files) = files {
            let limit = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
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
    let raw = format!("{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: 0\r\n\r\n");
    let response = exchange(address, raw.as_bytes())?;
    let response = String::from_utf8_lossy(&response);
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

/// The message of a failure, to wrap it in another.
fn why(failed: Failed) -> String {
    failed.message().unwrap_or("failed").to_string()
}

/// How long a well-behaved client waits for its answer before calling the endpoint blocked.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

fn connect(address: &str) -> Result<TcpStream, Failed> {
    let socket: std::net::SocketAddr = address
        .parse()
        .map_err(|e| format!("address {address}: {e}"))?;
    let stream = TcpStream::connect_timeout(&socket, ANSWER_WITHIN)
        .map_err(|e| format!("connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(ANSWER_WITHIN))
        .and_then(|_| stream.set_write_timeout(Some(ANSWER_WITHIN)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Send `raw` on a new connection and read until the server closes it.
fn exchange(address: &str, raw: &[u8]) -> Result<Vec<u8>, Failed> {
    let mut stream = connect(address)?;
    stream
        .write_all(raw)
        .map_err(|e| format!("write to {address}: {e}"))?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => Ok(response),
        // A server that refuses a request may reset the connection after its answer.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !response.is_empty() => {
            Ok(response)
        }
        Err(e) => Err(format!("read from {address}: {e}").into()),
    }
}

/// One HTTP response: status, headers (names in lower case), body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The responses in `bytes`, in order; `heads[i]` says the i-th answered a HEAD (no body).
/// Bodies are framed by Content-Length, as gilscope sends them.
fn responses(mut bytes: &[u8], heads: &[bool]) -> Result<Vec<Response>, Failed> {
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("an incomplete head: {:?}", String::from_utf8_lossy(bytes)))?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let length = if heads.get(found.len()) == Some(&true) {
            0
        } else {
            length
        };
        if bytes.len() < length {
            return Err(format!("a body cut short after {head:?}").into());
        }
        found.push(Response {
            status,
            headers,
            body: bytes[..length].to_vec(),
        });
        bytes = &bytes[length..];
    }
    Ok(found)
}

/// GET /metrics as a scraper would, on a new connection: the body, within ANSWER_WITHIN.
fn scrape(address: &str, accept: Option<&str>) -> Result<Response, Failed> {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let raw =
        format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n{accept}Connection: close\r\n\r\n");
    let started = Instant::now();
    let bytes = exchange(address, raw.as_bytes())
        .map_err(|e| format!("a scrape failed after {:?}: {}", started.elapsed(), why(e)))?;
    let mut answers = responses(&bytes, &[false])?;
    match answers.pop() {
        Some(r) if r.status == 200 && r.text().contains("gilscope_attached") => Ok(r),
        other => Err(format!("a scrape answered {other:?}").into()),
    }
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

/// `serve --switch-sites` says, for a process it samples, when they cannot be in effect (a
/// libpython stripped of take_gil's symbol) and why; not where they are.
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
        let pid = fx.pid.to_string();
        let mut serve =
            Serve::start(&["--pid", &pid, "--listen", "127.0.0.1:0", "--switch-sites"])?;
        serve.wait_for("sampling pid", Duration::from_secs(15))?;
        // Its first slices (a second each) have been counted once the share is served.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !serve
            .metrics()?
            .contains("gilscope_thread_gil_seconds_total")
        {
            if Instant::now() > deadline {
                return Err("no thread series in 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        while let Ok(line) = serve.lines.recv_timeout(Duration::from_millis(500)) {
            serve.seen.push(line);
        }
        let said: Vec<&String> = serve
            .seen
            .iter()
            .filter(|l| l.contains("without switch sites ("))
            .collect();
        match library_dir {
            None if said.iter().any(|l| l.contains("perf_event_open")) => {
                return Ok(Completion::ignored_with(format!(
                    "perf is refused here: {}",
                    said[0]
                )))
            }
            None if !said.is_empty() => {
                return Err(format!("with take_gil's symbol: {}", said[0]).into())
            }
            Some(_) if said.len() != 1 || !said[0].contains(&format!("pid {pid}: ")) => {
                return Err(format!(
                    "stripped libpython: {} lines saying so; serve said:\n{}",
                    said.len(),
                    serve.seen.join("\n")
                )
                .into())
            }
            _ => {}
        }
    }
    Ok(Completion::Completed)
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

/// `serve --pid P --follow-name NAME` run by root follows P's user only: once P exits, a
/// process of the same name started by another user (here `nobody`, as a hostile local user
/// would) is announced as not sampled and never attached; `--follow-user nobody` takes it.
fn follows_one_user(python: &Python) -> Result<Completion, Failed> {
    use std::os::unix::fs::PermissionsExt;
    let system = Path::new("/usr/bin/python3");
    if !system.exists() || !Path::new("/usr/bin/setpriv").exists() {
        return Ok(Completion::ignored_with(
            "needs /usr/bin/python3 and setpriv to run a process as nobody",
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let name = format!("owned_{}.py", std::process::id());
    let script = dir.path().join(&name);
    std::fs::copy(common::fixture_path("spinners"), &script).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    let mut mine = Fixture::start_script(&python.path, &script, &["--threads", "1"])?;
    let mut serve = Serve::start(&[
        "--pid",
        &mine.pid.to_string(),
        "--follow-name",
        &name,
        "--listen",
        "127.0.0.1:0",
    ])?;
    serve.wait_for(
        &format!("sampling pid {}", mine.pid),
        Duration::from_secs(10),
    )?;
    let mut theirs = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(system)
        .arg(&script)
        .args(["--threads", "1", "--duration", "60"])
        .env(
            "PYTHONPATH",
            common::fixture_path("gilfixture")
                .parent()
                .expect("fixtures"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let _ = mine.child.kill();
    let _ = mine.child.wait();
    let refused = serve.wait_for(
        &format!("pid {} is named {name} but runs as nobody", theirs.id()),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(1));
    let text = serve.metrics()?;
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    let result = (|| {
        refused?;
        if value(&text, "gilscope_attached") != Some(0.0)
            || text.contains(&format!("pid=\"{}\"", theirs.id()))
        {
            return Err(Failed::from(format!(
                "another user's process was sampled:\n{text}"
            )));
        }
        // Chosen by the operator, it is followed.
        let mut chosen = Serve::start(&[
            "--follow-name",
            &name,
            "--follow-user",
            "nobody",
            "--listen",
            "127.0.0.1:0",
        ])?;
        let seen = chosen.wait_for(
            &format!("sampling pid {}", theirs.id()),
            Duration::from_secs(10),
        );
        let _ = chosen.child.kill();
        let _ = chosen.child.wait();
        seen.map(|_| ())
    })();
    let _ = theirs.kill();
    let _ = theirs.wait();
    result.map(|()| Completion::Completed)
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

/// A Python target that costs next to no CPU: a few threads parked on an Event.
fn quiet_target(python: &Python) -> Result<Fixture, Failed> {
    Ok(Fixture::start(
        &python.path,
        "many_threads",
        &["--threads", "4", "--busy", "0", "--duration", "300"],
    )?)
}

/// `serve --pid` of a quiet target on a free loopback port, once it samples it.
fn serving_quiet_target(python: &Python) -> Result<(Fixture, Serve), Failed> {
    let fixture = quiet_target(python)?;
    let pid = fixture.pid.to_string();
    let mut serve = Serve::start(&["--pid", &pid, "--listen", "127.0.0.1:0"])?;
    serve.wait_for(&format!("sampling pid {pid}"), Duration::from_secs(10))?;
    Ok((fixture, serve))
}

/// Only GET and HEAD of /metrics are served; any other method is 405 with `Allow`, any other
/// path 404, and bytes that are not a request (invalid UTF-8, NUL, HTTP/0.9) are refused
/// without harm to the next client.
fn http_surface(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    let address = serve.address.as_str();
    // Only /metrics is served: no index, no other path.
    for path in [
        "/nothing",
        "/",
        "/metrics/",
        "/../metrics",
        "/debug",
        "/%6detrics",
    ] {
        let (status, _) = http_get(address, path)?;
        if status != 404 {
            return Err(format!("{path} answered {status}").into());
        }
    }
    let (status, body) = http_get(address, "/metrics?name[]=x")?;
    if status != 200 || !body.contains("gilscope_attached") {
        return Err(format!("/metrics with a query answered {status}").into());
    }
    let request = |method: &str, target: &str| -> Result<Response, Failed> {
        let raw =
            format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        let bytes = exchange(address, raw.as_bytes())?;
        responses(&bytes, &[method == "HEAD"])?
            .pop()
            .ok_or_else(|| format!("{method} {target}: no answer").into())
    };
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE",
    ] {
        let answer = request(method, "/metrics")?;
        if answer.status != 405 || answer.header("allow") != Some("GET, HEAD") {
            return Err(format!("{method} /metrics answered {answer:?}").into());
        }
    }
    // A proxy's absolute form names the same resource.
    let answer = request("GET", &format!("http://{address}/metrics"))?;
    if answer.status != 200 {
        return Err(format!("GET in absolute form answered {answer:?}").into());
    }
    // HEAD: the headers a GET would have, no body (`responses` would see its bytes as a
    // second, malformed response).
    let head = request("HEAD", "/metrics")?;
    let length: usize = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if head.status != 200 || length == 0 || head.header("content-type").is_none() {
        return Err(format!("HEAD /metrics answered {head:?}").into());
    }
    // Not requests: each refused (a 400 or a closed connection), none answered with metrics.
    let garbage: [&[u8]; 5] = [
        b"GET /metrics\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /met\0rics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ];
    for raw in garbage {
        let bytes = match exchange(address, raw) {
            Ok(bytes) => bytes,
            Err(_) => continue,
        };
        let answer = String::from_utf8_lossy(&bytes);
        if !(answer.is_empty() || answer.starts_with("HTTP/1.1 400")) {
            return Err(format!("{:?} answered {answer:?}", String::from_utf8_lossy(raw)).into());
        }
    }
    // A header value that is not UTF-8 is only a header nobody reads.
    let bytes = exchange(
        address,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: \xff\xfe\r\nX-Junk: \x80\r\nConnection: close\r\n\r\n",
    )?;
    let answer = responses(&bytes, &[false])?;
    if answer.first().map(|r| r.status) != Some(200) {
        return Err(format!("invalid UTF-8 in headers: {answer:?}").into());
    }
    scrape(address, None)?;
    Ok(Completion::Completed)
}

/// A port in use is a one-line error before anything runs, with a hint that says how to
/// find the other listener and how to choose another port.
fn taken_port(python: &Python) -> Result<Completion, Failed> {
    let fixture = quiet_target(python)?;
    let pid = fixture.pid.to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let address = taken.local_addr().map_err(|e| e.to_string())?.to_string();
    let port = address.rsplit(':').next().unwrap_or_default();
    let out = common::gilscope(&["serve", "--pid", &pid, "--listen", &address]);
    let stderr = common::stderr_of(&out);
    let lines: Vec<&str> = stderr.lines().collect();
    let hint = lines.get(1).copied().unwrap_or_default();
    if out.status.code() != Some(2)
        || lines.len() != 2
        || !lines[0].starts_with(&format!("gilscope: cannot listen on {address}"))
        || !lines[0].contains("already in use")
        || !hint.starts_with("hint: ")
        || !hint.contains(&format!("sport = :{port}"))
        || !hint.contains("--listen 127.0.0.1:0")
    {
        return Err(format!("a taken port gave {:?}:\n{stderr}", out.status.code()).into());
    }
    Ok(Completion::Completed)
}

/// HTTP/1.1 pipelining: three requests in one write get three answers in order (a GET, a
/// HEAD without a body, a 404); a keep-alive connection is answered request after request.
fn pipelining(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    let address = serve.address.as_str();
    let raw = format!(
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n\
         HEAD /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n\
         GET /nothing HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    );
    let bytes = exchange(address, raw.as_bytes())?;
    let answers = responses(&bytes, &[false, true, false])?;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    if statuses != [200, 200, 404] || !answers[0].text().contains("gilscope_attached") {
        return Err(format!("pipelined answers {statuses:?}: {answers:?}").into());
    }
    // One connection, many requests, each read before the next is sent.
    let mut stream = connect(address)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    for i in 0..200 {
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n")
            .map_err(|e| format!("request {i}: {e}"))?;
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .map_err(|e| format!("answer {i}: {e}"))?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("answer {i}: {e}"))?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        reader
            .read_exact(&mut body)
            .map_err(|e| format!("answer {i}: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("keep-alive request {i} answered {status:?}").into());
        }
    }
    Ok(Completion::Completed)
}

/// Content negotiation: OpenMetrics unless the scraper prefers the Prometheus text format
/// 0.0.4 (`Accept: text/plain; version=0.0.4`), which is then valid for promtool.
fn exposition_formats(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    // Counters appear with the first second of samples.
    std::thread::sleep(Duration::from_millis(2500));
    let address = serve.address.as_str();
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    let cases = [
        (None, OPENMETRICS),
        (Some("*/*"), OPENMETRICS),
        // What Prometheus 2.x sends.
        (
            Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            OPENMETRICS,
        ),
        (Some("text/plain; version=0.0.4"), TEXT),
        (Some("text/plain;version=0.0.4;q=0.9, */*;q=0.1"), TEXT),
        (Some("text/plain"), TEXT),
        (
            Some("application/openmetrics-text; version=1.0.0; q=0.2, text/plain; version=0.0.4; q=0.8"),
            TEXT,
        ),
        (Some("text/plain; version=0.0.4; q=0"), OPENMETRICS),
        (Some("application/json"), OPENMETRICS),
        (Some("text/plain; version=9.9"), OPENMETRICS),
    ];
    let mut text = String::new();
    for (accept, wanted) in cases {
        let answer = scrape(address, accept)?;
        if answer.header("content-type") != Some(wanted) || answer.header("vary") != Some("Accept")
        {
            return Err(format!("Accept {accept:?} answered {:?}", answer.headers).into());
        }
        let body = answer.text();
        let openmetrics = wanted == OPENMETRICS;
        if openmetrics != body.ends_with("# EOF\n") || openmetrics != body.contains("# UNIT ") {
            return Err(format!("Accept {accept:?}: a body not in {wanted}:\n{body}").into());
        }
        if !openmetrics {
            text = body;
        }
    }
    for needed in [
        "# TYPE gilscope_samples_total counter\n",
        "# HELP gilscope_samples_total ",
        "# TYPE gilscope_thread_gil_seconds_total counter\n",
        "# TYPE gilscope_attached gauge\n",
    ] {
        if !text.contains(needed) {
            return Err(format!("no {needed:?} in the text format:\n{text}").into());
        }
    }
    if let Some(promtool) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    }) {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", promtool.display()))?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Parse errors and lint problems (a counter's metadata not named as its sample,
        // missing help: what OpenMetrics text fed to it shows) both fail.
        if !out.status.success() {
            return Err(format!("promtool check metrics:\n{said}\n{text}").into());
        }
    }
    Ok(Completion::Completed)
}

/// `printf 'GET /metrics HTTP/1.0\r\n\r\n' | nc -N HOST PORT` sends its request and closes
/// its side of the connection: the answer must still come, every time (HTTP/1.0 and 1.1).
fn half_closed(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    let address = serve.address.as_str();
    let mut lost = Vec::new();
    for version in ["1.0", "1.1"] {
        let request = format!("GET /metrics HTTP/{version}\r\nHost: {address}\r\n\r\n");
        let mut answered = 0;
        for _ in 0..100 {
            let mut stream = connect(address)?;
            stream
                .write_all(request.as_bytes())
                .and_then(|_| stream.shutdown(std::net::Shutdown::Write))
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            if answer.starts_with(format!("HTTP/{version} 200 OK").as_bytes()) {
                answered += 1;
            }
        }
        if answered < 100 {
            lost.push(format!(
                "HTTP/{version}: {} of 100 unanswered",
                100 - answered
            ));
        }
    }
    if !lost.is_empty() {
        return Err(lost.join("; ").into());
    }
    Ok(Completion::Completed)
}

/// `--listen [::1]:0` serves on the IPv6 loopback.
fn ipv6_loopback(python: &Python) -> Result<Completion, Failed> {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return Ok(Completion::ignored_with("no IPv6 loopback on this machine"));
    }
    let fixture = quiet_target(python)?;
    let pid = fixture.pid.to_string();
    let serve = Serve::start(&["--pid", &pid, "--listen", "[::1]:0"])?;
    if !serve.address.starts_with("[::1]:") {
        return Err(format!("announced {}", serve.address).into());
    }
    scrape(&serve.address, None)?;
    Ok(Completion::Completed)
}

/// With two processes of the followed name, serve samples the oldest and says so, naming
/// both pids and how to choose the other.
fn follow_name_chooses_aloud(python: &Python) -> Result<Completion, Failed> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let name = format!("follow_two_{}.py", std::process::id());
    let script = dir.path().join(&name);
    std::fs::copy(common::fixture_path("many_threads"), &script).map_err(|e| e.to_string())?;
    let args = ["--threads", "1", "--busy", "0", "--duration", "120"];
    let older = Fixture::start_script(&python.path, &script, &args)?;
    let younger = Fixture::start_script(&python.path, &script, &args)?;
    let mut serve = Serve::start(&["--follow-name", &name, "--listen", "127.0.0.1:0"])?;
    serve.wait_for(
        &format!("sampling pid {}", older.pid),
        Duration::from_secs(10),
    )?;
    let said = serve.seen.join("\n");
    let choice = serve
        .seen
        .iter()
        .find(|l| l.contains(&format!("2 processes are named {name}")))
        .ok_or_else(|| format!("no word of the two matches; it said:\n{said}"))?;
    if !choice.contains(&format!("{}, {}", older.pid, younger.pid))
        || !choice.contains(&format!("the oldest, pid {}", older.pid))
        || !choice.contains("--pid")
    {
        return Err(format!("the choice is not explained: {choice}").into());
    }
    Ok(Completion::Completed)
}

/// Threads, open files and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    threads: u64,
    files: u64,
    /// Open files that are sockets: the listener and the connections.
    sockets: u64,
    rss_kib: u64,
    peak_rss_kib: u64,
}

fn footprint(pid: u32) -> Result<Footprint, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    let targets: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .collect();
    let sockets = targets
        .iter()
        .filter(|t| t.to_string_lossy().starts_with("socket:"))
        .count() as u64;
    Ok(Footprint {
        threads: field("Threads:")?,
        files: targets.len() as u64,
        sockets,
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
    })
}

/// Raise this process's file limit to its hard limit: the hostile clients need thousands.
fn raise_own_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// Open up to `count` connections that never send a byte, from a few threads (on a loaded
/// machine each connect waits on the kernel, not on the server); stop early if connecting
/// fails (a server that stopped accepting), and say why.
fn idle_connections(address: &str, count: usize) -> (Vec<TcpStream>, Option<String>) {
    let socket: std::net::SocketAddr = match address.parse() {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    const OPENERS: usize = 8;
    let openers: Vec<_> = (0..OPENERS)
        .map(|i| {
            let share = count / OPENERS + usize::from(i < count % OPENERS);
            std::thread::spawn(move || {
                let mut open = Vec::with_capacity(share);
                for _ in 0..share {
                    match TcpStream::connect_timeout(&socket, Duration::from_secs(3)) {
                        Ok(stream) => open.push(stream),
                        Err(e) => return (open, Some(e.to_string())),
                    }
                }
                (open, None)
            })
        })
        .collect();
    let (mut all, mut failure) = (Vec::with_capacity(count), None);
    for opener in openers {
        match opener.join() {
            Ok((open, why)) => {
                all.extend(open);
                failure = failure.or(why);
            }
            Err(_) => failure = Some("an opener panicked".into()),
        }
    }
    let failure =
        failure.map(|why| format!("{} of {count} connections opened, then: {why}", all.len()));
    (all, failure)
}

/// A connection that pipelines GET /metrics and never reads: requests are written until the
/// server stops taking them (its answers fill both socket buffers) or `budget` bytes; the
/// number of whole requests written.
fn pipeliner(address: &str, budget: usize) -> Result<(TcpStream, usize), Failed> {
    let mut stream = connect(address)?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let many = request.repeat(1024);
    let (mut sent, mut stalled_since) = (0, None::<Instant>);
    while sent < budget {
        // The stream of requests goes on where the last write left it.
        let at = sent % request.len();
        match stream.write(&many.as_bytes()[at..]) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("pipelining, after {sent} bytes: {e}").into()),
        }
    }
    Ok((stream, sent / request.len()))
}

/// One connection pipelines thousands of GETs and never reads its answers; other scrapers
/// are still answered, and serve's memory does not grow with the requests.
fn pipeliner_blocks_nobody(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    std::thread::sleep(Duration::from_millis(1500));
    let address = serve.address.clone();
    let before = footprint(serve.child.id())?;
    let (_hostile, requests) = pipeliner(&address, 64 << 20)?;
    if requests < 3000 {
        return Err(format!("only {requests} requests could be pipelined").into());
    }
    for _ in 0..3 {
        scrape(&address, None).map_err(|e| {
            format!(
                "with {requests} pipelined requests unread on another connection: {}",
                why(e)
            )
        })?;
    }
    let after = footprint(serve.child.id())?;
    let grown = after.peak_rss_kib.saturating_sub(before.rss_kib);
    // A connection holds one request head and one answer at a time, whatever it pipelines.
    if grown > 16 * 1024 {
        return Err(format!("{requests} pipelined requests grew serve by {grown} KiB").into());
    }
    Ok(Completion::Completed)
}

/// Has the server closed `stream` (EOF or reset) by `deadline`? Data still arriving is read
/// and dropped.
fn closed_by_server(stream: &mut TcpStream, deadline: Instant) -> bool {
    let _ = stream.set_nonblocking(false);
    let mut sink = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
}

/// The documented deadlines (docs/METRICS.md): a request head must be complete 10 s after
/// the connection opens or the previous answer ends, and an answer that cannot be written for
/// 10 s closes the connection. An idle connection, a slowloris one (a header byte a second),
/// a keep-alive one left idle, and a pipeliner that never reads are all closed by then.
fn deadlines(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    let address = serve.address.clone();
    let started = Instant::now();
    let mut idle = connect(&address)?;
    let mut kept_alive = connect(&address)?;
    write!(
        kept_alive,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut slow = connect(&address)?;
    let (mut pipelined, _) = pipeliner(&address, 64 << 20)?;
    // The slowloris: one byte a second, never the end of the head.
    let dripping = {
        let mut slow = slow.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let _ = slow.write_all(head);
            for _ in 0..40 {
                std::thread::sleep(Duration::from_secs(1));
                if slow.write_all(b"a").is_err() {
                    break;
                }
            }
        })
    };
    // Nothing is read before both deadlines have passed: reading the pipeliner's answers
    // would let the server write again. Then a closed connection shows at once (what was
    // sent before the close, then EOF or a reset), an open one keeps streaming or waiting.
    std::thread::sleep(
        (started + Duration::from_secs(12)).saturating_duration_since(Instant::now()),
    );
    let mut open = Vec::new();
    for (what, stream) in [
        ("a pipeliner that never reads", &mut pipelined),
        ("an idle connection", &mut idle),
        ("a keep-alive connection left idle", &mut kept_alive),
        ("a slowloris connection", &mut slow),
    ] {
        if !closed_by_server(stream, Instant::now() + Duration::from_secs(2)) {
            open.push(what);
        }
    }
    let _ = slow.shutdown(std::net::Shutdown::Both);
    let _ = dripping.join();
    if !open.is_empty() {
        return Err(format!(
            "still open after {:?}: {}",
            started.elapsed(),
            open.join(", ")
        )
        .into());
    }
    scrape(&address, None)?;
    Ok(Completion::Completed)
}

/// Request heads of 64 MiB (a header, a request line) on five connections at once: each is
/// refused after a bounded part of it is read, and serve's memory stays bounded.
fn huge_heads(python: &Python) -> Result<Completion, Failed> {
    let (_fixture, serve) = serving_quiet_target(python)?;
    let address = serve.address.clone();
    scrape(&address, None)?;
    let before = footprint(serve.child.id())?;
    const HUGE: usize = 64 << 20;
    let senders: Vec<_> = (0..5)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || -> Result<(usize, Vec<u8>), String> {
                let mut stream = connect(&address).map_err(why)?;
                let start: &[u8] = if i == 0 {
                    b"GET /metrics"
                } else {
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Huge: "
                };
                let mut sent = 0;
                let filler = vec![b'a'; 64 * 1024];
                if stream.write_all(start).is_ok() {
                    while sent < HUGE {
                        match stream.write(&filler) {
                            Ok(n) => sent += n,
                            Err(_) => break,
                        }
                    }
                }
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                Ok((sent, answer))
            })
        })
        .collect();
    // Scrapes go on meanwhile.
    scrape(&address, None)?;
    let mut results = Vec::new();
    for sender in senders {
        results.push(sender.join().map_err(|_| "a sender panicked")??);
    }
    let after = footprint(serve.child.id())?;
    for (sent, answer) in &results {
        let answer = String::from_utf8_lossy(answer);
        if *sent >= HUGE
            || !(answer.is_empty()
                || answer.starts_with("HTTP/1.1 431")
                || answer.starts_with("HTTP/1.1 414")
                || answer.starts_with("HTTP/1.1 400"))
        {
            return Err(
                format!("a {HUGE}-byte head: {sent} bytes taken, answered {answer:?}").into(),
            );
        }
    }
    let grown = after.peak_rss_kib.saturating_sub(before.rss_kib);
    if grown > 16 * 1024 {
        return Err(format!(
            "five huge heads grew serve by {grown} KiB: {results:?}",
            results = results.iter().map(|r| r.0).collect::<Vec<_>>()
        )
        .into());
    }
    scrape(&address, None)?;
    Ok(Completion::Completed)
}

/// Under `ulimit -n 128` and `ulimit -n 1024`, 2,000 idle connections neither close the port
/// nor end the endpoint: scrapes are answered, and SIGTERM still ends serve with success.
fn low_file_limit(python: &Python) -> Result<Completion, Failed> {
    raise_own_file_limit();
    let fixture = quiet_target(python)?;
    let pid = fixture.pid.to_string();
    for files in [128, 1024] {
        let mut serve =
            Serve::start_with_file_limit(&["--pid", &pid, "--listen", "127.0.0.1:0"], Some(files))?;
        serve.wait_for(&format!("sampling pid {pid}"), Duration::from_secs(10))?;
        let (idle, failed) = idle_connections(&serve.address, 2000);
        let answered = scrape(&serve.address, None);
        let alive = serve.child.try_wait().map_err(|e| e.to_string())?.is_none();
        if let Some(why) = failed {
            return Err(format!("ulimit -n {files}: {why}; alive: {alive}").into());
        }
        answered.map_err(|e| {
            format!(
                "ulimit -n {files}, {} idle connections: {}; alive: {alive}",
                idle.len(),
                why(e)
            )
        })?;
        drop(idle);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(serve.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| e.to_string())?;
        let code = serve.wait_exit(Duration::from_secs(10))?;
        let said = serve.seen.join("\n");
        if code != 0 || said.contains("panicked") {
            return Err(format!("ulimit -n {files}: exit {code}; it said:\n{said}").into());
        }
    }
    Ok(Completion::Completed)
}

/// 2,000 hostile connections at once (eight times the connection limit, past the default
/// file limit of 1,024; 5,000 took 30 s, mostly the kernel retrying connects to a full
/// backlog, and showed the same footprint): idle ones, slowloris ones, pipeliners that never read
/// and huge heads. Serve's threads stay as they were, its open files stay within its
/// connection limit (256, docs/METRICS.md) and its memory within that many connections'
/// buffers, and a well-behaved scraper is answered throughout.
fn hostile_crowd(python: &Python) -> Result<Completion, Failed> {
    let own_limit = raise_own_file_limit();
    let crowd = 2000usize.min(own_limit.saturating_sub(200) as usize);
    let (_fixture, serve) = serving_quiet_target(python)?;
    let address = serve.address.clone();
    let body = scrape(&address, None)?.body.len() as u64;
    let before = footprint(serve.child.id())?;
    let mut hostile = Vec::new();
    let mut pipeliners = Vec::new();
    for _ in 0..8 {
        pipeliners.push(pipeliner(&address, 8 << 20)?.0);
    }
    let (idle, failed) = idle_connections(&address, crowd - 8);
    hostile.extend(idle);
    if let Some(why) = failed {
        return Err(format!("{why}; serve: {:?}", footprint(serve.child.id())).into());
    }
    // Half of them start a head and drip it, a byte at a time.
    for stream in hostile.iter_mut().step_by(2) {
        let _ = stream.set_nonblocking(true);
        let _ = stream.write(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
    }
    let mut worst = before;
    for round in 0..5 {
        for stream in hostile.iter_mut().step_by(2) {
            let _ = stream.write(b"a");
        }
        scrape(&address, None).map_err(|e| {
            format!(
                "round {round}, {} hostile connections: {}",
                hostile.len() + 8,
                why(e)
            )
        })?;
        let now = footprint(serve.child.id())?;
        worst.threads = worst.threads.max(now.threads);
        worst.files = worst.files.max(now.files);
        worst.sockets = worst.sockets.max(now.sockets);
        worst.peak_rss_kib = worst.peak_rss_kib.max(now.peak_rss_kib);
        std::thread::sleep(Duration::from_millis(500));
    }
    // Bounds from the design: no thread per connection; at most 256 connections (sockets
    // beside the listener), each with a 16 KiB read buffer, one answer (`body` bytes) and a
    // few KiB of state. The sampler's own files (two per target thread) come and go apart.
    const CONNECTIONS: u64 = 256;
    let memory_bound_kib = CONNECTIONS * (16 + body / 1024 + 1 + 8) + 8 * 1024;
    let grown = worst.peak_rss_kib.saturating_sub(before.rss_kib);
    let said = format!(
        "{} hostile connections: before {before:?}, worst {worst:?}, grown {grown} KiB \
         (bound {memory_bound_kib} KiB)",
        hostile.len() + 8
    );
    eprintln!("{said}");
    if worst.threads > before.threads || worst.sockets > 1 + CONNECTIONS || grown > memory_bound_kib
    {
        return Err(said.into());
    }
    drop(hostile);
    drop(pipeliners);
    scrape(&address, None)?;
    Ok(Completion::Completed)
}
