//! `gilscope record`: the arguments resolved into a plan (what to record, how, and where the
//! report goes), the recording run, and the report written. Each step can be tried alone.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::cli::{RecordArgs, ViewArg};
use crate::error::{Error, Result};
use crate::formats::{Format, RenderOptions};
use crate::model::{EndReason, Recording};
use crate::output::{self, Output};
use crate::recorder::{Progress, RecordOptions, Recorder, Source};
use crate::sample::observe::Observation;
use crate::sample::ThreadState;

/// What `record` will do, decided from its arguments before anything is attached.
#[derive(Debug, Clone)]
pub struct RecordPlan {
    pub source: Source,
    pub subprocesses: bool,
    pub options: RecordOptions,
    pub format: Format,
    /// Where the report goes (None: stdout).
    pub output: Option<PathBuf>,
    pub render: RenderOptions,
    /// The states to show were chosen with `--state`: they are not widened to the target's.
    pub states_chosen: bool,
    /// Where every raw tick goes as a JSON line (`--observations`).
    pub observations: Option<PathBuf>,
    /// Print the sampler's cost per phase at the end (`--stats`).
    pub stats: bool,
    /// Said on stderr before recording: options that will not do what one might think.
    pub warnings: Vec<String>,
}

impl RecordPlan {
    pub fn new(args: RecordArgs) -> Result<RecordPlan> {
        let source = match (args.pid, args.command.is_empty()) {
            (Some(pid), true) => Source::Pid(pid),
            (None, false) => Source::Command(args.command.clone()),
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
        let format = match (args.format, args.output.as_deref()) {
            (Some(format), _) => format.into(),
            (None, Some(path)) => format_of_path(path)?,
            (None, None) => Format::Text,
        };
        let mut render = RenderOptions {
            view: args.view.into(),
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
        let mut warnings = Vec::new();
        let stack_options = [
            (
                args.view != ViewArg::Threads,
                "--view",
                format.chooses_view(),
            ),
            (!args.state.is_empty(), "--state", format.chooses_states()),
            (args.idle, "--idle", format.chooses_states()),
        ];
        for (given, option, chosen) in stack_options {
            if given && !chosen {
                let why = match format {
                    Format::Pprof => "has a sample type for every state",
                    Format::Html => "switches between both views",
                    _ => "has its own sections",
                };
                warnings.push(format!(
                    "{option} chooses the stacks of flamegraph, folded, speedscope, trace and \
                     timeline output: the {} report {why} and ignores it",
                    format.name()
                ));
            }
        }
        if args.gil_only && format.shows_stacks() {
            warnings.push(format!(
                "--gil-only records no stacks: the {} output shows threads and states only",
                format.name()
            ));
        }
        Ok(RecordPlan {
            source,
            subprocesses: args.subprocesses,
            options: RecordOptions {
                rate_hz: args.rate,
                duration: args.duration.map(Duration::from_secs_f64),
                stacks: !args.gil_only,
                native: args.native,
                switch_sites: args.switch_sites,
                timeline: format.needs_timeline(),
                progress: std::io::stderr()
                    .is_terminal()
                    .then_some(print_progress as fn(&Progress)),
            },
            format,
            output: args.output,
            render,
            states_chosen: !args.state.is_empty(),
            observations: args.observations,
            stats: args.stats,
            warnings,
        })
    }

    /// Record as planned until the duration, `stop`, or the target's exit: a recording per
    /// process (one without `--subprocesses`). Every raw tick goes to `observations`, if any.
    pub fn record(
        &self,
        stop: &AtomicBool,
        mut observations: Option<&mut Observations>,
    ) -> Result<Vec<Recording>> {
        let mut write_observation = |pid: i32, o: &Observation| {
            if let Some(out) = observations.as_mut() {
                out.write(pid, o);
            }
        };
        let mut recorder = Recorder::open(&self.source, self.subprocesses, stop)?;
        let duration = self
            .options
            .duration
            .map(|d| format!(" for {} s", d.as_secs_f64()))
            .unwrap_or_default();
        let rate = self.options.rate_hz;
        if self.subprocesses {
            eprintln!(
                "gilscope: sampling process {} and the Python processes below it at {rate} Hz{duration}; Ctrl-C to stop",
                recorder.root
            );
        } else {
            eprintln!(
                "gilscope: sampling process {} (Python {}) at {rate} Hz{duration}; Ctrl-C to stop",
                recorder.root,
                recorder.python_version().unwrap_or_default(),
            );
        }
        let recordings: Vec<Recording> = recorder
            .run(&self.options, stop, Some(&mut write_observation), None)
            .into_iter()
            .map(|(recording, _)| recording)
            .collect();
        for (pid, why) in recorder.refused() {
            eprintln!(
                "gilscope: process {pid} was not sampled: {}",
                crate::formats::printable(why)
            );
        }
        if recordings.is_empty() {
            return Err(Error::NoPythonInTree { pid: recorder.root });
        }
        if matches!(self.source, Source::Pid(_)) {
            for recording in &recordings {
                let unreadable;
                let gone = match recording.sampler.ended {
                    EndReason::TargetExited => "exited",
                    EndReason::TargetExeced => "exec'd another program",
                    EndReason::TargetUnreadable => {
                        unreadable = format!(
                            "could no longer be read ({})",
                            crate::formats::printable(
                                recording.sampler.unreadable.as_deref().unwrap_or("?")
                            )
                        );
                        &unreadable
                    }
                    _ => continue,
                };
                eprintln!(
                    "gilscope: process {} {gone} after {:.2} s; the report covers what was gathered",
                    recording.target.pid,
                    recording.profile.duration_s()
                );
            }
        }
        if self.stats {
            for recording in &recordings {
                eprint!(
                    "gilscope: sampler stats for pid {}: {}",
                    recording.target.pid,
                    recording.sampler.stats.render()
                );
            }
        }
        Ok(recordings)
    }

    /// The report of `recordings` in the planned format.
    pub fn render(&self, recordings: &[Recording]) -> Vec<u8> {
        let render = if self.states_chosen {
            self.render.clone()
        } else {
            self.render.clone().with_states_of(recordings)
        };
        let report = self.format.report();
        if self.subprocesses {
            report.several(recordings, &render)
        } else {
            report.one(&recordings[0], &render)
        }
    }

    /// Write the report where planned: into the output prepared for `-o`, else stdout.
    pub fn write(&self, report: &[u8], prepared: Option<Output>) -> Result<()> {
        match (prepared, &self.output) {
            (Some(prepared), Some(path)) => {
                output::write_prepared(prepared, path, report)?;
                eprintln!("gilscope: wrote {}", path.display());
                Ok(())
            }
            _ => output::write_stdout(report),
        }
    }
}

/// Where `--observations` writes every raw tick, a JSON line each; kept only if the run
/// succeeds.
pub struct Observations {
    out: std::io::BufWriter<Output>,
    /// The first write error, said at the end (not once per tick).
    failed: Option<std::io::Error>,
}

impl Observations {
    pub fn new(prepared: Output) -> Observations {
        Observations {
            out: std::io::BufWriter::new(prepared),
            failed: None,
        }
    }

    fn write(&mut self, pid: i32, observation: &Observation) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            pid: i32,
            #[serde(flatten)]
            observation: &'a Observation,
        }
        if self.failed.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut self.out, &Line { pid, observation })
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.failed = written.err();
    }

    /// Put the lines in place, or say why not under the path the user gave.
    pub fn commit(self, path: &std::path::Path) -> Result<()> {
        let done = match self.failed {
            Some(e) => Err(e),
            None => self
                .out
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(Output::commit),
        };
        done.map_err(|source| Error::Output {
            path: path.display().to_string(),
            source,
        })
    }
}

