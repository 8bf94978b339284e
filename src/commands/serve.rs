//! `gilscope serve`: sample a process at a low rate for as long as it runs and expose what is
//! measured as Prometheus metrics on an HTTP endpoint. Owns the listener and the following of
//! a command name across restarts; the sampling is `record`'s and the counting `metrics`'s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::formats::metrics::{self, Metrics};
use crate::model::{EndReason, TargetInfo};
use crate::recorder::{self, ProcessSlice, RecordOptions, Recorder, Slices};
use crate::sample::observe::Observer;
use crate::target::memory::ProcessMemory;
use crate::target::process;

/// How often the metrics are brought up to date.
pub const UPDATE: Duration = Duration::from_secs(1);
/// How often a process of the followed name is looked for while there is none.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How long the HTTP thread waits for a request before it looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The process to start with; with `follow_name` and no pid, the first one of that name.
    pub pid: Option<i32>,
    /// Keep serving when the target exits, and sample the next process of this name.
    pub follow_name: Option<String>,
    pub listen: SocketAddr,
    pub rate_hz: f64,
    /// Also sample the Python processes below the target.
    pub subprocesses: bool,
}

/// Why `serve` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// Ctrl-C or SIGTERM.
    Stopped,
    /// The target exited and no name was followed.
    TargetExited,
}

/// `gilscope serve`.
pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        recorder::check_target(pid)?;
    }
    let stop = super::stop_flag();
    let options = ServeOptions {
        pid: args.pid,
        follow_name: args.follow_name,
        listen: args.listen,
        rate_hz: args.rate,
        subprocesses: args.subprocesses,
    };
    let announce: fn(&str) = |line| eprintln!("gilscope: {line}");
    if serve(options, stop, announce)? == ServeEnd::TargetExited {
        eprintln!("gilscope: the process exited; stopping (--follow-name keeps serving)");
    }
    Ok(())
}

/// Serve metrics until `stop` is raised (or the target exits, when no name is followed).
/// `announce` hears about each step (listening, attached, detached) for the user.
pub fn serve(options: ServeOptions, stop: Arc<AtomicBool>, announce: fn(&str)) -> Result<ServeEnd> {
    // A bad pid is an error before anything listens.
    let mut next = match options.pid {
        Some(pid) => Some(recorder::attach(pid)?),
        None => None,
    };
    let server = tiny_http::Server::http(options.listen)
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", options.listen)))?;
    let address = server
        .server_addr()
        .to_ip()
        .map_or_else(|| options.listen.to_string(), |a| a.to_string());
    announce(&format!("serving metrics on http://{address}/metrics"));
    let metrics = Arc::new(Mutex::new(Metrics::new()));
    let http = {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        std::thread::Builder::new()
            .name("gilscope-http".into())
            .spawn(move || answer(&server, &metrics, &stop))
            .map_err(|e| Error::Internal(format!("cannot start the HTTP thread: {e}")))?
    };
    let end = loop {
        let observer = match next.take() {
            Some(observer) => observer,
            None => match options.follow_name.as_deref() {
                Some(name) => match wait_for(name, &stop, announce) {
                    Some(observer) => observer,
                    None => break ServeEnd::Stopped,
                },
                None => break ServeEnd::TargetExited,
            },
        };
        match sample(observer, &options, &metrics, &stop, announce) {
            e if e.target_gone() && options.follow_name.is_some() => continue,
            e if e.target_gone() => break ServeEnd::TargetExited,
            _ => break ServeEnd::Stopped,
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = http.join();
    Ok(end)
}

/// Sample one target (and with --subprocesses the Python processes below it) until it exits
/// or `stop`, counting each process's slices into `metrics` under its pid.
fn sample(
    observer: Observer<ProcessMemory>,
    options: &ServeOptions,
    metrics: &Mutex<Metrics>,
    stop: &AtomicBool,
    announce: fn(&str),
) -> EndReason {
    let record_options = RecordOptions {
        rate_hz: options.rate_hz,
        duration: None,
        // Metrics have no stacks: sampling stays cheap.
        stacks: false,
        timeline: false,
        progress: None,
    };
    let attach = |metrics: &mut Metrics, observer: &Observer<ProcessMemory>| {
        if !metrics.is_attached(observer.pid) {
            let target = recorder::target_info(observer);
            announce(&attached_line(&target));
            metrics.attached(&target);
        }
    };
    let detach = |metrics: &mut Metrics, pid: i32| {
        if metrics.is_attached(pid) {
            announce(&format!("pid {pid} exited"));
            metrics.detached(pid);
        }
    };
    attach(&mut lock(metrics), &observer);
    let mut count = |slice: ProcessSlice| {
        let mut metrics = lock(metrics);
        attach(&mut metrics, slice.observer);
        metrics.add_slice(slice.observer.pid, &slice.profile, slice.health);
        if slice.exited {
            detach(&mut metrics, slice.observer.pid);
        }
    };
    let slices = Some(Slices {
        every: UPDATE,
        sink: &mut count,
    });
    let finished = Recorder::from_observer(observer, options.subprocesses).run(
        &record_options,
        stop,
        None,
        slices,
    );
    let mut metrics = lock(metrics);
    let mut ended = EndReason::TargetExited;
    for (recording, _) in &finished {
        let pid = recording.target.pid;
        metrics.add_slice(pid, &recording.profile, &recording.health);
        if recording.sampler.ended.target_gone() {
            detach(&mut metrics, pid);
        } else {
            ended = recording.sampler.ended;
        }
    }
    ended
}

fn attached_line(target: &TargetInfo) -> String {
    format!(
        "sampling pid {} - Python {}: {}",
        target.pid,
        target.python_version,
        crate::formats::printable(&target.command_line)
    )
}

/// The metrics, even if a thread panicked while holding them (they are counters: still valid).
fn lock(metrics: &Mutex<Metrics>) -> std::sync::MutexGuard<'_, Metrics> {
    metrics.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wait for a Python process of the name `name` and attach to it; None once `stop` is raised.
fn wait_for(name: &str, stop: &AtomicBool, announce: fn(&str)) -> Option<Observer<ProcessMemory>> {
    announce(&format!("waiting for a process named {name}"));
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        for pid in process::named(name) {
            match recorder::attach(pid) {
                Ok(observer) => return Some(observer),
                // Not Python yet (still starting), or not Python at all: say so once.
                Err(e) => {
                    let error = format!("pid {pid}: {e}");
                    if error != last_error {
                        announce(&error);
                        last_error = error;
                    }
                }
            }
        }
        std::thread::sleep(FOLLOW_POLL);
    }
    None
}

/// Answer HTTP requests until `stop`: GET (or HEAD) /metrics, and nothing else.
fn answer(server: &tiny_http::Server, metrics: &Mutex<Metrics>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(ACCEPT_POLL) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(_) => break,
        };
        let path = request.url().split('?').next().unwrap_or("");
        let read = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let (status, content_type, body) = match (read, path) {
            (true, "/metrics") => (200, metrics::CONTENT_TYPE, lock(metrics).encode()),
            (false, "/metrics") => (405, "text/plain; charset=utf-8", "only GET\n".into()),
            _ => (
                404,
                "text/plain; charset=utf-8",
                "not found: gilscope serves /metrics only\n".into(),
            ),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
            .expect("a valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        // A client that went away is its own business.
        let _ = request.respond(response);
    }
}
