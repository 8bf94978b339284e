//! One Python process being sampled: its observer and classifier, the profile gathered from
//! it so far, its thread names, and what becomes of it (exit, exec) while it is sampled.

use std::path::PathBuf;
use std::time::Instant;

use super::{health, ObservationSink, RecordOptions, NAME_REFRESH, NAME_SLICES};
use crate::model::{
    CpuClock, EndReason, NativeCapture, Profile, Recording, SamplerStats, SwitchSites, TargetInfo,
};
use crate::sample::classify::Classifier;
use crate::sample::monotonic_ns;
use crate::sample::native::NativeOptions;
use crate::sample::observe::{Observer, TickError};
use crate::sample::privileges;
use crate::sample::schedule::Schedule;
use crate::sample::stats::Stopwatch;
use crate::target::memory::ProcessMemory;
use crate::target::process::{self, Liveness};

/// Share of the sampling interval a tick may spend on first walks of sleeping threads.
const WALK_SHARE: f64 = 0.25;
/// How often a version known only from the library's name is read again.
const VERSION_REREAD: std::time::Duration = std::time::Duration::from_millis(200);
/// Python names come from a walk of `threading`'s registry: read again at the first slice
/// after threads came or went, every [`NAME_REFRESH`] while some thread has no name yet, and
/// otherwise this often (a thread renamed).
const PYTHON_NAME_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a process that could no longer be read while alive is given to finish an exec.
const EXEC_SETTLES: std::time::Duration = std::time::Duration::from_millis(200);
/// Consecutive failed ticks after which the target is considered unreadable.
const MAX_CONSECUTIVE_ERRORS: u64 = 1000;

/// One Python process being sampled: what it is, and what has been gathered from it.
pub(super) struct Member {
    pub(super) observer: Observer<ProcessMemory>,
    pub(super) target: TargetInfo,
    pub(super) stacks: bool,
    pub(super) classifier: Classifier,
    pub(super) profile: Profile,
    pub(super) errors: u64,
    pub(super) consecutive_errors: u64,
    pub(super) stack_errors: u64,
    /// Its process exited (or could no longer be read): it is sampled no more.
    pub(super) exited: bool,
    /// What its process was when attached: an exec changes it, and so does the pid's reuse
    /// by another process after this one exited (`process::identity`).
    pub(super) identity: Option<process::Identity>,
    /// It could not be read any more while its process still lived: maybe in the middle of
    /// an exec (the kernel ends every other thread first), said once the exec is over.
    pub(super) lost_alive: bool,
    /// Why its process, alive, could no longer be read (`exited` is set too).
    pub(super) unreadable: Option<String>,
    /// The program its process exec'd, if it did: its Python is gone (`exited` is set too).
    pub(super) execed: Option<PathBuf>,
    /// When Python names were last read, the interpreter's lists generation then, whether
    /// they named every Python thread alive, and the profile's rows then.
    pub(super) python_names_read: Option<(Instant, u64, bool, usize)>,
    /// Its last slice, the one that says it exited, was given out.
    pub(super) sliced_out: bool,
    /// When its version, known only from the library's name at attach, was last read again.
    pub(super) version_read: Option<Instant>,
}

impl Member {
    pub(super) fn new(mut observer: Observer<ProcessMemory>, options: &RecordOptions) -> Member {
        let target = super::target_info(&observer);
        let classifier = super::classifier_for(&observer);
        let identity = process::identity(observer.pid);
        let stacks = options.stacks && observer.enable_stacks();
        // Without Python stacks there is nothing to merge native frames into (--native
        // conflicts with --gil-only); an unreadable memory map leaves them out.
        if stacks && options.native {
            let _ = observer.enable_native(NativeOptions::for_rate(options.rate_hz));
        }
        // Without the GIL's symbols or a memory map, runnable threads are classified as before
        // (and the report says so: `super::switch_sites`).
        if options.switch_sites {
            let _ = observer.enable_switch_outs();
        }
        // First walks of sleeping threads (a pool of idle workers seen at attach) may take a
        // quarter of the interval per tick; the rest wait for later ticks (exactly resolved,
        // as a sleeping thread's stack does not change).
        if options.rate_hz > 0.0 {
            observer.set_walk_budget(Some((WALK_SHARE * 1e9 / options.rate_hz) as u64));
        }
        let mut profile = Profile::new();
        if options.timeline {
            profile.record_timeline();
        }
        Member {
            observer,
            target,
            stacks,
            classifier,
            profile,
            errors: 0,
            consecutive_errors: 0,
            stack_errors: 0,
            exited: false,
            identity,
            lost_alive: false,
            unreadable: None,
            execed: None,
            python_names_read: None,
            sliced_out: false,
            version_read: None,
        }
    }