/// The format an output file's name asks for. A name without an extension is a text report;
/// an extension gilscope does not write is refused, not written as text.
fn format_of_path(path: &Path) -> Result<Format> {
    if let Some(format) = Format::from_path(path) {
        return Ok(format);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let Some((_, extension)) = name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) else {
        return Ok(Format::Text);
    };
    Err(Error::Usage(format!(
        "cannot tell the format of {} from its extension .{extension}: gilscope writes {} \
         (or give --format)",
        path.display(),
        Format::EXTENSIONS.join(", ")
    )))
}

/// `gilscope record`.
pub fn run(args: RecordArgs) -> Result<()> {
    let plan = RecordPlan::new(args)?;
    // Every check that can be made before the recording is made now: the paths are vetted
    // and held, and written only if the recording succeeds.
    let prepared = plan.output.as_deref().map(output::prepare).transpose()?;
    let mut observations = match &plan.observations {
        Some(path) => Some(Observations::new(output::prepare(path)?)),
        None => None,
    };
    for warning in &plan.warnings {
        eprintln!("gilscope: {warning}");
    }
    let stop = super::stop_flag();
    let recordings = plan.record(&stop, observations.as_mut())?;
    // A run that failed writes nothing: the old files, if any, stay as they were.
    if let Some(unread) = recordings
        .iter()
        .filter(|r| r.profile.samples == 0)
        .find_map(|r| Some((r.target.pid, r.sampler.unreadable.clone()?)))
        .filter(|_| recordings.iter().all(|r| r.profile.samples == 0))
    {
        return Err(Error::Unreadable {
            pid: unread.0,
            why: unread.1,
        });
    }
    if recordings.iter().all(|r| r.profile.samples == 0) {
        // Attached, then gone before the first tick: a clear answer, not an internal error.
        if let Some(first) = recordings.first().filter(|r| {
            matches!(
                r.sampler.ended,
                EndReason::TargetExited | EndReason::TargetExeced
            )
        }) {
            return Err(Error::GoneBeforeSampling {
                pid: first.target.pid,
                execed: first.sampler.ended == EndReason::TargetExeced,
            });
        }
        return Err(Error::Internal(
            "no samples were taken (the target exited or could not be read)".into(),
        ));
    }
    if let (Some(observations), Some(path)) = (observations, &plan.observations) {
        observations.commit(path)?;
    }
    plan.write(&plan.render(&recordings), prepared)
}

/// One self-overwriting line on a terminal's stderr; cleared when the recording is over.
fn print_progress(p: &Progress) {
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
