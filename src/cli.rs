//! The command line, declared with clap: subcommands, options, help texts, and the values
//! options take. Declarations only; commands/ turns them into plans and acts on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::formats::live::SortBy;
use crate::formats::{Format, View};
use crate::python::version::SUPPORTED;
use crate::sample::ThreadState;

#[derive(Debug, Parser)]
#[command(
    name = "gilscope",
    version,
    about = "Who holds the GIL, who waits for it, and why: attach to a running CPython process",
    long_about = format!(
        "gilscope attaches to a running CPython ({SUPPORTED}) process from the outside, \
         without restarting or instrumenting it, and measures thread by thread how much of \
         the time each thread holds the GIL, waits for it, runs native code without it, or \
         is idle."
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample a process's GIL and threads and report per-thread hold / wait / running / idle
    #[command(after_help = "Examples:\n  \
        gilscope record --pid 1234 --duration 10\n  \
        gilscope record --pid 1234 -o report.json\n  \
        gilscope record --pid 1234 -o gil.svg --state hold,wait\n  \
        gilscope record --pid 1234 -o blame.svg --view blame\n  \
        gilscope record --pid 1234 -o trace.json --duration 5\n  \
        gilscope record --duration 5 -- python3 app.py --workers 4")]
    Record(RecordArgs),
    /// Print every thread's GIL state and Python stack right now (optionally after sampling)
    #[command(after_help = "Examples:\n  \
        gilscope dump --pid 1234\n  \
        gilscope dump --pid 1234 --sample 2\n  \
        gilscope dump --pid 1234 --locals\n  \
        gilscope dump --pid 1234 --json")]
    Dump(DumpArgs),
    /// Watch a process's GIL live: per-thread hold / wait / running / idle, refreshed every second
    #[command(
        after_help = "Keys: q quit, h sort by hold, w sort by wait, i show or hide idle threads.\n\
        When stdout is not a terminal, prints one plain line of figures per second instead.\n\n\
        Examples:\n  \
        gilscope top --pid 1234\n  \
        gilscope top --pid 1234 --sort wait --idle\n  \
        gilscope top --pid 1234 | tee gil.log"
    )]
    Top(TopArgs),
    /// Sample a process without end and serve its GIL metrics to Prometheus at /metrics
    #[command(
        after_help = "Counters (seconds of wall time; rate() gives a share of time):\n  \
        gilscope_thread_gil_seconds_total{pid,thread,state}  hold / wait / running / idle\n  \
        gilscope_gil_held_seconds_total{pid}, gilscope_gil_contended_seconds_total{pid},\n  \
        gilscope_gil_switches_total{pid}, and the sampler's health (docs/METRICS.md).\n\n\
        Examples:\n  \
        gilscope serve --pid 1234\n  \
        gilscope serve --follow-name app.py --listen 127.0.0.1:9464\n  \
        curl -s http://127.0.0.1:9464/metrics"
    )]
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell)
    #[command(after_help = "Examples:\n  \
        gilscope completions bash > /etc/bash_completion.d/gilscope\n  \
        gilscope completions zsh > \"${fpath[1]}/_gilscope\"\n  \
        gilscope completions fish > ~/.config/fish/completions/gilscope.fish")]
    Completions(CompletionsArgs),
    /// Print the manual pages (roff), generated from this command line's definition
    #[command(after_help = "Examples:\n  \
        gilscope man | man -l -\n  \
        gilscope man record | man -l -\n  \
        gilscope man --out-dir /usr/local/share/man/man1")]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The page of this subcommand (gilscope-SUBCOMMAND(1)) instead of gilscope(1)
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,

    /// Write every page (gilscope.1, gilscope-record.1, ...) into this directory
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(true))]
pub struct ServeArgs {
    /// Process id of a running Python program
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, group = "target", allow_negative_numbers = true)]
    pub pid: Option<i32>,

    /// Keep serving when the process exits, and sample the next process of this name (its
    /// program, script or module name, e.g. app.py or gunicorn); without --pid, start with
    /// the oldest one
    #[arg(long, value_name = "NAME", group = "target")]
    pub follow_name: Option<String>,

    /// Follow only processes of this user (a name or a uid) with --follow-name. Without it,
    /// the owner of --pid, or else of the first process sampled, is the one followed: a
    /// process of that name started by another user is never sampled
    #[arg(long, value_name = "USER", requires = "follow_name", value_parser = parse_user)]
    pub follow_user: Option<u32>,

    /// Address and port to serve /metrics on (loopback unless told otherwise)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,

    /// Samples per second (low by default: serve runs for days)
    #[arg(short, long, value_name = "HZ", default_value_t = 100.0, value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: f64,

    /// Tell threads queued for a CPU inside the GIL from those preempted in native code by
    /// where each left its CPU, as `record --switch-sites` does (docs/ACCURACY.md, point 11);
    /// where it cannot be in effect for a process, serve says so and why when it samples it
    #[arg(long)]
    pub switch_sites: bool,

    /// Also sample every Python process below the target (children, and theirs), including
    /// ones started later: each is its own set of series, told apart by its pid label
    #[arg(short, long)]
    pub subprocesses: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Process id of a running Python program
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: i32,

    /// Samples per second
    #[arg(short, long, value_name = "HZ", default_value_t = 1000.0, value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: f64,

    /// Sort threads by the share of the last 10 s they held, or waited for, the GIL
    #[arg(long, value_enum, default_value_t = SortArg::Hold)]
    pub sort: SortArg,

    /// Show threads that were idle all through the last 10 s (key i toggles)
    #[arg(long)]
    pub idle: bool,

    /// Measure the GIL and thread states only, without reading Python stacks (no blame)
    #[arg(long)]
    pub gil_only: bool,

    /// Show native (C, C++, Rust) frames in the holders' code: the innermost native function
    /// and the Python frame it was called from; taken without stopping the target
    #[arg(long, conflicts_with = "gil_only")]
    pub native: bool,

    /// Tell threads queued for a CPU inside the GIL from those preempted in native code by
    /// where each left its CPU, as `record --switch-sites` does (docs/ACCURACY.md, point 11);
    /// where it cannot be in effect, the view says so and why
    #[arg(long)]
    pub switch_sites: bool,

    /// Also watch every Python process below PID (children, and theirs), including ones
    /// started later, each process's threads under it
    #[arg(short, long)]
    pub subprocesses: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Process id of a running Python program
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: i32,

    /// Print JSON (docs/DUMP_SCHEMA.md)
    #[arg(long, help = format!("Print JSON (schema {}, docs/DUMP_SCHEMA.md)", crate::formats::dump::SCHEMA))]
    pub json: bool,

    /// Sample for SECS first, and add each thread's fractions, the top blame stack and
    /// findings about stuck threads (a GIL kept while asleep, a deadlock, a stopped holder)
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub sample: Option<f64>,

    /// Also show native (C, C++, Rust) frames in each thread's stack, merged with its Python
    /// frames; taken without stopping the target (docs/NATIVE.md)
    #[arg(long)]
    pub native: bool,

    /// With --sample: classify runnable threads by where each left its CPU, as `record
    /// --switch-sites` does (docs/ACCURACY.md, point 11); where perf or take_gil's symbol is
    /// missing it is off, and the dump says so (JSON `sample.switch_sites`)
    #[arg(long, requires = "sample")]
    pub switch_sites: bool,

    /// Show each frame's arguments and local variables: short previews of built-in values
    /// (str, bytes, int, float, containers), other objects by type and address
    #[arg(long)]
    pub locals: bool,

    /// Also sample every Python process below PID (children, and theirs), including ones
    /// started later, and report each process
    #[arg(short, long)]
    pub subprocesses: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Process id of a running Python program
    #[arg(short, long, value_name = "PID", value_parser = parse_pid, conflicts_with = "command", allow_negative_numbers = true)]
    pub pid: Option<i32>,

    /// Seconds to record (default: until Ctrl-C or until the target exits)
    #[arg(short, long, value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Option<f64>,

    /// Samples per second
    #[arg(short, long, value_name = "HZ", default_value_t = 1000.0, value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: f64,

    /// Report format (default: from the extension of -o, else text)
    #[arg(short, long, value_enum)]
    pub format: Option<FormatArg>,

    /// Write the report to FILE (atomically) instead of stdout; the format follows the
    /// extension: .txt, .json, .svg (flamegraph), .folded, .speedscope.json, trace.json
    /// (Chrome trace), timeline.svg, .html, .pb.gz (pprof)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Measure the GIL and thread states only, without reading Python stacks (cheaper)
    #[arg(long)]
    pub gil_only: bool,

    /// Also show native (C, C++, Rust) frames: each thread's stack is its native stack with
    /// the interpreter's evaluation frames replaced by the Python frames they run. Taken
    /// without stopping the target (docs/NATIVE.md)
    #[arg(long, conflicts_with = "gil_only")]
    pub native: bool,

    /// Tell threads queued for a CPU inside the GIL from those preempted in native code by
    /// where each left its CPU: a perf sample of its registers and 1 KiB of its stack at
    /// every context switch (docs/ACCURACY.md, point 11). Costs the target about a
    /// microsecond per switch. Where perf or take_gil's symbol is missing it is off, and the
    /// report says so (a "degraded" line, JSON `sampler.switch_sites`)
    #[arg(long)]
    pub switch_sites: bool,

    /// Stacks to show in flamegraph, collapsed and speedscope output
    #[arg(long, value_enum, default_value_t = ViewArg::Threads)]
    pub view: ViewArg,

    /// States to show in the threads view (any of hold, wait, running, idle)
    #[arg(long, value_delimiter = ',', value_name = "STATES")]
    pub state: Vec<StateArg>,

    /// Also show idle threads' stacks in the threads view
    #[arg(long)]
    pub idle: bool,

    /// Also sample every Python process below the target (children, and theirs), including ones
    /// started later, and report each process
    #[arg(short, long)]
    pub subprocesses: bool,

    /// Print at the end where the sampler's time went, per tick: remote reads, /proc reads,
    /// stack walks, aggregation (also in the JSON report, as sampler.stats)
    #[arg(long)]
    pub stats: bool,

    /// Write every raw tick as a JSON line to FILE (for bug reports and analysis)
    #[arg(long, value_name = "FILE", hide = true)]
    pub observations: Option<PathBuf>,

    /// Command to start and record (after --)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Highest rate accepted: the highest the sampler sustains on a small target