    /// Has the process exec'd another program since it was attached? Then its Python is gone
    /// and the ticks to come would read a stranger's memory: sample it no more. Its pid taken
    /// by another process means it exited.
    pub(super) fn check_exec(&mut self) -> bool {
        if self.execed.is_some() {
            return true;
        }
        let (Some(before), Some(now)) = (self.identity, process::identity(self.observer.pid))
        else {
            return false;
        };
        match now.change_from(&before) {
            process::Change::Same => {}
            process::Change::Execed => {
                self.execed =
                    Some(process::executable(self.observer.pid).unwrap_or_else(|| "?".into()));
                self.exited = true;
            }
            process::Change::Reused => self.exited = true,
        }
        self.execed.is_some()
    }

    /// Is this member the process that has its pid now (not one that exited or exec'd, whose
    /// pid now belongs to another process or program)?
    pub(super) fn is_current(&self) -> bool {
        if self.execed.is_some() {
            return false;
        }
        match (self.identity, process::identity(self.observer.pid)) {
            (Some(before), Some(now)) => now.change_from(&before) == process::Change::Same,
            _ => true,
        }
    }

    /// A member that could no longer be read while its process lived: wait a moment for an
    /// exec under way to finish, so that it is said to have exec'd rather than exited.
    fn settle_exec(&mut self) {
        if !self.lost_alive || self.execed.is_some() {
            return;
        }
        let deadline = Instant::now() + EXEC_SETTLES;
        while Instant::now() < deadline {
            if self.check_exec() || process::liveness(self.observer.pid) != Liveness::Alive {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Take one tick of this process into its profile.
    pub(super) fn tick(&mut self, sink: &mut Option<ObservationSink>) {
        let mut lap = Stopwatch::start();
        let start_ns = lap.last_ns();
        self.take_tick(sink, &mut lap);
        let stats = &mut self.observer.stats;
        stats.ticks += 1;
        stats.tick_ns += monotonic_ns().saturating_sub(start_ns);
    }

    fn take_tick(&mut self, sink: &mut Option<ObservationSink>, lap: &mut Stopwatch) {
        match self.observer.observe() {
            Ok(observation) => {
                self.consecutive_errors = 0;
                self.stack_errors += observation.stack_errors as u64;
                if let Some(sink) = sink.as_mut() {
                    sink(self.observer.pid, &observation);
                }
                lap.split();
                let observer = &self.observer;
                for sample in self.classifier.push(&observation) {
                    self.profile.add(&sample, |tid| {
                        observer.current_thread_name(tid).unwrap_or_default()
                    });
                }
                self.observer.stats.aggregate_ns += lap.split();
            }
            Err(TickError::Gone) | Err(TickError::Denied) => {
                self.exited = true;
                // Alive but unreadable: an exec from a thread other than the main one makes
                // the kernel end every other thread before the new program is there.
                self.lost_alive = process::liveness(self.observer.pid) == Liveness::Alive;
                self.check_exec();
            }
            Err(TickError::Limit(why)) => {
                self.errors += 1;
                self.unreadable = Some(why);
                self.exited = true;
            }
            Err(TickError::Torn(_)) if self.check_exec() => {}
            Err(TickError::Torn(why)) => {
                self.errors += 1;
                self.consecutive_errors += 1;
                if process::liveness(self.observer.pid) != Liveness::Alive {
                    self.exited = true;
                } else if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    // Alive, and not one tick in a long run could be read: not an exit.
                    self.unreadable = Some(format!(
                        "{MAX_CONSECUTIVE_ERRORS} ticks in a row failed, the last with: {why}"
                    ));
                    self.exited = true;
                }
            }
        }
    }

    /// Give the profile's threads their current OS and Python names. Not once the process
    /// has exited: its pid may be another process's by now, and the last names stand.
    pub(super) fn name_threads(&mut self) {
        if self.exited || self.check_exec() {
            return;
        }
        let observer = &mut self.observer;
        self.profile
            .refresh_names(|tid| observer.current_thread_name(tid));
        self.read_python_names();
    }

    /// One slice of [`Member::name_threads`], for the sampling loop: a share of the OS names,
    /// and the Python names if threads came or went (or they are old).
    pub(super) fn name_some_threads(&mut self) {
        if self.exited || self.check_exec() {
            return;
        }
        let observer = &mut self.observer;
        let budget = self
            .profile
            .threads()
            .len()
            .div_ceil(NAME_SLICES as usize)
            .max(1);
        self.profile
            .refresh_some_names(budget, |tid| observer.current_thread_name(tid));
        let generation = self.observer.interpreter.lists_generation();
        // A new thread is named at the first slice after it appears, and again once it has
        // a row in the profile (its first samples may come after that read; a thread that lives
        // less than NAME_REFRESH would otherwise keep its OS name); a thread still without
        // a Python name is looked for again every NAME_REFRESH.
        let rows = self.profile.threads().len();
        let due = self
            .python_names_read
            .is_none_or(|(at, seen, complete, known)| {
                let age = at.elapsed();
                seen != generation
                    || known != rows
                    || (!complete && age >= NAME_REFRESH)
                    || age >= PYTHON_NAME_REFRESH
            });
        if due {
            self.read_python_names();
        }
        self.refine_version();
    }

    /// Attached while the program was starting (gilscope started it, or --subprocesses
    /// caught a new worker), its version may have come from the library's name alone: read
    /// it again while the process lives (a process gone by the end cannot be read then).
    fn refine_version(&mut self) {
        if self.target.python_version.exact
            || self
                .version_read
                .is_some_and(|at| at.elapsed() < VERSION_REREAD)
        {
            return;
        }
        self.version_read = Some(Instant::now());
        if self.observer.refine_version() {
            self.target.python_version = self.observer.interpreter.description().version;
        }
    }

    fn read_python_names(&mut self) {
        let observer = &mut self.observer;
        let names = observer.python_thread_names();
        self.profile
            .set_python_names(&names, |tid| observer.thread_alive(tid));
        let complete = !self
            .profile
            .lacks_python_names(&names, |tid| observer.thread_alive(tid));
        self.python_names_read = Some((
            Instant::now(),
            observer.interpreter.lists_generation(),
            complete,
            self.profile.threads().len(),
        ));
    }

    /// The recording of this process, once sampling is over.
    pub(super) fn finish(
        mut self,
        ended: EndReason,
        options: &RecordOptions,
        schedule: &Schedule,
        host_steal: Option<f64>,
        realtime: Result<(), i32>,
    ) -> (Recording, Observer<ProcessMemory>) {
        self.settle_exec();
        if !self.exited {
            self.version_read = None;
            self.refine_version();
        }
        let observer = &self.observer;
        for sample in self.classifier.finish() {
            self.profile.add(&sample, |tid| {
                observer.current_thread_name(tid).unwrap_or_default()
            });
        }
        self.name_threads();
        // Read last, as complete as it gets; a target gone by now keeps what attach read.
        if !self.exited {
            let sys_path = self.observer.sys_path();
            if !sys_path.is_empty() {
                self.target.sys_path = sys_path;
            }
        }
        let stacks = if self.stacks {
            self.observer.take_stack_table()
        } else {
            None
        };
        let switch_sites = super::switch_sites(&self.observer);
        let recording = Recording {
            target: self.target,
            sampler: SamplerStats {
                rate_hz: options.rate_hz,
                errors: self.errors,
                late_ticks: schedule.late_ticks,
                max_lag_s: schedule.max_lag_ns as f64 / 1e9,
                // The schedule is shared by every process sampled: its own figures.
                mean_lag_s: if schedule.ticks > 0 {
                    schedule.total_lag_ns as f64 / schedule.ticks as f64 / 1e9
                } else {
                    0.0
                },
                ended: if self.execed.is_some() {
                    EndReason::TargetExeced
                } else if self.unreadable.is_some() {
                    EndReason::TargetUnreadable
                } else if self.exited {
                    EndReason::TargetExited
                } else {
                    ended
                },
                unreadable: self.unreadable.take(),
                realtime: realtime.is_ok(),
                degraded: realtime
                    .err()
                    .map(privileges::without_realtime)
                    .into_iter()
                    .chain(
                        self.observer
                            .cpu_clock_unavailable()
                            .map(privileges::without_perf),
                    )
                    .chain(match &switch_sites {
                        Some(SwitchSites::Unavailable(why)) => {
                            Some(privileges::without_switch_sites(why))
                        }
                        _ => None,
                    })
                    .collect(),
                host_steal: host_steal.map(|s| (s * 1e4).round() / 1e4),
                stack_errors: self.stack_errors,
                stacks_over_budget: stacks.as_ref().map_or(0, |table| {
                    self.profile
                        .samples_with_stack(|stack| table.is_over_budget(stack))
                }),
                switch_sites: switch_sites.clone(),
                stats: self.observer.stats,
                cpu_clock: match self.observer.cpu_clock_unavailable() {
                    None => CpuClock::Perf,
                    Some(perf_errno) => CpuClock::Schedstat { perf_errno },
                },
                native: self.observer.native_status().map(|perf| match perf {
                    None => NativeCapture::Perf,
                    Some(perf_errno) => NativeCapture::SleepersOnly { perf_errno },
                }),
            },
            health: health(self.errors, schedule),
            profile: self.profile,
            stacks,
        };
        (recording, self.observer)
    }
}
