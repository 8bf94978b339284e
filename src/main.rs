//! The gilscope command: parse the command line, run the library, print errors as one line
//! with a hint, and map them to documented exit codes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use gilscope::cli::{Cli, Command, DumpArgs, ManArgs, RecordArgs, ServeArgs, TopArgs};
use gilscope::error::{Error, ExitCode, Result};
use gilscope::record::{self, RecordOptions, Target};
use gilscope::report::live::ViewState;
use gilscope::report::{self, EndReason, Format, RenderOptions};
use gilscope::sample::ThreadState;
use gilscope::serve::{ServeEnd, ServeOptions};
use gilscope::top::{TopEnd, TopOptions};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            let (message, usage) = usage_error(&e.to_string());
            eprintln!("gilscope: {message}");
            eprintln!("hint: {usage}");
            std::process::exit(ExitCode::Usage as i32);
        }
    };
    // Each thread of a target keeps two files open while it is sampled.
    gilscope::target::process::raise_open_file_limit();
    let result = match cli.command {
        Command::Record(args) => record_command(args),
        Command::Dump(args) => dump_command(args),
        Command::Top(args) => top_command(args),
        Command::Serve(args) => serve_command(args),
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let name = command.get_name().to_string();
            clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
            Ok(())
        }
        Command::Man(args) => man_pages(args),
    };
    if let Err(error) = result {
        eprintln!("gilscope: {error}");
        if let Some(hint) = error.hint() {
            eprintln!("hint: {hint}");
        }
        std::process::exit(error.exit_code() as i32);
    }
}

/// clap's several-line usage error as gilscope's one line and a hint: the message with what
/// clap puts on the lines below it ("possible values", the missing arguments), and the usage.
fn usage_error(rendered: &str) -> (String, String) {
    let mut message = String::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
        } else if line.is_empty() || line.starts_with("For more information") {
            continue;
        } else if usage.is_none() {
            let line = line.strip_prefix("error: ").unwrap_or(line);
            let line = line
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .unwrap_or(line);
            if !message.is_empty() && !message.ends_with(':') {
                message.push(';');
            }
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(line);
        }
    }
    let hint = match usage {
        Some(usage) => format!("usage: {usage} (see --help)"),
        None => "see gilscope --help".to_string(),
    };
    (message, hint)
}

/// The manual pages, one per command as git has them: gilscope(1) lists the subcommands and
/// refers to gilscope-record(1) and the others.
fn man_pages(args: ManArgs) -> Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    if let Some(dir) = args.out_dir {
        return clap_mangen::generate_to(command, &dir).map_err(|e| Error::Output {
            path: dir.display().to_string(),
            source: e,
        });
    }
    let page = match args.subcommand {
        None => command,
        Some(name) => {
            let Some(sub) = command.find_subcommand(&name) else {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .map(|s| s.get_name())
                    .filter(|&n| n != "help")
                    .collect();
                return Err(Error::Usage(format!(
                    "no subcommand '{name}': the pages are for {}",
                    names.join(", ")
                )));
            };
            let title = format!("{}-{}", command.get_name(), sub.get_name());
            sub.clone()
                .name(title)
                .bin_name(format!("{} {}", command.get_name(), sub.get_name()))
                .version(command.get_version().unwrap_or_default().to_string())
                .disable_version_flag(true)
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .map_err(|e| Error::Internal(format!("cannot render the manual page: {e}")))?;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&roff);
    let _ = stdout.flush();
    Ok(())
}

/// SIGINT and SIGTERM end the recording (a second SIGINT ends gilscope at once).
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone());
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}

