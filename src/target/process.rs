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

/// Raise this process's soft limit on open files to its hard limit: the sampler keeps a
/// /proc file and a CPU counter open per thread of the target, and the usual soft limit
/// (1024) would run out on a target with 500 threads. Best effort: nothing fails if not.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct, on this process only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What /proc/PID/stat says about the process. A main thread that has exited (a zombie, as
/// after `pthread_exit`) while other threads run leaves a live process.
pub fn liveness(pid: i32) -> Liveness {
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return Liveness::Gone;
    };
    match stat_state(&stat) {
        None => Liveness::Gone,
        Some('Z') | Some('X') if live_thread(pid).is_some() => Liveness::Alive,
        Some('Z') | Some('X') => Liveness::Zombie,
        Some(_) if stat_flags(&stat).is_some_and(|f| f & PF_KTHREAD != 0) => Liveness::KernelThread,
        Some(_) => Liveness::Alive,
    }
}

/// A thread of `pid` other than its main one that has not exited, if any.
fn live_thread(pid: i32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&tid| tid != pid)
        .find(|tid| {
            std::fs::read(format!("/proc/{pid}/task/{tid}/stat"))
                .ok()
                .and_then(|stat| stat_state(&stat))
                .is_some_and(|state| !matches!(state, 'Z' | 'X'))
        })
}

/// The task through which the process's memory, mappings and files are reached: the process
/// itself, or, where its main thread has exited while others run (`pthread_exit` in the main
/// thread), one of those (the kernel finds no memory through the main thread then). Its
/// /proc/TID directory describes the whole process.
pub fn memory_task(pid: i32) -> i32 {
    let leader_exited = std::fs::read(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_state(&stat))
        .is_some_and(|state| matches!(state, 'Z' | 'X'));
    if leader_exited {
        live_thread(pid).unwrap_or(pid)
    } else {
        pid
    }
}

/// Field `n` (1-based, as in proc(5)) of a stat line, for n >= 3: after the command name,
/// which may hold spaces and parentheses.
pub fn stat_field(stat: &[u8], n: usize) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    rest.split(' ').nth(n.checked_sub(3)?)?.parse().ok()
}

/// The `flags` field (the 9th) of a stat line.
fn stat_flags(stat: &[u8]) -> Option<u64> {
    stat_field(stat, 9)
}

/// The user a process runs as (the owner of its /proc directory: its effective uid while it
/// is dumpable, root otherwise); None once it is gone.
pub fn owner(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Live processes that go by `name`, oldest first, never this one: their kernel name
/// (`comm`), the file name of their program, or the script or module it runs (`python3 -u
/// app.py` goes by python3 and app.py, `python3 -m http.server` by http.server).
pub fn named(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u64, i32)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && liveness(pid) == Liveness::Alive)
        .filter(|&pid| goes_by(pid, name))
        .map(|pid| {
            let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap_or_default();
            (stat_field(&stat, 22).unwrap_or(u64::MAX), pid)
        })
        .collect();
    found.sort_unstable();
    found.into_iter().map(|(_, pid)| pid).collect()
}

fn goes_by(pid: i32, name: &str) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end_matches('\n') == name {
        return true;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    program_names(&args).iter().any(|n| n == name)
}

/// The names a command line goes by: its program's file name, then the first argument that is
/// not an option or an option's value (its file name), or the module after `-m`.
fn program_names(args: &[String]) -> Vec<String> {
    let file_name = |a: &str| a.rsplit('/').next().unwrap_or(a).to_string();
    let mut names = Vec::new();
    let Some((program, rest)) = args.split_first() else {
        return names;
    };
    names.push(file_name(program));
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-m" => {
                names.extend(rest.next().cloned());
                break;
            }
            // Python's options that take the next argument as their value.
            "-X" | "-W" | "--check-hash-based-pycs" => {
                rest.next();
                continue;
            }
            // A program given inline has no file name.
            "-c" => break,
            _ => {}
        }
        if !arg.starts_with('-') {
            names.push(file_name(arg));
            break;
        }
    }
    names
}

