//! `gilscope serve`: sample a process at a low rate for as long as it runs and expose what is
//! measured as Prometheus metrics on an HTTP endpoint. Owns the following of a command name
//! across restarts; the sampling is `record`'s, the counting `metrics`'s, the HTTP `exporter`'s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::exporter::Endpoint;
use crate::formats::metrics::Metrics;
use crate::model::{EndReason, SwitchSites, TargetInfo};
use crate::recorder::{self, ProcessSlice, RecordOptions, Recorder, Slices};
use crate::sample::observe::Observer;
use crate::target::memory::ProcessMemory;
use crate::target::process;

/// How often the metrics are brought up to date.
pub const UPDATE: Duration = Duration::from_secs(1);
/// How often a process of the followed name is looked for while there is none.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How many pids of a name are listed when several go by it.
const LISTED_PIDS: usize = 8;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The process to start with; with `follow_name` and no pid, the first one of that name.
    pub pid: Option<i32>,
    /// Keep serving when the target exits, and sample the next process of this name.
    pub follow_name: Option<String>,
    /// Only processes of this user are followed (None: the owner of the first one sampled).
    pub follow_user: Option<u32>,
    pub listen: SocketAddr,
    pub rate_hz: f64,
    /// Also sample the Python processes below the target.
    pub subprocesses: bool,
    /// Where runnable threads left their CPU (`--switch-sites`).
    pub switch_sites: bool,
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
        follow_user: args.follow_user,
        listen: args.listen,
        rate_hz: args.rate,
        subprocesses: args.subprocesses,
        switch_sites: args.switch_sites,
    };
    let announce: fn(&str) = |line| eprintln!("gilscope: {}", crate::formats::printable(line));
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
    let endpoint = Endpoint::bind(options.listen)?;
    announce(&format!(
        "serving metrics on http://{}/metrics",
        endpoint.address()
    ));
    let metrics = Arc::new(Mutex::new(Metrics::new()));
    let http = {
        let metrics = metrics.clone();
        endpoint.spawn(
            move |format| lock(&metrics).encode(format),
            stop.clone(),
            announce,
        )?
    };
    // Another user's process of the followed name is never sampled: root's exporter would
    // otherwise publish (and read) whatever a local user starts under that name.
    let mut owner = options
        .follow_user
        .or_else(|| options.pid.and_then(process::owner));
    let end = loop {
        let observer = match next.take() {
            Some(observer) => observer,
            None => match options.follow_name.as_deref() {
                Some(name) => match wait_for(name, &mut owner, &stop, announce) {
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
    // An endpoint that failed raised `stop` itself: serve must not end as if all was well.
    http.join()
        .map_err(|why| Error::Internal(format!("the metrics endpoint stopped: {why}")))?;
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
        native: false,
        switch_sites: options.switch_sites,
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
    // `--switch-sites` not in effect for a process is said once, at its first slice (the
    // perf events are opened when its sampling starts); a process is forgotten as it exits.
    let mut switch_sites_said = std::collections::HashSet::new();
    let mut count = |slice: ProcessSlice| {
        if slice.exited {
            switch_sites_said.remove(&slice.observer.pid);
        } else if options.switch_sites && switch_sites_said.insert(slice.observer.pid) {
            if let Some(SwitchSites::Unavailable(why)) = recorder::switch_sites(slice.observer) {
                announce(&format!(
                    "pid {}: without switch sites ({why}): runnable threads off their CPU \
                     are classified without them",
                    slice.observer.pid
                ));
            }
        }
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

/// Wait for a Python process of the name `name` and attach to it (the oldest, if several go
/// by it: saying which, and how to choose another); None once `stop` is raised.
/// Only processes of `owner` are taken; with none yet, the owner of the one taken is from
/// then on the only one followed (said once).
fn wait_for(
    name: &str,
    owner: &mut Option<u32>,
    stop: &AtomicBool,
    announce: fn(&str),
) -> Option<Observer<ProcessMemory>> {
    announce(&format!("waiting for a process named {name}"));
    let mut last_error = String::new();
    let mut skipped = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let mut named = process::named(name);
        if let Some(uid) = *owner {
            named.retain(|&pid| match process::owner(pid) {
                Some(other) if other != uid => {
                    if skipped.insert(pid) {
                        announce(&format!(
                            "pid {pid} is named {name} but runs as {}, not {}: not sampled \
                             (--follow-user chooses the user)",
                            user_name(other),
                            user_name(uid)
                        ));
                    }
                    false
                }
                other => other.is_some(),
            });
        }
        for &pid in &named {
            match recorder::attach(pid) {
                Ok(observer) => {
                    if named.len() > 1 {
                        announce(&several_named(name, &named, pid));
                    }
                    if owner.is_none() {
                        if let Some(uid) = process::owner(pid) {
                            *owner = Some(uid);
                            announce(&format!(
                                "following processes named {name} of user {} only \
                                 (--follow-user chooses another)",
                                user_name(uid)
                            ));
                        }
                    }
                    return Some(observer);
                }
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

/// "app (uid 1000)", or the uid alone where it has no name.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// The line that says which of several processes of a name is sampled, and how to choose.
fn several_named(name: &str, pids: &[i32], chosen: i32) -> String {
    let mut listed: Vec<String> = pids.iter().take(LISTED_PIDS).map(i32::to_string).collect();
    if pids.len() > LISTED_PIDS {
        listed.push("...".into());
    }
    let which = if pids.first() == Some(&chosen) {
        format!("the oldest, pid {chosen}")
    } else {
        format!("pid {chosen}, the oldest that runs Python")
    };
    format!(
        "{} processes are named {name} (pids {}): sampling {which}; to sample another, \
         add --pid PID (--follow-name then follows its name after it exits)",
        pids.len(),
        listed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_processes_of_a_name_are_listed_with_the_choice_and_how_to_change_it() {
        let line = several_named("app.py", &[10, 20], 10);
        assert_eq!(
            line,
            "2 processes are named app.py (pids 10, 20): sampling the oldest, pid 10; to \
             sample another, add --pid PID (--follow-name then follows its name after it exits)"
        );
        let many: Vec<i32> = (1..=20).collect();
        let line = several_named("gunicorn", &many, 3);
        assert!(line.starts_with("20 processes are named gunicorn (pids 1, 2, 3, 4, 5, 6, 7, 8, ...): sampling pid 3, the oldest that runs Python;"), "{line}");
    }
}
