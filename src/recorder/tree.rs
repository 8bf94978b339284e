//! The Python processes below a root, found as they appear: children forked by the target,
//! and programs that a shell or launcher starts (and execs into Python) at any time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::member::Member;
use super::{attach, RecordOptions, SPAWN_ATTACH_TIMEOUT};
use crate::error::Error;
use crate::target::process::{self, Liveness};

/// How often the target's process tree is read again for new Python processes.
const RESCAN: Duration = Duration::from_millis(200);

/// How long a process that shows no Python is tried again, in case it is one still loading.
const STARTING: Duration = Duration::from_secs(2);

/// A process of the tree that could not be sampled yet.
struct Tried {
    /// Its program when tried (an exec starts the tries again).
    exe: Option<PathBuf>,
    /// When it was first tried as this program.
    since: Instant,
    /// How long to go on trying.
    patience: Duration,
    /// Why it could not be sampled, if it is a Python (said if it never can be).
    python: Option<String>,
}

impl Tried {
    fn new(exe: Option<PathBuf>, since: Instant) -> Tried {
        Tried {
            exe,
            since,
            patience: STARTING,
            python: None,
        }
    }
}

/// Finds the Python processes below a root as they appear: children forked by the target,
/// and programs that a shell or launcher starts (and execs into Python) at any time.
pub struct Descendants {
    pub(super) root: i32,
    last_scan: Option<Instant>,
    /// Processes that were not (yet) Python when tried.
    tried: HashMap<i32, Tried>,
    /// Processes that are Python but cannot be sampled, with the reason (said once).
    refused: Vec<(i32, String)>,
}

impl Descendants {
    pub fn new(root: i32) -> Descendants {
        Descendants {
            root,
            last_scan: None,
            tried: HashMap::new(),
            refused: Vec::new(),
        }
    }

    /// Processes of the tree that are Python but could not be sampled, and why.
    pub fn refused(&self) -> &[(i32, String)] {
        &self.refused
    }

    /// Attach to the tree's new Python processes, if a scan is due.
    pub(super) fn scan(&mut self, members: &mut Vec<Member>, options: &RecordOptions) {
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN) {
            return;
        }
        self.last_scan = Some(Instant::now());
        let mut roots = vec![self.root];
        roots.extend(members.iter().filter(|m| !m.exited).map(|m| m.observer.pid));
        let mut candidates = vec![self.root];
        candidates.extend(process::descendants(&roots));
        for pid in candidates {
            // A member that exec'd is gone as that Python; its new program may be another.
            if members
                .iter_mut()
                .filter(|m| m.observer.pid == pid)
                .any(|m| {
                    m.check_exec();
                    m.is_current()
                })
                || self.refused.iter().any(|&(p, _)| p == pid)
                || members.len() >= process::MAX_DESCENDANTS
            {
                continue;
            }
            let exe = process::executable(pid);
            let now = Instant::now();
            if let Some(tried) = self.tried.get_mut(&pid) {
                if tried.exe != exe {
                    // It exec'd another program: that one gets its own chances.
                    *tried = Tried::new(exe.clone(), now);
                } else if tried.since.elapsed() > tried.patience {
                    // A Python that never became readable is said, once; others are let be.
                    if let Some(why) = tried.python.take() {
                        self.refused.push((pid, why));
                    }
                    continue;
                }
            }
            match attach(pid) {
                Ok(observer) => {
                    self.tried.remove(&pid);
                    members.push(Member::new(observer, options));
                }
                // Not Python, or not yet: a Python that is still loading its libraries looks
                // like no Python for a moment, one still initialising for longer.
                Err(
                    Error::NotPython { .. } | Error::NoSuchProcess { .. } | Error::Zombie { .. },
                ) => {
                    self.tried.entry(pid).or_insert(Tried::new(exe, now));
                }
                Err(e @ (Error::NotReady { .. } | Error::UnrecognisedLayout { .. })) => {
                    let tried = self.tried.entry(pid).or_insert(Tried::new(exe, now));
                    tried.patience = SPAWN_ATTACH_TIMEOUT;
                    tried.python = Some(e.to_string());
                }
                Err(e) => self.refused.push((pid, e.to_string())),
            }
        }
        self.tried
            .retain(|&pid, _| process::liveness(pid) == Liveness::Alive);
    }
}
