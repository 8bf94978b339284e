//! The text report: a header with the process's GIL figures, then one row per thread.
//! Plain ASCII columns that survive copy and paste into tickets and chat.

use std::fmt::Write;

use super::labels::Paths;
use crate::model::profile::Location;
use crate::model::{EndReason, Recording};
use crate::sample::ThreadState;
use crate::stack::{Place, StackTable};

/// Several processes (`--subprocesses`): a line for the tree, then each process's report.
pub fn render_processes(recordings: &[Recording]) -> String {
    super::process_sections(recordings.iter().map(render))
}

pub fn render(recording: &Recording) -> String {
    let mut out = String::new();
    let target = &recording.target;
    let profile = &recording.profile;
    let sampler = &recording.sampler;
    let _ = writeln!(
        out,
        "gilscope: pid {} - Python {} ({})",
        super::id_with_namespace(target.pid, target.ns_pid),
        target.python_version,
        super::printable(&target.binary)
    );
    if !target.command_line.is_empty() {
        let _ = writeln!(out, "command: {}", super::printable(&target.command_line));
    }
    let ended = match sampler.ended {
        EndReason::Duration => "",
        EndReason::Interrupted => " (interrupted)",
        EndReason::TargetExited => " (target exited)",
        EndReason::TargetExeced => " (target exec'd another program)",
        EndReason::TargetUnreadable => " (target could no longer be read)",
    };
    let _ = writeln!(
        out,
        "recorded {:.2} s at {} Hz{}: {} samples, {} errors, {} late ticks (max lag {:.1} ms)",
        profile.duration_s(),
        sampler.rate_hz,
        ended,
        profile.samples,
        sampler.errors,
        sampler.late_ticks,
        sampler.max_lag_s * 1e3
    );
    if let Some(sentence) = super::stopped_sentence(profile) {
        let _ = writeln!(out, "stopped: {sentence}");
    }
    // Stacks dropped matter once they are a share of the samples one can see missing.
    if recording.stacks.is_some() && sampler.stack_errors * 100 >= profile.samples.max(1) {
        let _ = writeln!(
            out,
            "stacks: {} could not be read (they changed under every read); their samples \
             count in their threads' states, under [stack not captured]",
            sampler.stack_errors
        );
    }
    // Never expected: said whenever it happens, since those samples lost where they were.
    if sampler.stacks_over_budget > 0 {
        let _ = writeln!(
            out,
            "stacks: {} samples past the memory budget for stacks ({} MiB of distinct frames \
             and stacks): they show {} where frames did not fit",
            sampler.stacks_over_budget,
            crate::stack::MAX_TABLE_BYTES >> 20,
            crate::stack::OVER_BUDGET
        );
    }
    let switches = profile
        .switches_per_s()
        .map(|s| format!("{s:.0}/s"))
        .unwrap_or_else(|| "n/a".into());
    let ticks = profile.gil_ticks();
    let no_gil = ticks.no_gil();
    let measured = target.wait_measured && !no_gil;
    let wait_figure = |text: String| {
        if measured {
            text
        } else {
            super::UNAVAILABLE.to_string()
        }
    };
    let interval = if profile.interval_us > 0 {
        format!("{:.1} ms", profile.interval_us as f64 / 1e3)
    } else {
        super::UNAVAILABLE.to_string()
    };
    let several = profile.gils().len() > 1;
    if no_gil {
        let _ = writeln!(
            out,
            "GIL: no GIL (free-threaded build, GIL disabled)  held n/a  contended n/a  \
             switches n/a"
        );
    } else {
        let _ = writeln!(
            out,
            "{}: held {}  contended {}  mean waiting {}  switches {}  interval {}{}",
            if several { "main GIL" } else { "GIL" },
            percent(profile.held()),
            wait_figure(percent(profile.contended())),
            wait_figure(format!("{:.2}", profile.mean_waiting())),
            switches,
            interval,
            match ticks.enabled_share() {
                Some(on) => format!(
                    "  (free-threaded build: GIL enabled at {} of samples)",
                    percent(on)
                ),
                None => String::new(),
            }
        );
    }
    // Said once, where it shows: the two figures count different things.
    if measured && profile.contended() > profile.held() + profile.contended_margin().unwrap_or(0.0)
    {
        let _ = writeln!(
            out,
            "note: held = some thread had the GIL; contended = some thread waited for it. \
             Contended above held: threads waited while nobody had it, in hand-offs (released, \
             its next holder not yet running: long when CPUs are busy)"
        );
    }
    if several {
        gils_section(&mut out, recording);
    }
    if no_gil {
        let _ = writeln!(out, "note: {}", super::NO_GIL);
    } else if !measured {
        let _ = writeln!(out, "note: {}", super::WAIT_UNAVAILABLE);
    }
    let worst_sampling = profile
        .threads()
        .iter()
        .filter_map(|t| t.worst_margin())
        .chain(profile.held_margin())
        .reduce(f64::max);
    let _ = writeln!(
        out,
        "error: sampling {} (95%), classification <= {:.0} pp (docs/ACCURACY.md)",
        worst_sampling
            .map(|m| format!("+-{:.1} pp", m * 100.0))
            .unwrap_or_else(|| "unknown (too few samples)".into()),
        crate::model::CLASSIFIER_ERROR * 100.0
    );
    for lost in &sampler.degraded {
        let _ = writeln!(
            out,
            "degraded: without {}, {}; {}",
            lost.missing, lost.fallback, lost.cost
        );
    }
    if let Some(steal) = sampler
        .host_steal
        .filter(|s| *s > crate::model::STEAL_WARNING)
    {
        let _ = writeln!(
            out,
            "warning: the hypervisor took {:.0}% of this machine's CPU time during the \
             recording; figures are less certain than stated (docs/ACCURACY.md)",
            steal * 100.0
        );
    }
    let _ = writeln!(out);
    let name_width = profile
        .threads()
        .iter()
        .map(|t| display_name(t.name()).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 32);
    let states = super::with_stopped(super::shown_states(target.free_threaded, no_gil), profile);
    // In a container seen from outside, each thread's id in the container follows ours.
    let tid_label = |thread: &crate::model::profile::ThreadProfile| match thread.ns_tid {
        Some(own) => format!("{} ({own})", thread.tid),
        None => thread.tid.to_string(),
    };
    let namespaced = profile.threads().iter().any(|t| t.ns_tid.is_some());
    let tid_heading = if namespaced { "TID (IN NS)" } else { "TID" };
    let tid_width = profile
        .threads()
        .iter()
        .map(|t| tid_label(t).len())
        .chain([8, tid_heading.len()])
        .max()
        .unwrap_or(8);
    let _ = write!(out, "{tid_heading:>tid_width$}  {:<name_width$}", "NAME");
    // Columns as wide as their heading, at least "100.0%".
    let width = |state: ThreadState| state.name().len().max(7);
    for &state in &states {
        let _ = write!(
            out,
            "  {:>w$}",
            state.name().to_uppercase(),
            w = width(state)
        );
    }
    let _ = writeln!(out);
    for thread in profile.threads() {
        let name: String = display_name(thread.name())
            .chars()
            .take(name_width)
            .collect();
        let _ = write!(
            out,
            "{:>tid_width$}  {name:<name_width$}",
            tid_label(thread)
        );
        for &state in &states {
            let figure = match state {
                ThreadState::Wait if !measured => super::UNAVAILABLE.to_string(),
                _ => percent(thread.fraction(state)),
            };
            let _ = write!(out, "  {figure:>w$}", w = width(state));
        }
        if thread.thread_id.is_none() {
            let _ = write!(out, "  (no Python thread state)");
        }
        let _ = writeln!(out);
    }
    if measured {
        latency_section(&mut out, recording);
    }
    if let Some(table) = &recording.stacks {
        where_threads_are(&mut out, recording, table);
        // With one Python thread, nobody waits on anybody: no blame to give.
        let python_threads = profile
            .threads()
            .iter()
            .filter(|t| t.thread_id.is_some())
            .count();
        if python_threads > 1 {
            who_makes_them_wait(&mut out, recording, table);
        }
    }
    findings_section(&mut out, recording);
    out
}

