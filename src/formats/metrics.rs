//! Prometheus metrics of a recording that never ends (`gilscope serve`): counters fed one
//! slice at a time and encoded in the OpenMetrics text format. No HTTP and no target here.
//!
//! Time is counted in seconds of wall time, not samples, so that `rate()` over any window
//! gives a share of time (0-1) that does not depend on the sampling rate. Each slice credits
//! the wall time since the previous slice's last tick to its samples in equal parts.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::model::profile::Latency;
use crate::model::{Profile, TargetInfo};
use crate::sample::{Health, ThreadState};

/// The text formats the metrics can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0 text, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), for older scrapers
    /// and tools that read only it.
    PrometheusText,
}

impl Exposition {
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// Type and subtype of its media type.
    pub fn media_type(self) -> (&'static str, &'static str) {
        match self {
            Exposition::OpenMetrics => ("application", "openmetrics-text"),
            Exposition::PrometheusText => ("text", "plain"),
        }
    }

    /// The `version` parameters it satisfies: OpenMetrics 0.0.1 and 1.0.0 differ in nothing
    /// these metrics use.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Exposition::OpenMetrics => &["1.0.0", "0.0.1"],
            Exposition::PrometheusText => &["0.0.4"],
        }
    }
}

type Seconds = Counter<f64, AtomicU64>;

/// The wait histogram's buckets: 0.25 ms doubling to 2.048 s. Their edges are edges of the
/// profile's finer buckets (whole octaves of a millisecond), so each wait lands in the
/// right one.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 14))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    pid: String,
    thread: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    pid: String,
    thread: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
}

/// One GIL of a process with several (3.12+ subinterpreters with a GIL of their own), named
/// by the lowest id of the interpreters using it: 0 for the main GIL, the subinterpreter's id
/// for its own. Stable while the interpreter lives, unlike the list of interpreters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GilLabels {
    pid: String,
    interpreter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    pid: String,
    command: String,
    python_version: String,
}

/// Where the previous slice of the current target ended, to count what lies between slices.
#[derive(Debug, Default)]
struct Cursor {
    end_ns: Option<u64>,
    switch_number: Option<u64>,
    health: Health,
    /// Thread names given a series of their own so far.
    thread_names: std::collections::HashSet<String>,
    /// Waits are not measured on this target's interpreter: no wait or contention series,
    /// rather than series that say 0.
    no_wait: bool,
    /// A free-threaded build: its threads also get attached and suspended series.
    free_threaded: bool,
    /// The GIL has been on: always on other builds; on a free-threaded build only once a
    /// slice had ticks with the GIL enabled. Until then there are no hold, wait, held or
    /// contended series: a build without a GIL would read as "nobody held it".
    gil_seen: bool,
    /// GILs given series of their own so far (their `interpreter` labels).
    gil_labels: std::collections::HashSet<String>,
}

/// Thread names per process that get series of their own. A program that starts a thread per
/// request, each with a new name ("Thread-1234"), would otherwise add series without end,
/// which Prometheus pays for with memory; later names add up under `OTHER_THREADS`.
pub const MAX_THREAD_SERIES: usize = 100;
/// The thread label of the series that sums threads beyond `MAX_THREAD_SERIES`.
pub const OTHER_THREADS: &str = "[other threads]";
/// GILs per process that get series of their own: a program that makes interpreters in a
/// loop, each with its own GIL, would otherwise add series without end.
pub const MAX_GIL_SERIES: usize = 32;
/// The interpreter label of the series that sums GILs beyond `MAX_GIL_SERIES`.
pub const OTHER_GILS: &str = "[other interpreters]";

