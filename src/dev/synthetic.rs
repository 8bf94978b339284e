//! Made-up recordings of a service-like program, as big as a test asks: CPU-bound workers
//! taking turns with the GIL, I/O threads that wake and queue for it, native workers and
//! sleepers. For tests and measurements of the formats (size, load time), not of accuracy:
//! nothing here is measured from a process.

use std::collections::VecDeque;

use crate::model::{CpuClock, EndReason, LayoutInfo, Profile, Recording, SamplerStats, TargetInfo};
use crate::python::interpreter::GilState;
use crate::python::version::Version;
use crate::sample::{Health, Sample, ThreadSample, ThreadState};
use crate::stack::{Frame, StackId, StackTable};

/// The switch interval of the made-up interpreter (CPython's default, 5 ms).
const SWITCH_NS: u64 = 5_000_000;
/// An I/O thread sleeps this long between requests.
const IO_SLEEP_NS: u64 = 20_000_000;

/// What a made-up thread does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Runs Python all the time: holds the GIL or waits for it.
    Cpu,
    /// Sleeps, wakes, queues for the GIL, holds it for a moment, sleeps again.
    Io,
    /// Runs native code without the GIL, taking it back between calls.
    Native,
    /// Sleeps.
    Sleeper,
}

/// A recording of `threads` threads over `seconds` at `rate_hz` (timeline kept), with a
/// Python stack per thread and state. Thread `i` is a CPU worker, an I/O thread, a native
/// worker or a sleeper in turn; their files lie under `/srv/app`, which is on `sys.path`.
pub fn recording(threads: usize, seconds: f64, rate_hz: f64) -> Recording {
    let roles = [
        Role::Cpu,
        Role::Io,
        Role::Native,
        Role::Sleeper,
        Role::Cpu,
        Role::Io,
    ];
    let role = |i: usize| roles[i % roles.len()];
    let name = |i: usize| {
        let kind = match role(i) {
            Role::Cpu => "worker",
            Role::Io => "client",
            Role::Native => "compressor",
            Role::Sleeper => "housekeeper",
        };
        format!("{kind}-{i}")
    };
    let mut table = StackTable::new();
    let threading = |table: &mut StackTable, line| {
        table.intern_frame(Frame::python(
            "Thread.run".into(),
            "/usr/lib/python3.12/threading.py".into(),
            line,
        ))
    };
    // Each thread's stack in each state it can be in: run -> its function -> a leaf.
    let stacks: Vec<[StackId; ThreadState::COUNT]> = (0..threads)
        .map(|i| {
            let root = threading(&mut table, 1010);
            let file = format!("/srv/app/{}.py", name(i).split('-').next().unwrap_or("x"));
            let body = table.intern_frame(Frame::python(
                format!("serve_{}", i % 7).into(),
                file.clone().into(),
                10 + (i % 7) as u32,
            ));
            std::array::from_fn(|state| {
                let leaf = table.intern_frame(Frame::python(
                    format!("step_{}", ThreadState::ALL[state].name()).into(),
                    file.clone().into(),
                    40 + state as u32,
                ));
                table.intern_stack(&[root, body, leaf])
            })
        })
        .collect();
    let mut profile = Profile::new();
    profile.record_timeline();
    let period_ns = (1e9 / rate_hz) as u64;
    let ticks = (seconds * rate_hz) as u64;
    let start_ns = 1_000_000_000u64;
    // Threads wanting the GIL, the holder first.
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut held_since = start_ns;
    let mut switches = 0u64;
    let mut io_wakes: Vec<u64> = (0..threads)
        .map(|i| start_ns + (i as u64 * 3_700_000) % IO_SLEEP_NS)
        .collect();
    let mut io_held = vec![false; threads];
    let mut rng = fastrand::Rng::with_seed(24);
    for tick in 0..ticks {
        let now = start_ns + tick * period_ns;
        for (i, &wakes) in io_wakes.iter().enumerate() {
            let wants = match role(i) {
                Role::Cpu => true,
                Role::Io => now >= wakes,
                Role::Native => rng.u8(0..10) < 3,
                Role::Sleeper => false,
            };
            let queued = queue.contains(&i);
            if wants && !queued {
                queue.push_back(i);
            } else if !wants && queued && queue.front() != Some(&i) {
                queue.retain(|&t| t != i);
            }
        }
        // The holder lets go after its interval, or an I/O thread after one tick of work.
        if let Some(&holder) = queue.front() {
            let io_done = role(holder) == Role::Io && io_held[holder];
            if io_done {
                io_held[holder] = false;
                io_wakes[holder] = now + IO_SLEEP_NS;
            }
            if io_done
                || now.saturating_sub(held_since) >= SWITCH_NS
                || role(holder) == Role::Native
            {
                queue.pop_front();
                if matches!(role(holder), Role::Cpu) {
                    queue.push_back(holder);
                }
                held_since = now;
                switches += 1;
            }
        }
        let holder = queue.front().copied();
        if let Some(h) = holder.filter(|&h| role(h) == Role::Io) {
            io_held[h] = true;
        }
        let threads_now = (0..threads)
            .map(|i| {
                let state = if holder == Some(i) {
                    ThreadState::Hold
                } else if queue.contains(&i) {
                    ThreadState::Wait
                } else if role(i) == Role::Native {
                    ThreadState::Running
                } else {
                    ThreadState::Idle
                };
                ThreadSample {
                    tid: 1000 + i as i32,
                    ns_tid: None,
                    thread_id: Some(0x7f00_0000 + i as u64),
                    state,
                    stack: Some(stacks[i][state.index()]),
                    deferred: false,
                    gil: None,
                    cpu: None,
                }
            })
            .collect();
        let sample = Sample {
            time_ns: now,
            gil: GilState {
                created: true,
                locked: holder.is_some(),
                holder: 0,
                switch_number: switches,
                interval_us: SWITCH_NS / 1000,
                current: None,
                enabled: None,
            },
            threads: threads_now,
            gils: Vec::new(),
            resolved: Vec::new(),
        };
        profile.add(&sample, |tid| name((tid - 1000) as usize));
    }
    Recording {
        target: TargetInfo {
            pid: 4242,
            ns_pid: None,
            python_version: Version::new(3, 12, 1),
            binary: "/usr/bin/python3.12".into(),
            command_line: "python3 /srv/app/service.py".into(),
            layout: LayoutInfo::default(),
            wait_measured: true,
            free_threaded: false,
            sys_path: vec![
                "/srv/app".into(),
                "/usr/lib/python312.zip".into(),
                "/usr/lib/python3.12".into(),
                "/usr/lib/python3.12/lib-dynload".into(),
            ],
        },
        sampler: SamplerStats {
            rate_hz,
            errors: 0,
            late_ticks: 0,
            max_lag_s: 0.0,
            mean_lag_s: 0.0,
            ended: EndReason::Duration,
            realtime: true,
            host_steal: None,
            stack_errors: 0,
            stacks_over_budget: 0,
            unreadable: None,
            cpu_clock: CpuClock::Perf,
            native: None,
            switch_sites: None,
            degraded: Vec::new(),
            stats: Default::default(),
        },
        profile,
        stacks: Some(table),
        health: Health::default(),
    }
}