/// Each thread's waits for the GIL: how many, and how long each took (quantiles).
fn latency_section(out: &mut String, recording: &Recording) {
    let profile = &recording.profile;
    let threads: Vec<_> = profile
        .threads()
        .into_iter()
        .filter(|t| t.latency.episodes > 0)
        .collect();
    if threads.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "GIL latency (each wait, from its first waiting sample to the GIL; +-{:.1} ms at \
         this rate):",
        profile.tick_s() * 1e3
    );
    let name_width = threads
        .iter()
        .map(|t| display_name(t.name()).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(13, 32);
    let _ = writeln!(
        out,
        "{:>8}  {:<name_width$}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}",
        "TID", "NAME", "WAITS", "P50", "P90", "P99", "MAX"
    );
    let ms = |s: Option<f64>| s.map_or_else(|| "-".to_string(), |s| format!("{:.1} ms", s * 1e3));
    let mut rows: Vec<(String, &crate::model::profile::Latency, Option<i32>)> = threads
        .iter()
        .map(|t| (display_name(t.name()), &t.latency, Some(t.tid)))
        .collect();
    let all = profile.latency();
    if rows.len() > 1 {
        rows.push(("(all threads)".to_string(), &all, None));
    }
    for (name, latency, tid) in rows {
        let name: String = name.chars().take(name_width).collect();
        let tid = tid.map(|t| t.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{tid:>8}  {name:<name_width$}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}",
            latency.episodes,
            ms(latency.quantile(0.5)),
            ms(latency.quantile(0.9)),
            ms(latency.quantile(0.99)),
            ms(Some(latency.max_ns as f64 / 1e9)),
        );
    }
}