/// At most this many processes are followed below one root: a fork bomb under the target
/// must not make the sampler read without end.
pub const MAX_DESCENDANTS: usize = 4096;

/// The live descendants of `roots` (children, their children, ...), not the roots
/// themselves, in the order found. Read from each thread's `children` list where the kernel
/// has them (a child belongs to the thread that forked it), else from every process's parent
/// in /proc. A process that is reparented away (its parent exited) is no longer found.
pub fn descendants(roots: &[i32]) -> Vec<i32> {
    let by_lists = roots.iter().all(|&r| children_lists(r).is_some());
    let parents = if by_lists { None } else { Some(all_parents()) };
    let mut found: Vec<i32> = Vec::new();
    let mut queue: std::collections::VecDeque<i32> = roots.iter().copied().collect();
    while let Some(pid) = queue.pop_front() {
        let children = match &parents {
            None => children_lists(pid).unwrap_or_default(),
            Some(parents) => parents
                .iter()
                .filter(|&&(_, parent)| parent == pid)
                .map(|&(child, _)| child)
                .collect(),
        };
        for child in children {
            if found.len() >= MAX_DESCENDANTS {
                return found;
            }
            if !roots.contains(&child) && !found.contains(&child) {
                found.push(child);
                queue.push_back(child);
            }
        }
    }
    found
}

/// The children of every thread of `pid` (None: the kernel has no such lists).
fn children_lists(pid: i32) -> Option<Vec<i32>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut children = Vec::new();
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        any = true;
        children.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    // A process that exited has no tasks left: an empty list, not a missing feature.
    (any || !std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(children)
}

/// (pid, parent pid) of every process.
fn all_parents() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, stat_field(&stat, 4)? as i32))
        })
        .collect()
}

/// The command line, NUL-separated arguments joined by spaces (lossy UTF-8).
pub fn command_line(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{}/cmdline", memory_task(pid))).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// The executable's path as the target sees it.
pub fn executable(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{}/exe", memory_task(pid))).ok()
}

/// What a process is, to tell it from what its pid may become: another program (an exec) or
/// another process (the pid reused after an exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// When the process started (clock ticks after boot): an exec keeps it, a new process
    /// with the same pid has another.
    pub start_ticks: u64,
    /// The address (`AT_RANDOM` in its auxiliary vector) and contents of the 16 random bytes
    /// the kernel puts on each new program's stack: new at every exec. The address alone is
    /// the same after an exec where address space randomisation is off (`setarch -R`) and
    /// the stack holds strings of the same lengths; the bytes are random either way.
    pub program: (u64, [u8; 16]),
}

/// How a process's identity now compares with what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Same,
    /// The same process runs another program.
    Execed,
    /// Another process has the pid: the one that had it exited.
    Reused,
}

impl Identity {
    pub fn change_from(&self, before: &Identity) -> Change {
        if self.start_ticks != before.start_ticks {
            Change::Reused
        } else if self.program != before.program {
            Change::Execed
        } else {
            Change::Same
        }
    }
}