/// (docs/PERFORMANCE.md); beyond it ticks only fall behind while the sampler's wake-ups
/// take the CPU (100 kHz took nearly a whole one, and the target's throughput with it).
pub const MAX_RATE_HZ: f64 = 10_000.0;
/// Lowest rate accepted: below one tick a second a recording has too few ticks for any
/// figure (the margins need 30), and a tick would be many seconds away.
pub const MIN_RATE_HZ: f64 = 1.0;

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of samples per second"))?;
    if !(rate.is_finite() && (MIN_RATE_HZ..=MAX_RATE_HZ).contains(&rate)) {
        return Err(format!(
            "the rate must be from {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz"
        ));
    }
    Ok(rate)
}

/// A user by name or uid, for `--follow-user`.
fn parse_user(text: &str) -> Result<u32, String> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no user named {text}")),
        Err(e) => Err(format!("cannot look up user {text}: {e}")),
    }
}

/// A process id: a whole number from 1 up (the kernel's pid_max is far below i32::MAX).
fn parse_pid(text: &str) -> Result<i32, String> {
    match text.trim().parse::<i64>() {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as i32),
        Ok(pid) if pid > 0 => Err(format!("{text} is not a valid pid (beyond any pid)")),
        Ok(_) => Err(format!(
            "{text} is not a valid pid (pids are whole numbers from 1)"
        )),
        Err(_) => Err(format!(
            "{text} is not a valid pid (a process id is a number)"
        )),
    }
}

