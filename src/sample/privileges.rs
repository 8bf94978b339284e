//! What the sampler could not have that makes it exact (real-time priority, perf task clocks),
//! which privilege was missing, and what that costs: stated in every report. It only reads.

use serde::Serialize;

/// Capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_NICE: u32 = 23;
const CAP_PERFMON: u32 = 38;

/// A method the sampler had to do without, and what stood in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Degradation {
    /// What is missing, in the terms one grants it: "CAP_SYS_NICE", "CAP_PERFMON", ...
    pub missing: String,
    /// What gilscope did instead.
    pub fallback: String,
    /// What that costs in accuracy, as measured (docs/ACCURACY.md).
    pub cost: String,
}

/// The sampler ran at normal priority: `errno` is what sched_setscheduler(SCHED_FIFO) said.
pub fn without_realtime(errno: i32) -> Degradation {
    let caps = effective_capabilities();
    let missing = match caps {
        // Allowed, and refused all the same: the cgroup grants no real-time CPU time
        // (cgroup v1 with cpu.rt_runtime_us 0, Docker's default there).
        Some(caps) if has(caps, CAP_SYS_NICE) && errno == libc::EPERM => {
            "real-time CPU time (the cgroup's cpu.rt_runtime_us is 0)".to_string()
        }
        _ if errno == libc::EPERM => "CAP_SYS_NICE".to_string(),
        _ => format!(
            "real-time priority ({})",
            std::io::Error::from_raw_os_error(errno)
        ),
    };
    Degradation {
        missing,
        fallback: "the sampler ran at normal priority".into(),
        cost: "ticks come late when every CPU is busy, and then land more often where target \
               threads block: on a 2-CPU machine saturated by other work, mean errors up to 3.4 \
               points and a thread off by up to 8 where native code runs beside Python, against \
               1.8 and 4 with it (docs/ACCURACY.md)"
            .into(),
    }
}

/// `--switch-sites` was asked for and could not be followed (`why`: no GIL symbols, an
/// interpreter with the C library linked in, perf refused).
pub fn without_switch_sites(why: &str) -> Degradation {
    Degradation {
        missing: format!("switch sites ({why})"),
        fallback: "runnable threads off their CPU were classified as without --switch-sites".into(),
        cost: "a thread preempted just after a brief GIL release can read as waiting, beside \
               CPU hogs up to several points too much wait (docs/ACCURACY.md, point 11)"
            .into(),
    }
}

/// Per-thread CPU time came from schedstat: `errno` is what perf_event_open said.
pub fn without_perf(errno: i32) -> Degradation {
    let caps = effective_capabilities();
    let paranoid = perf_event_paranoid();
    let missing = if errno == libc::ENOSYS || errno == libc::ENOENT {
        "perf events (this kernel has none)".to_string()
    } else if seccomp_filtered() && caps.is_some_and(|c| has(c, CAP_PERFMON)) {
        "perf_event_open (refused by this process's seccomp filter, as container runtimes' \
         default profiles do)"
            .to_string()
    } else if caps.is_some_and(|c| !has(c, CAP_PERFMON) && !has(c, CAP_SYS_ADMIN)) {
        match paranoid {
            Some(level) if level > 2 => {
                format!("CAP_PERFMON (kernel.perf_event_paranoid is {level})")
            }
            _ if seccomp_filtered() => "CAP_PERFMON, or a seccomp profile that allows \
                                        perf_event_open"
                .to_string(),
            _ => "CAP_PERFMON".to_string(),
        }
    } else {
        format!(
            "perf_event_open ({})",
            std::io::Error::from_raw_os_error(errno)
        )
    };
    Degradation {
        missing,
        fallback: "per-thread CPU time from schedstat, which advances only at scheduler ticks"
            .into(),
        cost: "a runnable thread's native work and its queueing for the GIL are told apart \
               less well: on a 2-CPU machine saturated by other work, mean errors up to 2.5 \
               points and a thread off by up to 7 where native code runs beside Python, 11 on \
               native calls shorter than a scheduler tick (docs/ACCURACY.md)"
            .into(),
    }
}

/// May this process lock memory beyond its limits (CAP_IPC_LOCK, as root has)? perf counts
/// the pages of every perf mapping against the user's locked-memory allowance; without this
/// capability the pages of `--native`'s rings come out of the same allowance, and nothing
/// else may take from it.
pub fn can_lock_memory() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    effective_capabilities().is_some_and(|caps| has(caps, CAP_IPC_LOCK))
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// This process's effective capabilities (CapEff of /proc/self/status).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field(&status, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// Is a seccomp filter on this process (mode 2 in /proc/self/status)?
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_field(&s, "Seccomp").map(|v| v == "2"))
        .unwrap_or(false)
}

fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_a_status_file() {
        let status = "Name:\tgilscope\nCapEff:\t0000000000080000\nSeccomp:\t2\n";
        assert_eq!(status_field(status, "CapEff"), Some("0000000000080000"));
        assert_eq!(status_field(status, "Seccomp"), Some("2"));
        assert_eq!(status_field(status, "Cap"), None);
        let caps = u64::from_str_radix("0000000000080000", 16).unwrap();
        // CAP_SYS_PTRACE (19) alone.
        assert!(has(caps, 19) && !has(caps, CAP_SYS_NICE));
    }

    #[test]
    fn a_refused_priority_names_the_capability() {
        assert!(effective_capabilities().is_some());
        let lost = without_realtime(libc::EPERM);
        assert!(lost.missing.contains("CAP_SYS_NICE") || lost.missing.contains("cgroup"));
        assert!(without_perf(libc::ENOSYS).missing.contains("has none"));
    }
}
