//! Facts about the target process from /proc: does it exist, may we read it, what it runs.
//! It reports; deciding whether the target is usable is the caller's job.

use std::path::PathBuf;

use super::task::stat_state;

/// PF_KTHREAD in the `flags` field of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Zombie,
    KernelThread,
    Gone,
}

/// What /proc/PID/stat says about the process.
pub fn liveness(pid: i32) -> Liveness {
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return Liveness::Gone;
    };
    match stat_state(&stat) {
        None => Liveness::Gone,
        Some('Z') | Some('X') => Liveness::Zombie,
        Some(_) if stat_flags(&stat).is_some_and(|f| f & PF_KTHREAD != 0) => Liveness::KernelThread,
        Some(_) => Liveness::Alive,
    }
}

/// The `flags` field (the 9th) of a stat line.
fn stat_flags(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    rest.split(' ').nth(6)?.parse().ok()
}

/// The command line, NUL-separated arguments joined by spaces (lossy UTF-8).
pub fn command_line(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// The executable's path as the target sees it.
pub fn executable(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// May this process read the target's memory? Opening /proc/PID/mem makes the kernel check
/// the same ptrace access mode as process_vm_readv, without touching the target.
pub fn may_inspect(pid: i32) -> Result<(), std::io::Error> {
    std::fs::File::open(format!("/proc/{pid}/mem")).map(|_| ())
}

/// (steal, total) CPU time of this machine so far, in clock ticks, from /proc/stat. "Steal"
/// is time the hypervisor gave this VM's CPUs to other guests.
pub fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.get(7)?, fields.iter().take(8).sum()))
}

/// Share of CPU time stolen by the hypervisor between two `cpu_times()` readings.
pub fn steal_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    (t1 > t0).then(|| s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
}

/// The kernel's ptrace restriction (kernel.yama.ptrace_scope), when Yama is present.
pub fn ptrace_scope() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_inspectable() {
        let pid = std::process::id() as i32;
        assert_eq!(liveness(pid), Liveness::Alive);
        assert!(may_inspect(pid).is_ok());
        assert!(command_line(pid).is_some());
    }

    #[test]
    fn kthreadd_is_a_kernel_thread() {
        // pid 2 is kthreadd on Linux, unless we are in a pid namespace without it.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert_eq!(liveness(2), Liveness::KernelThread);
        }
    }

    #[test]
    fn reads_flags_after_names_with_spaces() {
        assert_eq!(
            stat_flags(b"2 (kthread d) S 0 0 0 0 -1 2129984 0 0"),
            Some(2129984)
        );
    }

    #[test]
    fn steal_is_the_stolen_share_of_the_interval() {
        assert_eq!(steal_share(Some((10, 100)), Some((30, 300))), Some(0.1));
        assert_eq!(steal_share(Some((10, 100)), Some((10, 100))), None);
        assert_eq!(steal_share(None, Some((1, 2))), None);
        assert!(cpu_times().is_some());
    }

    #[test]
    fn a_missing_pid_is_gone() {
        assert_eq!(liveness(i32::MAX), Liveness::Gone);
    }
}
