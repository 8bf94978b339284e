//! The text report: a header with the process's GIL figures, then one row per thread.
//! Plain ASCII columns that survive copy and paste into tickets and chat.

use std::fmt::Write;

use super::{EndReason, Recording};
use crate::sample::ThreadState;

pub fn render(recording: &Recording) -> String {
    let mut out = String::new();
    let target = &recording.target;
    let profile = &recording.profile;
    let sampler = &recording.sampler;
    let _ = writeln!(
        out,
        "gilscope: pid {} - Python {} ({})",
        target.pid, target.python_version, target.binary
    );
    if !target.command_line.is_empty() {
        let _ = writeln!(out, "command: {}", target.command_line);
    }
    let ended = match sampler.ended {
        EndReason::Duration => "",
        EndReason::Interrupted => " (interrupted)",
        EndReason::TargetExited => " (target exited)",
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
    let switches = profile
        .switches_per_s()
        .map(|s| format!("{s:.0}/s"))
        .unwrap_or_else(|| "n/a".into());
    let _ = writeln!(
        out,
        "GIL: held {}  contended {}  mean waiting {:.2}  switches {}  interval {:.1} ms",
        percent(profile.held()),
        percent(profile.contended()),
        profile.mean_waiting(),
        switches,
        profile.interval_us as f64 / 1e3
    );
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
        super::CLASSIFIER_ERROR * 100.0
    );
    if let Some(steal) = sampler.host_steal.filter(|s| *s > super::STEAL_WARNING) {
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
        .map(|t| display_name(&t.name).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 32);
    let _ = writeln!(
        out,
        "{:>8}  {:<name_width$}  {:>7}  {:>7}  {:>7}  {:>7}",
        "TID", "NAME", "HOLD", "WAIT", "RUNNING", "IDLE"
    );
    for thread in profile.threads() {
        let name: String = display_name(&thread.name)
            .chars()
            .take(name_width)
            .collect();
        let _ = write!(out, "{:>8}  {:<name_width$}", thread.tid, name);
        for state in ThreadState::ALL {
            let _ = write!(out, "  {:>7}", percent(thread.fraction(state)));
        }
        if thread.thread_id.is_none() {
            let _ = write!(out, "  (no Python thread state)");
        }
        let _ = writeln!(out);
    }
    out
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Names come from the target: show control characters as escapes, never raw.
fn display_name(name: &str) -> String {
    if name.is_empty() {
        return "?".into();
    }
    name.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}