/// The identity of process `pid`. None if it is gone or hides it.
pub fn identity(pid: i32) -> Option<Identity> {
    const AT_RANDOM: u64 = 25;
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let start_ticks = stat_field(&stat, 22)?;
    let task = memory_task(pid);
    let auxv = std::fs::read(format!("/proc/{task}/auxv")).ok()?;
    let at = auxv
        .chunks_exact(16)
        .map(|pair| {
            let word =
                |at: usize| u64::from_ne_bytes(pair[at..at + 8].try_into().unwrap_or([0; 8]));
            (word(0), word(8))
        })
        .find(|&(key, _)| key == AT_RANDOM)
        .map(|(_, value)| value)?;
    let mut bytes = [0u8; 16];
    let local = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let remote = libc::iovec {
        iov_base: at as usize as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: one local iovec over `bytes`; the remote address is only read by the kernel,
    // which checks it.
    let got = unsafe { libc::process_vm_readv(task, &local, 1, &remote, 1, 0) };
    (got == 16).then_some(Identity {
        start_ticks,
        program: (at, bytes),
    })
}

/// May this process read the target's memory? Opening /proc/PID/mem makes the kernel check
/// the same ptrace access mode as process_vm_readv, without touching the target.
pub fn may_inspect(pid: i32) -> Result<(), std::io::Error> {
    std::fs::File::open(format!("/proc/{}/mem", memory_task(pid))).map(|_| ())
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
    fn an_exec_changes_the_identity_and_nothing_else_does() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.4; exec sleep 5"])
            .spawn()
            .expect("sh");
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let before = identity(pid).expect("identity");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            identity(pid).map(|i| i.change_from(&before)),
            Some(Change::Same)
        );
        std::thread::sleep(std::time::Duration::from_millis(700));
        let after = identity(pid).expect("identity");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            after.change_from(&before),
            Change::Execed,
            "sh exec'd sleep"
        );
    }

    #[test]
    fn an_exec_without_address_randomisation_changes_the_identity() {
        // The shell execs itself once with the very same arguments, address randomisation
        // off: the random bytes sit at the same address before and after, only their
        // contents tell the programs apart.
        let dir = std::env::temp_dir().join(format!("gilscope-exec-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        let script = format!(
            "sleep 0.4; if mkdir {} 2>/dev/null; then exec /bin/sh -c \"$0\" \"$0\"; fi; sleep 5",
            dir.display()
        );
        let Ok(mut child) = std::process::Command::new("setarch")
            .args(["-R", "/bin/sh", "-c", &script, &script])
            .spawn()
        else {
            eprintln!("skipped: no setarch");
            return;
        };
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let before = identity(pid);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let after = identity(pid);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir(&dir);
        let (Some(before), Some(after)) = (before, after) else {
            panic!("no identity");
        };
        assert_eq!(before.program.0, after.program.0, "the same address");
        assert_eq!(after.change_from(&before), Change::Execed);
    }

    #[test]
    fn a_pid_with_another_start_time_is_another_process() {
        let before = Identity {
            start_ticks: 100,
            program: (0x7ffc_0000_0000, [1; 16]),
        };
        let reused = Identity {
            start_ticks: 900,
            ..before
        };
        assert_eq!(reused.change_from(&before), Change::Reused);
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
    fn descendants_are_found_through_a_shell_and_are_never_the_root() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .spawn()
            .expect("sh");
        let root = shell.id() as i32;
        let mut found = Vec::new();
        for _ in 0..200 {
            found = descendants(&[root]);
            if found.len() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let by_scan: Vec<i32> = all_parents()
            .into_iter()
            .filter(|&(_, parent)| parent == root)
            .map(|(pid, _)| pid)
            .collect();
        for pid in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!found.contains(&root));
        let mut sorted = found.clone();
        sorted.sort_unstable();
        let mut scanned = by_scan;
        scanned.sort_unstable();
        assert_eq!(
            sorted, scanned,
            "children lists and the parent scan disagree"
        );
        assert!(descendants(&[i32::MAX]).is_empty());
    }

    #[test]
    fn a_missing_pid_is_gone() {
        assert_eq!(liveness(i32::MAX), Liveness::Gone);
    }

    #[test]
    fn a_command_line_goes_by_its_program_and_its_script_or_module() {
        let args = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            program_names(&args("/usr/bin/python3 -u /srv/app.py --port 80")),
            ["python3", "app.py"]
        );
        assert_eq!(
            program_names(&args("python3 -X dev -m http.server 8000")),
            ["python3", "http.server"]
        );
        assert_eq!(program_names(&args("gunicorn")), ["gunicorn"]);
        assert_eq!(program_names(&args("python3 -c pass")), ["python3"]);
        assert!(program_names(&[]).is_empty());
    }

    #[test]
    fn a_child_is_found_by_its_name_and_never_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let found = named("sleep");
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid), "{found:?}");
        let me = std::process::id() as i32;
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(!named(own.trim()).contains(&me));
    }
}
