//! The target's PID namespace: translates the thread ids a containerised process knows itself
//! by (what CPython stores) into the ids our /proc lists, from the NSpid lines. It never guesses.

use std::collections::HashMap;

/// Why the target's thread ids cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub why: String,
}

/// Thread ids as the target knows them, against the ids /proc (and every report) uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadIds {
    /// The target lives in the PID namespace of our /proc: one id per thread.
    Same,
    /// The target lives in a namespace below ours, `depth` levels down (a container: 1; a
    /// container in a container: 2). Ids are learnt per thread, once, from its NSpid line.
    Nested {
        pid: i32,
        /// The process's own pid in its namespace (1 for a container's first process).
        own_pid: i32,
        depth: usize,
        /// Our id -> the target's own id (the innermost of NSpid), for the threads seen.
        own: HashMap<i32, i32>,
        /// The inverse.
        ours: HashMap<i32, i32>,
        /// NSpid reads so far (for `--stats`).
        reads: u64,
    },
}

impl ThreadIds {
    /// The namespace of process `pid`, read from its NSpid line. Refuses where the ids cannot
    /// be translated: a kernel without NSpid (before 4.1) with the target in another PID
    /// namespace than ours.
    pub fn of(pid: i32) -> Result<ThreadIds, Unmapped> {
        let status = std::fs::read(format!("/proc/{pid}/status")).map_err(|e| Unmapped {
            why: format!("cannot read /proc/{pid}/status: {e}"),
        })?;
        match nspid(&status) {
            Some(ids) if ids.len() <= 1 => Ok(ThreadIds::Same),
            Some(ids) => Ok(ThreadIds::Nested {
                pid,
                own_pid: ids[ids.len() - 1],
                depth: ids.len() - 1,
                own: HashMap::new(),
                ours: HashMap::new(),
                reads: 0,
            }),
            None if same_namespace_as_ours(pid) => Ok(ThreadIds::Same),
            None => Err(Unmapped {
                why: format!(
                    "process {pid} is in another PID namespace and this kernel has no NSpid \
                     lines (Linux 4.1+) to translate its thread ids"
                ),
            }),
        }
    }

    /// The process's own pid in its namespace, where it differs from ours.
    pub fn own_pid(&self) -> Option<i32> {
        match self {
            ThreadIds::Same => None,
            ThreadIds::Nested { own_pid, .. } => Some(*own_pid),
        }
    }

    /// Is the target in a PID namespace of its own?
    pub fn nested(&self) -> bool {
        matches!(self, ThreadIds::Nested { .. })
    }

    /// Learn the target's own ids of the threads in `live` (our ids, sorted) not seen before,
    /// and forget threads that are gone. Free where the target shares our namespace.
    pub fn update(&mut self, live: &[i32]) {
        let ThreadIds::Nested {
            pid,
            own,
            ours,
            reads,
            ..
        } = self
        else {
            return;
        };
        if own.len() != live.len() || live.iter().any(|t| !own.contains_key(t)) {
            own.retain(|tid, _| live.binary_search(tid).is_ok());
            ours.retain(|_, tid| live.binary_search(tid).is_ok());
        }
        for &tid in live {
            if own.contains_key(&tid) {
                continue;
            }
            *reads += 1;
            let Ok(status) = std::fs::read(format!("/proc/{pid}/task/{tid}/status")) else {
                continue;
            };
            // The innermost id is the thread's own: what gettid() returned to it.
            if let Some(&inner) = nspid(&status).as_deref().and_then(<[i32]>::last) {
                own.insert(tid, inner);
                ours.insert(inner, tid);
            }
        }
    }

    /// The target's own id of our thread `tid`, where it differs.
    pub fn own_id(&self, tid: i32) -> Option<i32> {
        match self {
            ThreadIds::Same => None,
            ThreadIds::Nested { own, .. } => own.get(&tid).copied(),
        }
    }

    /// Our id of the thread the target calls `own` (None: not one of its live threads).
    pub fn our_id(&self, own: i32) -> Option<i32> {
        match self {
            ThreadIds::Same => Some(own),
            ThreadIds::Nested { ours, .. } => ours.get(&own).copied(),
        }
    }

    /// The target's own ids of `live` (our ids), sorted.
    pub fn own_ids(&self, live: &[i32]) -> Vec<i32> {
        match self {
            ThreadIds::Same => live.to_vec(),
            ThreadIds::Nested { own, .. } => {
                let mut ids: Vec<i32> = live.iter().filter_map(|t| own.get(t).copied()).collect();
                ids.sort_unstable();
                ids
            }
        }
    }

    /// NSpid lines read so far.
    pub fn reads(&self) -> u64 {
        match self {
            ThreadIds::Same => 0,
            ThreadIds::Nested { reads, .. } => *reads,
        }
    }
}

/// The ids of an `NSpid:` line of a status file, outermost (our /proc's namespace) first;
/// None if there is no such line or it does not parse.
pub fn nspid(status: &[u8]) -> Option<Vec<i32>> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ids: Option<Vec<i32>> = line
        .split_whitespace()
        .map(|f| f.parse::<i32>().ok().filter(|&id| id > 0))
        .collect();
    ids.filter(|ids| !ids.is_empty())
}

/// Does `pid` live in our own PID namespace (by the namespace files' identities)?
fn same_namespace_as_ours(pid: i32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    let ours = std::fs::read_link("/proc/self/ns/pid");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_level_of_an_nspid_line() {
        let status = b"Name:\tpython3\nTgid:\t30822\nNSpid:\t30822\t17\t1\nNSpgid:\t1\n";
        assert_eq!(nspid(status), Some(vec![30822, 17, 1]));
        assert_eq!(nspid(b"Name:\tx\nNSpid:\t42\n"), Some(vec![42]));
        assert_eq!(nspid(b"Name:\tx\n"), None);
        assert_eq!(nspid(b"NSpid:\t42\tjunk\n"), None);
        assert_eq!(nspid(b"NSpid:\n"), None);
        assert_eq!(nspid(&[0xff, 0xfe]), None);
    }

    #[test]
    fn this_process_shares_our_namespace() {
        let ids = ThreadIds::of(std::process::id() as i32).unwrap();
        assert_eq!(ids, ThreadIds::Same);
        assert_eq!(ids.our_id(5), Some(5));
        assert_eq!(ids.own_id(5), None);
        assert_eq!(ids.own_ids(&[3, 4]), [3, 4]);
        assert!(ThreadIds::of(i32::MAX).is_err());
    }

    #[test]
    fn a_nested_namespace_translates_only_the_threads_it_has_seen() {
        let mut own = HashMap::new();
        let mut ours = HashMap::new();
        for (host, inner) in [(1000, 1), (1004, 2), (1007, 3)] {
            own.insert(host, inner);
            ours.insert(inner, host);
        }
        let mut ids = ThreadIds::Nested {
            pid: i32::MAX,
            own_pid: 1,
            depth: 1,
            own,
            ours,
            reads: 0,
        };
        assert_eq!(ids.our_id(2), Some(1004));
        assert_eq!(ids.our_id(9), None);
        assert_eq!(ids.own_id(1007), Some(3));
        assert_eq!(ids.own_ids(&[1000, 1007, 1009]), [1, 3]);
        // Thread 1004 ended; 1009 started but cannot be read (here: no such process).
        ids.update(&[1000, 1007, 1009]);
        assert_eq!(ids.our_id(2), None);
        assert_eq!(ids.own_id(1009), None);
        assert_eq!(ids.reads(), 1);
    }
}