pub struct Metrics {
    registry: Registry,
    thread_seconds: Family<ThreadLabels, Seconds>,
    waits: Family<WaitLabels, Histogram, fn() -> Histogram>,
    held: Family<ProcessLabels, Seconds>,
    contended: Family<ProcessLabels, Seconds>,
    enabled: Family<ProcessLabels, Seconds>,
    gil_held: Family<GilLabels, Seconds>,
    gil_contended: Family<GilLabels, Seconds>,
    switches: Family<ProcessLabels, Counter>,
    samples: Family<ProcessLabels, Counter>,
    errors: Family<ProcessLabels, Counter>,
    late: Family<ProcessLabels, Counter>,
    lag: Family<ProcessLabels, Seconds>,
    target: Family<TargetLabels, Gauge>,
    up: Gauge,
    /// The processes being sampled, each with where its last slice ended.
    current: Vec<(TargetLabels, Cursor)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gilscope");
        let thread_seconds = Family::<ThreadLabels, Seconds>::default();
        registry.register_with_unit(
            "thread_gil",
            "Wall time each thread spent in each GIL state (hold, wait, running without \
             the GIL, idle); threads of the same name add up",
            Unit::Seconds,
            thread_seconds.clone(),
        );
        let waits: Family<WaitLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(wait_histogram);
        registry.register_with_unit(
            "gil_wait",
            "Each wait of a thread for the GIL, from its first waiting sample to the GIL \
             (sampling resolution: one tick either way); threads of the same name add up",
            Unit::Seconds,
            waits.clone(),
        );
        let held = Family::<ProcessLabels, Seconds>::default();
        registry.register_with_unit(
            "gil_held",
            "Wall time some thread held the GIL",
            Unit::Seconds,
            held.clone(),
        );
        let contended = Family::<ProcessLabels, Seconds>::default();
        registry.register_with_unit(
            "gil_contended",
            "Wall time at least one thread waited for the GIL",
            Unit::Seconds,
            contended.clone(),
        );
        let enabled = Family::<ProcessLabels, Seconds>::default();
        registry.register_with_unit(
            "gil_enabled",
            "Free-threaded builds: wall time the GIL was enabled",
            Unit::Seconds,
            enabled.clone(),
        );
        let gil_held = Family::<GilLabels, Seconds>::default();
        registry.register_with_unit(
            "interpreter_gil_held",
            "Processes with several GILs (subinterpreters with their own): wall time each GIL \
             was held, by the lowest id of the interpreters using it (0: the main GIL)",
            Unit::Seconds,
            gil_held.clone(),
        );
        let gil_contended = Family::<GilLabels, Seconds>::default();
        registry.register_with_unit(
            "interpreter_gil_contended",
            "Processes with several GILs: wall time at least one thread waited for each GIL",
            Unit::Seconds,
            gil_contended.clone(),
        );
        let switches = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "gil_switches",
            "GIL hand-overs from one thread to another (the interpreter's own count)",
            switches.clone(),
        );
        let samples = Family::<ProcessLabels, Counter>::default();
        registry.register("samples", "Ticks sampled", samples.clone());
        let errors = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "sample_errors",
            "Ticks that could not be read (torn reads of a moving target)",
            errors.clone(),
        );
        let late = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "late_samples",
            "Ticks taken later than scheduled",
            late.clone(),
        );
        let lag = Family::<ProcessLabels, Seconds>::default();
        registry.register_with_unit(
            "sample_lag",
            "Total lag of ticks behind their schedule",
            Unit::Seconds,
            lag.clone(),
        );
        let target = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_info",
            "The process being sampled (1), with its command line and Python version",
            target.clone(),
        );
        let up = Gauge::default();
        registry.register(
            "attached",
            "1 while a process is being sampled, 0 while waiting for one (--follow-name)",
            up.clone(),
        );
        Metrics {
            registry,
            thread_seconds,
            waits,
            held,
            contended,
            enabled,
            gil_held,
            gil_contended,
            switches,
            samples,
            errors,
            late,
            lag,
            target,
            up,
            current: Vec::new(),
        }
    }

    /// Is process `pid` being sampled?
    pub fn is_attached(&self, pid: i32) -> bool {
        let pid = pid.to_string();
        self.current.iter().any(|(labels, _)| labels.pid == pid)
    }

    /// A process is being sampled (besides any others: --subprocesses).
    pub fn attached(&mut self, target: &TargetInfo) {
        self.detached(target.pid);
        let labels = TargetLabels {
            pid: target.pid.to_string(),
            command: target.command_line.clone(),
            python_version: target.python_version.to_string(),
        };
        self.target.get_or_create(&labels).set(1);
        self.up.set(1);
        // Create the process series at 0 so that rate() has a start.
        let process = ProcessLabels {
            pid: labels.pid.clone(),
        };
        self.lag.get_or_create(&process).inc_by(0.0);
        if target.free_threaded {
            self.enabled.get_or_create(&process).inc_by(0.0);
        } else {
            self.held.get_or_create(&process).inc_by(0.0);
            if target.wait_measured {
                self.contended.get_or_create(&process).inc_by(0.0);
            }
        }
        for family in [&self.switches, &self.samples, &self.errors, &self.late] {
            family.get_or_create(&process).inc_by(0);
        }
        let cursor = Cursor {
            no_wait: !target.wait_measured,
            free_threaded: target.free_threaded,
            gil_seen: !target.free_threaded,
            ..Cursor::default()
        };
        self.current.push((labels, cursor));
    }

    /// Process `pid` is gone. Its counters stay, flat, as Prometheus expects of counters.
    pub fn detached(&mut self, pid: i32) {
        let pid = pid.to_string();
        for (labels, _) in self.current.iter().filter(|(l, _)| l.pid == pid) {
            self.target.remove(labels);
        }
        self.current.retain(|(labels, _)| labels.pid != pid);
        self.up.set(i64::from(!self.current.is_empty()));
    }

    /// Count one slice of process `pid`'s recording.
    pub fn add_slice(&mut self, pid: i32, profile: &Profile, health: &Health) {
        let pid = pid.to_string();
        let Some((labels, cursor)) = self.current.iter_mut().find(|(l, _)| l.pid == pid) else {
            return;
        };
        let process = ProcessLabels {
            pid: labels.pid.clone(),
        };
        let grew = |now: u64, before: u64| now.saturating_sub(before);
        self.errors
            .get_or_create(&process)
            .inc_by(grew(health.errors, cursor.health.errors));
        self.late
            .get_or_create(&process)
            .inc_by(grew(health.late_ticks, cursor.health.late_ticks));
        self.lag
            .get_or_create(&process)
            .inc_by(grew(health.total_lag_ns, cursor.health.total_lag_ns) as f64 / 1e9);
        cursor.health = *health;
        let Some(start_ns) = profile.start_ns.filter(|_| profile.samples > 0) else {
            return;
        };
        self.samples.get_or_create(&process).inc_by(profile.samples);
        // The wall time since the previous slice's last tick; the first slice also counts one
        // tick's worth for its first sample.
        let credit_ns = match cursor.end_ns {
            Some(before) if profile.end_ns > before => profile.end_ns - before,
            _ => (profile.end_ns.saturating_sub(start_ns) as f64 + profile.tick_s() * 1e9) as u64,
        };
        cursor.end_ns = Some(profile.end_ns);
        let per_sample = credit_ns as f64 / 1e9 / profile.samples as f64;
        let gil = profile.gil_ticks();
        cursor.gil_seen |= gil.ticks > 0;
        for thread in profile.threads() {
            let mut name = thread.name();
            if !cursor.thread_names.contains(name) {
                if cursor.thread_names.len() < MAX_THREAD_SERIES {
                    cursor.thread_names.insert(name.to_string());
                } else {
                    name = OTHER_THREADS;
                }
            }
            if cursor.gil_seen && !cursor.no_wait && thread.latency.episodes > 0 {
                let histogram = self.waits.get_or_create(&WaitLabels {
                    pid: labels.pid.clone(),
                    thread: name.to_string(),
                });
                // Each wait at the middle of its fine bucket: inside the same coarse bucket.
                for (bucket, waits) in thread.latency.buckets() {
                    let middle = (Latency::bucket_start_s(bucket)
                        * Latency::bucket_start_s(bucket + 1))
                    .sqrt();
                    for _ in 0..waits {
                        histogram.observe(middle);
                    }
                }
            }
            for state in ThreadState::ALL {
                let gil_state = matches!(state, ThreadState::Hold | ThreadState::Wait);
                if state == ThreadState::Wait && cursor.no_wait
                    || gil_state && !cursor.gil_seen
                    || !cursor.free_threaded && !ThreadState::WITH_GIL.contains(&state)
                {
                    continue;
                }
                self.thread_seconds
                    .get_or_create(&ThreadLabels {
                        pid: labels.pid.clone(),
                        thread: name.to_string(),
                        state: state.name().to_string(),
                    })
                    .inc_by(thread.counts.get(state) as f64 * per_sample);
            }
        }
        if cursor.free_threaded {
            self.enabled
                .get_or_create(&process)
                .inc_by(gil.on as f64 * per_sample);
        }
        if cursor.gil_seen {
            self.held
                .get_or_create(&process)
                .inc_by(gil.held as f64 * per_sample);
        }
        if cursor.gil_seen && !cursor.no_wait {
            self.contended
                .get_or_create(&process)
                .inc_by(gil.contended as f64 * per_sample);
        }
        if profile.gils().len() > 1 {
            for gil in profile.gils() {
                let mut interpreter = gil
                    .interpreters
                    .iter()
                    .flatten()
                    .min()
                    .map_or_else(|| "?".to_string(), |id| id.to_string());
                if !cursor.gil_labels.contains(&interpreter) {
                    if cursor.gil_labels.len() < MAX_GIL_SERIES {
                        cursor.gil_labels.insert(interpreter.clone());
                    } else {
                        interpreter = OTHER_GILS.to_string();
                    }
                }
                let series = GilLabels {
                    pid: labels.pid.clone(),
                    interpreter,
                };
                self.gil_held
                    .get_or_create(&series)
                    .inc_by(gil.ticks.held as f64 * per_sample);
                if !cursor.no_wait {
                    self.gil_contended
                        .get_or_create(&series)
                        .inc_by(gil.ticks.contended as f64 * per_sample);
                }
            }
        }
        if let Some(((_, first), (_, last))) = profile.switch_span() {
            let switches = match cursor.switch_number {
                Some(before) if last >= before => last - before,
                _ => last.saturating_sub(first),
            };
            self.switches.get_or_create(&process).inc_by(switches);
            cursor.switch_number = Some(last);
        }
    }

    /// The exposition text of every metric, in `format`.
    pub fn encode(&self, format: Exposition) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        match format {
            Exposition::OpenMetrics => text,
            Exposition::PrometheusText => prometheus_text(&text),
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: the same samples, with the metadata
/// named as 0.0.4 names it. A counter family `x` is `x_total` there (its only sample), `# UNIT`
/// and `# EOF` do not exist, and neither do info or stateset types (these metrics have none).
/// Label values and HELP texts escape alike in both (backslash, quote, newline).
fn prometheus_text(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(family) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(family);
        }
    }
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match metadata {
            Some((prefix, rest)) => {
                let (family, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(family) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{prefix}{family}{suffix} {tail}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::test_sample;
    use ThreadState::{Hold, Idle, Wait};

    fn target(pid: i32) -> TargetInfo {
        TargetInfo {
            pid,
            ns_pid: None,
            python_version: crate::python::version::Version::new(3, 12, 1),
            binary: "/usr/bin/python3".into(),
            command_line: "python3 \"app\".py".into(),
            layout: crate::model::LayoutInfo::default(),
            wait_measured: true,
            free_threaded: false,
            sys_path: Vec::new(),
        }
    }

    /// One second of ticks 1 ms apart from `from_ms`: thread 1 holds, thread 2 waits on even
    /// ticks and is idle on odd ones; the switch counter goes up by one a tick.
    fn slice(from_ms: u64) -> Profile {
        let mut profile = Profile::new();
        for i in from_ms..from_ms + 1000 {
            let other = if i % 2 == 0 { Wait } else { Idle };
            profile.add(
                &test_sample(i * 1_000_000, i, &[(1, Hold), (2, other)]),
                |t| format!("worker-{t}"),
            );
        }
        profile
    }

    /// The value of the series whose line starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn threads_beyond_the_series_limit_add_up_under_one_label() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        // 300 threads, each named anew, one tick each, holding.
        let mut profile = Profile::new();
        for i in 0..300u64 {
            profile.add(
                &test_sample(i * 1_000_000, i, &[(10 + i as i32, Hold)]),
                |t| format!("Thread-{t}"),
            );
        }
        metrics.add_slice(42, &profile, &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        let series: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("gilscope_thread_gil_seconds_total{"))
            .filter_map(|l| l.split("thread=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(series.len(), MAX_THREAD_SERIES + 1, "{series:?}");
        let other = value(
            &text,
            "gilscope_thread_gil_seconds_total{pid=\"42\",thread=\"[other threads]\",state=\"hold\"}",
        );
        // 200 of the 300 ticks, at 1 ms each (the first also credits one tick).
        assert!((other - 0.2).abs() < 0.002, "{other}");
    }

    #[test]
    fn slices_add_up_to_wall_time_without_gaps() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        let mut health = Health::default();
        for k in 0..3 {
            health.errors += 2;
            metrics.add_slice(42, &slice(k * 1000), &health);
        }
        let text = metrics.encode(Exposition::OpenMetrics);
        let thread = |name: &str, state: &str| {
            value(
                &text,
                &format!(
                    "gilscope_thread_gil_seconds_total{{pid=\"42\",thread=\"{name}\",state=\"{state}\"}}"
                ),
            )
        };
        // 3000 ticks 1 ms apart: 3 s, all of it held by worker-1.
        assert!((thread("worker-1", "hold") - 3.0).abs() < 1e-6);
        assert!((thread("worker-2", "wait") - 1.5).abs() < 1e-6);
        assert!((thread("worker-2", "idle") - 1.5).abs() < 1e-6);
        assert_eq!(thread("worker-2", "running"), 0.0);
        let process = |name: &str| value(&text, &format!("gilscope_{name}{{pid=\"42\"}}"));
        assert!((process("gil_held_seconds_total") - 3.0).abs() < 1e-6);
        assert!((process("gil_contended_seconds_total") - 1.5).abs() < 1e-6);
        // 2999 hand-overs between the first tick and the last, none lost between slices.
        assert_eq!(process("gil_switches_total"), 2999.0);
        assert_eq!(process("samples_total"), 3000.0);
        assert_eq!(process("sample_errors_total"), 6.0);
        assert_eq!(value(&text, "gilscope_attached"), 1.0);
        assert!(text.contains("# TYPE gilscope_thread_gil_seconds counter"));
        assert!(text.contains("# UNIT gilscope_thread_gil_seconds seconds"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn a_new_target_keeps_the_old_counters_and_starts_its_own() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        metrics.add_slice(42, &slice(0), &Health::default());
        metrics.detached(42);
        let text = metrics.encode(Exposition::OpenMetrics);
        assert_eq!(value(&text, "gilscope_attached"), 0.0);
        assert!(!text.contains("gilscope_target_info{"), "{text}");
        metrics.attached(&target(43));
        // Its ticks restart from 0 ms: no credit for the time before it.
        metrics.add_slice(43, &slice(0), &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        assert!((value(&text, "gilscope_gil_held_seconds_total{pid=\"42\"}") - 1.0).abs() < 1e-6);
        assert!((value(&text, "gilscope_gil_held_seconds_total{pid=\"43\"}") - 1.0).abs() < 1e-6);
        // Label values are escaped.
        assert!(
            text.contains(r#"gilscope_target_info{pid="43",command="python3 \"app\".py",python_version="3.12.1"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn processes_sampled_together_count_apart() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        metrics.attached(&target(43));
        metrics.add_slice(42, &slice(0), &Health::default());
        metrics.add_slice(42, &slice(1000), &Health::default());
        metrics.add_slice(43, &slice(0), &Health::default());
        // A slice of a process not (or no longer) attached counts nowhere.
        metrics.add_slice(44, &slice(0), &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        assert!((value(&text, "gilscope_gil_held_seconds_total{pid=\"42\"}") - 2.0).abs() < 1e-6);
        assert!((value(&text, "gilscope_gil_held_seconds_total{pid=\"43\"}") - 1.0).abs() < 1e-6);
        assert!(!text.contains("pid=\"44\""));
        metrics.detached(42);
        let text = metrics.encode(Exposition::OpenMetrics);
        assert_eq!(value(&text, "gilscope_attached"), 1.0);
        assert!(text.contains("gilscope_target_info{pid=\"43\""));
        assert!(!text.contains("gilscope_target_info{pid=\"42\""));
        metrics.detached(43);
        assert_eq!(
            value(
                &metrics.encode(Exposition::OpenMetrics),
                "gilscope_attached"
            ),
            0.0
        );
    }

    #[test]
    fn a_target_without_measured_waits_has_no_wait_series() {
        let mut metrics = Metrics::new();
        metrics.attached(&TargetInfo {
            wait_measured: false,
            ..target(42)
        });
        metrics.add_slice(42, &slice(0), &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        assert!(text.contains("state=\"hold\""), "{text}");
        assert!(!text.contains("state=\"wait\""), "{text}");
        assert!(
            !text.contains("gilscope_gil_contended_seconds_total{"),
            "{text}"
        );
        assert!(text.contains("gilscope_gil_held_seconds_total{"), "{text}");
    }

    #[test]
    fn a_free_threaded_target_has_gil_series_only_once_its_gil_is_on() {
        use ThreadState::Attached;
        // One second of ticks 1 ms apart; with the GIL on, thread 1 holds and 2 waits.
        let slice = |from_ms: u64, on: bool| {
            let mut profile = Profile::new();
            for i in from_ms..from_ms + 1000 {
                let states = if on {
                    [(1, Hold), (2, Wait)]
                } else {
                    [(1, Attached), (2, Idle)]
                };
                let mut sample = test_sample(i * 1_000_000, i, &states);
                sample.gil.enabled = Some(on);
                profile.add(&sample, |t| format!("worker-{t}"));
            }
            profile
        };
        let mut metrics = Metrics::new();
        metrics.attached(&TargetInfo {
            free_threaded: true,
            ..target(42)
        });
        metrics.add_slice(42, &slice(0, false), &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        for absent in [
            "gilscope_gil_held_seconds_total{",
            "gilscope_gil_contended_seconds_total{",
            "state=\"hold\"",
            "state=\"wait\"",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        let enabled = "gilscope_gil_enabled_seconds_total{pid=\"42\"}";
        assert_eq!(value(&text, enabled), 0.0);
        let attached =
            "gilscope_thread_gil_seconds_total{pid=\"42\",thread=\"worker-1\",state=\"attached\"}";
        assert!((value(&text, attached) - 1.0).abs() < 1e-6);
        // `PYTHON_GIL=1` or an extension turned the GIL on: now it is measured.
        metrics.add_slice(42, &slice(1000, true), &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        assert!((value(&text, enabled) - 1.0).abs() < 1e-6);
        let process = |name: &str| value(&text, &format!("gilscope_{name}{{pid=\"42\"}}"));
        assert!((process("gil_held_seconds_total") - 1.0).abs() < 1e-6);
        assert!((process("gil_contended_seconds_total") - 1.0).abs() < 1e-6);
        let wait =
            "gilscope_thread_gil_seconds_total{pid=\"42\",thread=\"worker-2\",state=\"wait\"}";
        assert!((value(&text, wait) - 1.0).abs() < 1e-6);
        // A GIL build has its GIL series from the start.
        let mut metrics = Metrics::new();
        metrics.attached(&target(43));
        let text = metrics.encode(Exposition::OpenMetrics);
        assert!(text.contains("gilscope_gil_held_seconds_total{pid=\"43\"}"));
        assert!(!text.contains("gilscope_gil_enabled_seconds_total{"));
    }

    #[test]
    fn each_gil_of_a_process_with_several_has_its_own_series() {
        use crate::python::interpreter::GilState;
        use crate::sample::GilReading;
        // One second at 1 ms: thread 1 holds the main GIL and thread 3 waits for it on even
        // ticks; thread 2 holds interpreter 1's own GIL on the first quarter only.
        let mut profile = Profile::new();
        for i in 0..1000u64 {
            let own = if i < 250 { Hold } else { Idle };
            let third = if i % 2 == 0 { Wait } else { Idle };
            let mut tick = test_sample(i * 1_000_000, i, &[(1, Hold), (2, own), (3, third)]);
            let reading = |base, ids: Vec<Option<i64>>| GilReading {
                base,
                interpreters: ids,
                state: GilState {
                    created: true,
                    ..GilState::default()
                },
            };
            tick.gils = vec![
                reading(0x1000, vec![Some(0), Some(2)]),
                reading(0x2000, vec![Some(1)]),
            ];
            for (thread, gil) in tick.threads.iter_mut().zip([0, 1, 0]) {
                thread.gil = Some((gil, Some(i64::from(gil))));
            }
            profile.add(&tick, |t| format!("t{t}"));
        }
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        metrics.add_slice(42, &profile, &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        let gil = |name: &str, interpreter: &str| {
            value(
                &text,
                &format!("gilscope_interpreter_gil_{name}_seconds_total{{pid=\"42\",interpreter=\"{interpreter}\"}}"),
            )
        };
        assert!((gil("held", "0") - 1.0).abs() < 1e-6, "{text}");
        assert!((gil("contended", "0") - 0.5).abs() < 1e-6);
        assert!((gil("held", "1") - 0.25).abs() < 1e-6);
        assert_eq!(gil("contended", "1"), 0.0);
        assert!(!text.contains("interpreter=\"2\""), "{text}");
        // One GIL: no per-GIL series.
        let mut metrics = Metrics::new();
        metrics.attached(&target(43));
        metrics.add_slice(43, &slice(0), &Health::default());
        assert!(!metrics
            .encode(Exposition::OpenMetrics)
            .contains("gilscope_interpreter_gil_held_seconds_total{"));
    }

    #[test]
    fn each_wait_lands_in_its_bucket_of_the_wait_histogram() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        let mut profile = Profile::new();
        // Thread 2 waits 3 ticks of 1 ms, four times.
        let mut i = 0u64;
        let mut tick = |profile: &mut Profile, state| {
            profile.add(
                &test_sample(i * 1_000_000, i, &[(1, Hold), (2, state)]),
                |tid| format!("t{tid}"),
            );
            i += 1;
        };
        for _ in 0..4 {
            tick(&mut profile, Idle);
            for _ in 0..3 {
                tick(&mut profile, Wait);
            }
        }
        tick(&mut profile, Idle);
        metrics.add_slice(42, &profile, &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        let series = |le: &str| {
            value(
                &text,
                &format!(
                    "gilscope_gil_wait_seconds_bucket{{le=\"{le}\",pid=\"42\",thread=\"t2\"}}"
                ),
            )
        };
        assert_eq!(series("0.002"), 0.0, "{text}");
        assert_eq!(series("0.004"), 4.0, "{text}");
        assert_eq!(
            value(
                &text,
                "gilscope_gil_wait_seconds_count{pid=\"42\",thread=\"t2\"}"
            ),
            4.0
        );
    }

    #[test]
    fn an_empty_slice_counts_nothing() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(7));
        metrics.add_slice(7, &Profile::new(), &Health::default());
        let text = metrics.encode(Exposition::OpenMetrics);
        assert_eq!(value(&text, "gilscope_samples_total{pid=\"7\"}"), 0.0);
        assert!(!text.contains("gilscope_thread_gil_seconds_total{"));
    }

    /// The 0.0.4 text names counters as their samples, has no UNIT or EOF, and keeps every
    /// sample line as it is; HELP texts have nothing that would escape differently.
    #[test]
    fn the_prometheus_text_format_has_the_same_samples_under_its_own_metadata() {
        let mut metrics = Metrics::new();
        metrics.attached(&target(42));
        metrics.add_slice(42, &slice(0), &Health::default());
        let open = metrics.encode(Exposition::OpenMetrics);
        let text = metrics.encode(Exposition::PrometheusText);
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&open), samples(&text));
        assert!(
            text.contains("# TYPE gilscope_samples_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP gilscope_samples_total Ticks sampled.\n"));
        assert!(text.contains("# TYPE gilscope_thread_gil_seconds_total counter\n"));
        assert!(text.contains("# TYPE gilscope_target_info gauge\n"));
        assert!(text.contains("# TYPE gilscope_attached gauge\n"));
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        // Every family's metadata names a sample that exists (a histogram's samples are its
        // `_bucket`, `_sum` and `_count` series, alike in both formats).
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            let samples: &[&str] = if line.ends_with(" histogram") {
                &["_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            for suffix in samples {
                assert!(
                    text.lines().any(|l| !l.starts_with('#')
                        && (l.starts_with(&format!("{name}{suffix} "))
                            || l.starts_with(&format!("{name}{suffix}{{")))),
                    "{line} names no {name}{suffix} sample in\n{text}"
                );
            }
        }
        assert!(!text
            .lines()
            .filter(|l| l.starts_with("# HELP"))
            .any(|l| l.contains('\\')));
    }
}