/// One line per GIL, where subinterpreters have GILs of their own (3.12+).
fn gils_section(out: &mut String, recording: &Recording) {
    let profile = &recording.profile;
    let _ = writeln!(
        out,
        "{} GILs (subinterpreters with their own):",
        profile.gils().len()
    );
    let threads = profile.threads();
    for (index, gil) in profile.gils().iter().enumerate() {
        let ids: Vec<String> = gil
            .interpreters
            .iter()
            .map(|id| id.map_or("?".into(), |id| id.to_string()))
            .collect();
        let tids: Vec<String> = threads
            .iter()
            .filter(|t| t.gil.is_some_and(|(base, _)| base == gil.base))
            .map(|t| t.tid.to_string())
            .collect();
        let _ = writeln!(
            out,
            "  GIL {index} ({}, interpreters {}): held {}  contended {}  mean waiting {:.2}  \
             switches {}  threads {}",
            if gil.own { "own" } else { "main" },
            ids.join(","),
            percent(gil.held()),
            percent(gil.contended()),
            gil.mean_waiting(),
            gil.switches_per_s()
                .map(|s| format!("{s:.0}/s"))
                .unwrap_or_else(|| "n/a".into()),
            if tids.is_empty() {
                "-".into()
            } else {
                tids.join(",")
            }
        );
    }
}

/// The findings, if the figures support any.
pub fn findings_section(out: &mut String, recording: &Recording) {
    let findings = super::findings::findings(recording);
    if findings.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Findings:");
    for finding in findings {
        let _ = writeln!(out, "- {}", display_name(&finding.text));
    }
}

/// Locations shown per thread and state in the text report.
const TEXT_LOCATIONS: usize = 3;
/// Holder stacks shown in the text report's blame section.
const TEXT_BLAME: usize = 5;
/// Caller frames shown after a blamed location.
const TEXT_CALLERS: usize = 3;

/// The states whose places in the code the text report shows.
const SHOWN_STATES: [ThreadState; 4] = [
    ThreadState::Hold,
    ThreadState::Wait,
    ThreadState::Attached,
    ThreadState::Running,
];

/// Per thread: the innermost frames it held the GIL in, waited in, and ran native code in.
fn where_threads_are(out: &mut String, recording: &Recording, table: &StackTable) {
    let paths = Paths::of(std::slice::from_ref(recording));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Where (innermost frame; share of the thread's samples):"
    );
    for thread in recording.profile.threads() {
        let rows: Vec<(ThreadState, Vec<Location>)> = SHOWN_STATES
            .into_iter()
            .map(|s| (s, thread.top_locations(s, table, TEXT_LOCATIONS)))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        // A Python thread whose stack was not read at a good share of its samples (a stack
        // that changed under every read): say so rather than show a part as the whole.
        let (unread, shown) = if thread.thread_id.is_some() {
            SHOWN_STATES.iter().fold((0, 0), |(unread, shown), &s| {
                let counts = &thread.stacks[s.index()];
                let none = counts.get(&None).copied().unwrap_or(0);
                (unread + none, shown + counts.values().sum::<u64>())
            })
        } else {
            (0, 0)
        };
        let unread_note = unread > 0 && unread * 4 >= shown;
        if rows.is_empty() && !unread_note {
            continue;
        }
        let _ = writeln!(out, "  {} ({})", display_name(thread.name()), thread.tid);
        if unread_note {
            let _ = writeln!(
                out,
                "    (no stack at {} of its samples here: it changed under every read)",
                percent(unread as f64 / shown.max(1) as f64)
            );
        }
        for (state, locations) in rows {
            for (i, location) in locations.iter().enumerate() {
                let label = if i == 0 { state.name() } else { "" };
                let _ = writeln!(
                    out,
                    "    {:<8} {:>6}  {}",
                    label,
                    percent(location.fraction),
                    display_name(&crate::formats::labels::place(
                        table,
                        Place {
                            frame: location.frame,
                            caller: location.caller,
                        },
                        Some(&paths),
                    ))
                );
            }
        }
    }
}

