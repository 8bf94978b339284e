//! The gilscope command: parse the command line, run the library, print errors as one line
//! with a hint, and map them to documented exit codes.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use gilscope::cli::{Cli, Command, DumpArgs, ManArgs, RecordArgs, ServeArgs, TopArgs};
use gilscope::error::{Error, ExitCode, Result};
use gilscope::output::Output;
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
            // Into memory first: clap_complete panics on a write error (a full disk).
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, name, &mut script);
            write_stdout(&script)
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
        let mut command = command.disable_help_subcommand(true);
        command.build();
        return write_man_pages(command, &dir);
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
    write_stdout(&roff)
}

/// A command's page and each of its subcommands' into `dir`, as [`write_output`] writes
/// files (a link or file planted there by another user is not written through).
fn write_man_pages(command: clap::Command, dir: &std::path::Path) -> Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub.clone(), dir)?;
    }
    let page = clap_mangen::Man::new(command);
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)
        .map_err(|e| Error::Internal(format!("cannot render the manual page: {e}")))?;
    let output = prepare_output(&path)?;
    write_output(output, &path, &roff)
}

/// Vet an output path before anything is recorded (gilscope::output).
fn prepare_output(path: &std::path::Path) -> Result<Output> {
    Output::prepare(path).map_err(|source| Error::Output {
        path: path.display().to_string(),
        source,
    })
}

/// Write a prepared output whole, or report why not under the path the user gave.
fn write_output(mut output: Output, path: &std::path::Path, contents: &[u8]) -> Result<()> {
    output
        .write_all(contents)
        .and_then(|()| output.commit())
        .map_err(|source| Error::Output {
            path: path.display().to_string(),
            source,
        })
}

/// Write to standard output; a write error (a full disk, a closed pipe) is an output error.
fn write_stdout(contents: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(contents)
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Output {
            path: "standard output".into(),
            source,
        })
}

/// SIGINT and SIGTERM end the recording. A second one is ignored: `timeout` and a terminal
/// signal gilscope and its process group, two signals for one request, and the report is
/// still to be written. A third ends gilscope at once (exit 130), saying so.
fn stop_flag() -> Arc<AtomicBool> {
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    const GIVEN_UP: &[u8] =
        b"\ngilscope: interrupted three times: ending at once, nothing written\n";
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let stop = stop.clone();
        let handler = move || {
            stop.store(true, Ordering::SeqCst);
            if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 2 {
                // SAFETY: write(2) and _exit(2) are async-signal-safe.
                unsafe {
                    libc::write(2, GIVEN_UP.as_ptr().cast(), GIVEN_UP.len());
                    libc::_exit(130);
                }
            }
        };
        // SAFETY: the handler only stores to atomics and calls async-signal-safe functions.
        let _ = unsafe { signal_hook::low_level::register(signal, handler) };
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
    // Every check that can be made before the recording is made now: the paths are vetted
    // and held, and written only if the recording succeeds.
    let output = args.output.as_deref().map(prepare_output).transpose()?;
    let observations_output = args
        .observations
        .as_deref()
        .map(prepare_output)
        .transpose()?;
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
    let mut observations = observations_output.map(std::io::BufWriter::new);
    // The first write error of the observations, said at the end (not one per tick).
    let mut observations_failed: Option<std::io::Error> = None;
    let mut write_observation = |pid: i32, o: &gilscope::sample::observe::Observation| {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            pid: i32,
            #[serde(flatten)]
            observation: &'a gilscope::sample::observe::Observation,
        }
        if let (Some(out), None) = (observations.as_mut(), &observations_failed) {
            let line = Line {
                pid,
                observation: o,
            };
            let written = serde_json::to_writer(&mut *out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            observations_failed = written.err();
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
    // A run that failed writes nothing: the old file, if any, stays as it was.
    if recordings.iter().all(|r| r.profile.samples == 0) {
        return Err(Error::Internal(
            "no samples were taken (the target exited or could not be read)".into(),
        ));
    }
    if let (Some(observations), Some(path)) = (observations, &args.observations) {
        let done = match observations_failed {
            Some(e) => Err(e),
            None => observations
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(Output::commit),
        };
        done.map_err(|source| Error::Output {
            path: path.display().to_string(),
            source,
        })?;
    }
    let rendered = if args.subprocesses {
        format.render_processes(&recordings, &render)
    } else {
        format.render(&recordings[0], &render)
    };
    match (output, &args.output) {
        (Some(output), Some(path)) => {
            write_output(output, path, rendered.as_bytes())?;
            eprintln!("gilscope: wrote {}", path.display());
        }
        _ => write_stdout(rendered.as_bytes())?,
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
    write_stdout(text.as_bytes())
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