fn record_command(args: RecordArgs) -> Result<()> {
    let target = match (args.pid, args.command.is_empty()) {
        (Some(pid), true) => Target::Pid(pid),
        (None, false) => Target::Command(args.command.clone()),
        (Some(_), false) => {
            return Err(Error::Usage(
                "give either --pid or a command after --, not both".into(),
            ))
        }
        (None, true) => {
            return Err(Error::Usage(
                "nothing to record: give --pid PID or a command after --".into(),
            ))
        }
    };
    let format = args
        .format
        .or_else(|| args.output.as_deref().and_then(Format::from_path))
        .unwrap_or(Format::Text);
    if let Some(path) = &args.output {
        check_writable(path)?;
    }
    let mut render = RenderOptions {
        view: args.view,
        ..RenderOptions::default()
    };
    if !args.state.is_empty() {
        render.states = Vec::new();
        for state in args.state.iter().map(|&s| ThreadState::from(s)) {
            if !render.states.contains(&state) {
                render.states.push(state);
            }
        }
    }
    if args.idle && !render.states.contains(&ThreadState::Idle) {
        render.states.push(ThreadState::Idle);
    }
    if args.gil_only && format.shows_stacks() {
        eprintln!(
            "gilscope: --gil-only records no stacks: the {} output shows threads and states only",
            format!("{format:?}").to_lowercase()
        );
    }
    let options = RecordOptions {
        target: target.clone(),
        rate_hz: args.rate,
        duration: args.duration.map(Duration::from_secs_f64),
        stacks: !args.gil_only,
        timeline: format.needs_timeline(),
        progress: std::io::stderr()
            .is_terminal()
            .then_some(print_progress as fn(&record::Progress)),
    };
    let stop = stop_flag();
    let mut observations = match &args.observations {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| Error::Output {
                path: path.display().to_string(),
                source,
            })?,
        )),
        None => None,
    };
    let mut write_observation = |pid: i32, o: &gilscope::sample::observe::Observation| {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            pid: i32,
            #[serde(flatten)]
            observation: &'a gilscope::sample::observe::Observation,
        }
        if let Some(out) = observations.as_mut() {
            let _ = serde_json::to_writer(
                &mut *out,
                &Line {
                    pid,
                    observation: o,
                },
            );
            let _ = out.write_all(b"\n");
        }
    };
    let duration_text = args
        .duration
        .map(|d| format!(" for {d} s"))
        .unwrap_or_default();
    let (recordings, spawned) = if args.subprocesses {
        let (spawned, root) = match &target {
            Target::Pid(pid) => (None, *pid),
            Target::Command(command) => {
                let spawned = record::start(command)?;
                let pid = spawned.pid();
                (Some(spawned), pid)
            }
        };
        let mut spawned = spawned;
        let started = spawned.is_some();
        let first = match record::attach(root) {
            Ok(observer) => Some(observer),
            // The root may be a shell or a launcher that starts Python later, or a Python
            // that gilscope just started and is still setting up: the tree's scan tries again.
            Err(Error::NotPython { .. } | Error::NotReady { .. }) => None,
            Err(Error::UnrecognisedLayout { .. }) if started => None,
            Err(e) => {
                if let Some(spawned) = spawned {
                    spawned.finish();
                }
                return Err(e);
            }
        };
        eprintln!(
            "gilscope: sampling process {root} and the Python processes below it at {} Hz{duration_text}; Ctrl-C to stop",
            args.rate
        );
        let mut tree = record::Descendants::new(root);
        let recordings: Vec<report::Recording> = record::run_tree(
            first,
            &mut tree,
            spawned.as_mut(),
            &options,
            &stop,
            Some(&mut write_observation),
            None,
        )
        .into_iter()
        .map(|(recording, _)| recording)
        .collect();
        for (pid, why) in tree.refused() {
            eprintln!("gilscope: process {pid} was not sampled: {why}");
        }
        if recordings.is_empty() {
            if let Some(spawned) = spawned {
                spawned.finish();
            }
            return Err(Error::NoPythonInTree { pid: root });
        }
        (recordings, spawned)
    } else {
        let (mut spawned, observer) = match &target {
            Target::Pid(pid) => (None, record::attach(*pid)?),
            Target::Command(command) => {
                let (spawned, observer) = record::spawn(command, &stop)?;
                (Some(spawned), observer)
            }
        };
        eprintln!(
            "gilscope: sampling process {} (Python {}) at {} Hz{duration_text}; Ctrl-C to stop",
            observer.pid, observer.interpreter.version, args.rate,
        );
        let (recording, _) = record::run(
            observer,
            spawned.as_mut(),
            &options,
            &stop,
            Some(&mut write_observation),
            None,
        );
        (vec![recording], spawned)
    };
    if let Some(spawned) = spawned {
        spawned.finish();
    }
    if matches!(target, Target::Pid(_)) {
        for recording in &recordings {
            let gone = match recording.sampler.ended {
                EndReason::TargetExited => "exited",
                EndReason::TargetExeced => "exec'd another program",
                _ => continue,
            };
            eprintln!(
                "gilscope: process {} {gone} after {:.2} s; the report covers what was gathered",
                recording.target.pid,
                recording.profile.duration_s()
            );
        }
    }
    if args.stats {
        for recording in &recordings {
            eprint!(
                "gilscope: sampler stats for pid {}: {}",
                recording.target.pid,
                recording.sampler.stats.render()
            );
        }
    }
    if args.state.is_empty() {
        render = render.with_states_of(&recordings);
    }
    let rendered = if args.subprocesses {
        format.render_processes(&recordings, &render)
    } else {
        format.render(&recordings[0], &render)
    };
    match &args.output {
        Some(path) => {
            report::write_atomically(path, rendered.as_bytes()).map_err(|source| {
                Error::Output {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            eprintln!("gilscope: wrote {}", path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(rendered.as_bytes());
            let _ = stdout.flush();
        }
    }
    if recordings.iter().all(|r| r.profile.samples == 0) {
        return Err(Error::Internal(
            "no samples were taken (the target exited or could not be read)".into(),
        ));
    }
    Ok(())
}

/// One self-overwriting line on a terminal's stderr; cleared when the recording is over.
fn print_progress(p: &record::Progress) {
    let mut err = std::io::stderr().lock();
    if p.done {
        let _ = write!(err, "\r\x1b[2K");
    } else {
        let total = p.total_s.map(|t| format!(" / {t:.1}")).unwrap_or_default();
        let _ = write!(
            err,
            "\r\x1b[2Kgilscope: {:.1}{total} s, {} samples, {} errors, max lag {:.1} ms",
            p.elapsed_s,
            p.samples,
            p.errors,
            p.max_lag_s * 1e3
        );
    }
    let _ = err.flush();
}

fn dump_command(args: DumpArgs) -> Result<()> {
    record::check_target(args.pid)?;
    let sample = args.sample.map(Duration::from_secs_f64);
    let text = if args.subprocesses {
        let snapshots = gilscope::dump::dump_tree(args.pid, sample)?;
        if args.json {
            report::dump::json_processes(&snapshots)
        } else {
            report::dump::text_processes(&snapshots)
        }
    } else {
        let snapshot = gilscope::dump::dump(args.pid, sample)?;
        if args.json {
            report::dump::json(&snapshot)
        } else {
            report::dump::text(&snapshot)
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    Ok(())
}

fn top_command(args: TopArgs) -> Result<()> {
    record::check_target(args.pid)?;
    // The view polls this flag: no forced exit on a second signal, which could leave the
    // terminal in raw mode.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    let options = TopOptions {
        pid: args.pid,
        rate_hz: args.rate,
        view: ViewState {
            sort: args.sort,
            show_idle: args.idle,
            stacks: !args.gil_only,
        },
        subprocesses: args.subprocesses,
    };
    if gilscope::top::top(options, stop)? == TopEnd::TargetExited {
        eprintln!("gilscope: process {} exited", args.pid);
    }
    Ok(())
}

fn serve_command(args: ServeArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        record::check_target(pid)?;
    }
    let stop = stop_flag();
    let options = ServeOptions {
        pid: args.pid,
        follow_name: args.follow_name,
        listen: args.listen,
        rate_hz: args.rate,
        subprocesses: args.subprocesses,
    };
    let announce: fn(&str) = |line| eprintln!("gilscope: {line}");
    if gilscope::serve::serve(options, stop, announce)? == ServeEnd::TargetExited {
        eprintln!("gilscope: the process exited; stopping (--follow-name keeps serving)");
    }
    Ok(())
}

/// Fail before recording, not after, if the output cannot be written.
fn check_writable(path: &std::path::Path) -> Result<()> {
    let error = |source| Error::Output {
        path: path.display().to_string(),
        source,
    };
    // A device or a FIFO is written to in place (see report::write_atomically).
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return nix::unistd::access(path, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| error(std::io::Error::from(e)));
    }
    let resolved = std::fs::canonicalize(path)
        .ok()
        .filter(|_| path.is_symlink());
    let path = resolved.as_deref().unwrap_or(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if path.is_dir() {
        return Err(error(std::io::Error::other("it is a directory")));
    }
    tempfile::Builder::new()
        .prefix(".gilscope-check-")
        .tempfile_in(&dir)
        .map(drop)
        .map_err(|e| error(report::without_temporary_path(e)))
}