/// The holders' code that the waiters waited on, weighted by the number of waiters.
fn who_makes_them_wait(out: &mut String, recording: &Recording, table: &StackTable) {
    let paths = Paths::of(std::slice::from_ref(recording));
    let profile = &recording.profile;
    let total = profile.waiter_ticks();
    if total == 0 {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Who made the others wait (the GIL holder's code; share of waiting-thread samples):"
    );
    for blame in profile.blame().into_iter().take(TEXT_BLAME) {
        let share = blame.waiter_ticks as f64 / total as f64;
        let code = match blame.stack.and_then(|s| Some((s, table.place(s)?))) {
            Some((stack, place)) => {
                let mut text =
                    display_name(&crate::formats::labels::place(table, place, Some(&paths)));
                // The callers of the place's innermost Python frame (or of the place).
                let from = place.caller.unwrap_or(place.frame);
                let frames = table.stack(stack);
                let at = frames.iter().rposition(|&f| f == from).unwrap_or(0);
                for &caller in frames[..at].iter().rev().take(TEXT_CALLERS) {
                    let name = table.frame(caller).map(|f| display_name(&f.function));
                    text.push_str(&format!(" <- {}", name.unwrap_or_default()));
                }
                text
            }
            None => "(stack not captured: it changed while being read)".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:>6}  {} ({}): {}",
            percent(share),
            display_name(blame.holder.name()),
            blame.holder.tid,
            code
        );
    }
    if profile.blame_unheld > 0 {
        let _ = writeln!(
            out,
            "  {:>6}  (nobody: the GIL was between holders, released and its next holder not \
             yet running)",
            percent(profile.blame_unheld as f64 / total as f64)
        );
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Names come from the target: shown with control characters escaped, "?" if empty.
fn display_name(name: &str) -> String {
    if name.is_empty() {
        return "?".into();
    }
    super::printable(name)
}

/// This format, for [`super::Format::report`].
pub struct Text;

impl super::Report for Text {
    fn one(&self, recording: &Recording, _: &super::RenderOptions) -> Vec<u8> {
        render(recording).into_bytes()
    }

    fn several(&self, recordings: &[Recording], _: &super::RenderOptions) -> Vec<u8> {
        render_processes(recordings).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::test_sample;
    use crate::model::{test_recording, Profile};
    use crate::stack::{Frame, StackTable};

    #[test]
    fn a_thread_whose_stack_could_not_be_read_is_said_to_have_none() {
        let mut table = StackTable::new();
        let frame = table.intern_frame(Frame::python("spin".into(), "app.py".into(), 3));
        let stack = table.intern_stack(&[frame]);
        let mut profile = Profile::new();
        for i in 0..100u64 {
            let mut sample = test_sample(
                i * 1_000_000,
                i,
                &[(1, ThreadState::Hold), (2, ThreadState::Running)],
            );
            sample.threads[0].stack = Some(stack);
            profile.add(&sample, |tid| format!("t{tid}"));
        }
        let mut recording = test_recording(profile, Some(table));
        recording.sampler.stack_errors = 100;
        let report = render(&recording);
        assert!(report.contains("stacks: 100 could not be read"), "{report}");
        assert!(
            report.contains("t2 (2)\n    (no stack at 100.0% of its samples here"),
            "{report}"
        );
        assert!(!report.contains("t1 (1)\n    (no stack"), "{report}");
    }

    #[test]
    fn samples_whose_stacks_went_past_the_budget_are_counted_and_said() {
        // A budget that holds the first stack only: every later new name is refused.
        let mut table = StackTable::with_budget(1 << 10);
        let kept = table.intern_frame(Frame::python("main".into(), "app.py".into(), 1));
        let stored = table.intern_stack(&[kept]);
        let mut profile = Profile::new();
        for i in 0..50u64 {
            let name = format!("made_at_tick_{i}_{}", "x".repeat(1000));
            let frame = table.intern_frame(Frame::python(name.into(), "app.py".into(), 2));
            let stack = table.intern_stack(&[kept, frame]);
            let mut sample = test_sample(i * 1_000_000, i, &[(1, ThreadState::Hold)]);
            // Every other tick is back in the stack that fitted.
            sample.threads[0].stack = Some(if i % 2 == 0 { stack } else { stored });
            profile.add(&sample, |tid| format!("t{tid}"));
        }
        let over = profile.samples_with_stack(|s| table.is_over_budget(s));
        assert_eq!(over, 25);
        let mut recording = test_recording(profile, Some(table));
        recording.sampler.stacks_over_budget = over;
        let report = render(&recording);
        assert!(
            report.contains("stacks: 25 samples past the memory budget for stacks (256 MiB"),
            "{report}"
        );
        recording.sampler.stacks_over_budget = 0;
        assert!(!render(&recording).contains("samples past the memory budget"));
    }
}