fn parse_duration(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 1e7) {
        return Err("the duration must be a positive number of seconds".into());
    }
    Ok(secs)
}

/// A report format named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// Per-thread table, GIL figures and top locations
    Text,
    /// Everything, as documented in docs/JSON_SCHEMA.md
    Json,
    /// An SVG flamegraph (inferno)
    Flamegraph,
    /// Folded stacks ("a;b;c count"), for flamegraph.pl, inferno or speedscope
    Collapsed,
    /// speedscope's JSON file format, one profile per thread
    Speedscope,
    /// Chrome trace events (Perfetto, chrome://tracing): a span per run of one GIL state
    Chrometrace,
    /// An SVG timeline: a row per thread, coloured by GIL state over time
    Timeline,
    /// One self-contained HTML page: GIL summary, threads, GIL latency, timeline, flamegraphs
    Html,
    /// pprof's gzip-compressed protobuf (go tool pprof, Pyroscope, Parca): a sample type per state
    Pprof,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Format {
        match arg {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
            FormatArg::Flamegraph => Format::Flamegraph,
            FormatArg::Collapsed => Format::Collapsed,
            FormatArg::Speedscope => Format::Speedscope,
            FormatArg::Chrometrace => Format::Chrometrace,
            FormatArg::Timeline => Format::Timeline,
            FormatArg::Html => Format::Html,
            FormatArg::Pprof => Format::Pprof,
        }
    }
}

/// Which stacks the stack formats show, named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ViewArg {
    /// Each thread's stacks under its state at each sample
    Threads,
    /// The GIL holder's stack whenever threads waited, weighted by the number of waiters
    Blame,
}

impl From<ViewArg> for View {
    fn from(arg: ViewArg) -> View {
        match arg {
            ViewArg::Threads => View::Threads,
            ViewArg::Blame => View::Blame,
        }
    }
}

/// What `top` sorts threads by, named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortArg {
    Hold,
    Wait,
}

impl From<SortArg> for SortBy {
    fn from(arg: SortArg) -> SortBy {
        match arg {
            SortArg::Hold => SortBy::Hold,
            SortArg::Wait => SortBy::Wait,
        }
    }
}

/// A thread state named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    Hold,
    Wait,
    Running,
    Idle,
    /// Free-threaded builds without a GIL: running Python.
    Attached,
    /// Free-threaded builds without a GIL: stopped by a stop-the-world pause.
    Suspended,
    /// Stopped by the kernel: SIGSTOP, job control or a debugger.
    Stopped,
}

impl From<StateArg> for ThreadState {
    fn from(arg: StateArg) -> ThreadState {
        match arg {
            StateArg::Hold => ThreadState::Hold,
            StateArg::Wait => ThreadState::Wait,
            StateArg::Running => ThreadState::Running,
            StateArg::Idle => ThreadState::Idle,
            StateArg::Attached => ThreadState::Attached,
            StateArg::Suspended => ThreadState::Suspended,
            StateArg::Stopped => ThreadState::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn serve_listens_on_loopback_unless_told_otherwise() {
        let cli = Cli::try_parse_from(["gilscope", "serve", "--pid", "1"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert!(args.listen.ip().is_loopback(), "{}", args.listen);
    }
}
