//! The errors a user can meet, each with a one-line message, a hint and an exit code.
//! Errors describe; main.rs prints them. Nothing here panics or prints.

use std::fmt;

/// Exit codes, documented in docs/EXIT_CODES.md. Stable: scripts depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Internal = 1,
    Usage = 2,
    NoSuchProcess = 3,
    PermissionDenied = 4,
    NotPython = 5,
    UnsupportedVersion = 6,
    Output = 7,
    Spawn = 8,
}

#[derive(Debug)]
pub enum Error {
    NoSuchProcess {
        pid: i32,
    },
    Zombie {
        pid: i32,
    },
    KernelThread {
        pid: i32,
    },
    SelfTarget {
        pid: i32,
    },
    PermissionDenied {
        pid: i32,
        what: String,
    },
    NotPython {
        pid: i32,
        exe: String,
        /// Why its interpreter's file could not be opened, where that is why no interpreter
        /// was found (the file was replaced, its file system does not answer).
        unreadable: Option<String>,
    },
    /// --subprocesses found no Python process at or below `pid`.
    NoPythonInTree {
        pid: i32,
    },
    UnsupportedVersion {
        version: String,
        why: String,
    },
    UnrecognisedLayout {
        version: String,
        what: String,
    },
    NotReady {
        pid: i32,
        what: String,
    },
    /// The target lives in a PID namespace whose thread ids cannot be translated into ours:
    /// its figures would be attributed to no thread.
    ForeignNamespace {
        pid: i32,
        why: String,
    },
    Spawn {
        command: String,
        source: std::io::Error,
    },
    Output {
        path: String,
        source: std::io::Error,
    },
    /// The process lives but could not be read (gilscope out of open files, a corrupt list).
    Unreadable {
        pid: i32,
        why: String,
    },
    /// `serve --listen ADDRESS` could not listen there.
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The target was attached to but ended (exited or exec'd) before its first sample.
    GoneBeforeSampling {
        pid: i32,
        execed: bool,
    },
    Usage(String),
    Internal(String),
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::NoSuchProcess { .. }
            | Error::Zombie { .. }
            | Error::KernelThread { .. }
            | Error::GoneBeforeSampling { .. } => ExitCode::NoSuchProcess,
            Error::PermissionDenied { .. } | Error::ForeignNamespace { .. } => {
                ExitCode::PermissionDenied
            }
            Error::NotPython { .. }
            | Error::NoPythonInTree { .. }
            | Error::SelfTarget { .. }
            | Error::NotReady { .. } => ExitCode::NotPython,
            Error::UnsupportedVersion { .. } | Error::UnrecognisedLayout { .. } => {
                ExitCode::UnsupportedVersion
            }
            Error::Spawn { .. } => ExitCode::Spawn,
            Error::Output { .. } => ExitCode::Output,
            Error::Listen { .. } | Error::Usage(_) => ExitCode::Usage,
            Error::Unreadable { .. } => ExitCode::Internal,
            Error::Internal(_) => ExitCode::Internal,
        }
    }

    /// What the user can do about it, if there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::PermissionDenied { .. } => Some(permission_hint()),
            Error::NotReady { .. } => Some(
                "if the process is still starting, try again in a moment; \
                 gilscope record -- CMD waits for the interpreter by itself"
                    .into(),
            ),
            Error::UnsupportedVersion { .. } => Some(
                "docs/COMPATIBILITY.md lists the versions gilscope supports and how each was \
                 checked"
                    .into(),
            ),
            Error::UnrecognisedLayout { .. } => Some(
                "please report this with the output of `python -VV` for that interpreter".into(),
            ),
            Error::NoSuchProcess { .. } => Some("check the pid with `ps -p PID`".into()),
            Error::Unreadable { why, .. } if why.contains("RLIMIT_NOFILE") => Some(
                "raise the limit before starting gilscope (`ulimit -n`, as root up to \
                 fs.nr_open): each thread of the target needs a file or two"
                    .into(),
            ),
            Error::NotPython { pid, .. } => {
                let below = crate::target::process::descendants(&[*pid]).len();
                (below > 0).then(|| {
                    format!(
                        "it has {below} process{} below it: if Python runs there (under a \
                         shell or a launcher), add --subprocesses to follow it",
                        if below == 1 { "" } else { "es" }
                    )
                })
            }
            Error::Output { path, source } => output_hint(path, source),
            Error::ForeignNamespace { pid, .. } => Some(format!(
                "run gilscope inside the target's PID namespace instead: \
                 nsenter --target {pid} --pid --mount gilscope record --pid 1 (README: \
                 Profiling in containers and Kubernetes)"
            )),
            Error::Listen { address, source } => listen_hint(address, source),
            _ => None,
        }
    }
}

fn listen_hint(address: &std::net::SocketAddr, source: &std::io::Error) -> Option<String> {
    // The same host part with any free port, as --listen takes it.
    let any_port = std::net::SocketAddr::new(address.ip(), 0);
    match source.kind() {
        std::io::ErrorKind::AddrInUse => Some(format!(
            "another program listens there (`ss -ltnp 'sport = :{}'` shows which); choose \
             another port, or --listen {any_port} for any free one (serve prints it)",
            address.port()
        )),
        std::io::ErrorKind::AddrNotAvailable => Some(format!(
            "{} is not an address of this host: the default 127.0.0.1 listens on loopback only, \
             0.0.0.0 on every interface",
            address.ip()
        )),
        std::io::ErrorKind::PermissionDenied if address.port() < 1024 => Some(format!(
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose one above, e.g. --listen {}",
            std::net::SocketAddr::new(address.ip(), 9464)
        )),
        _ => None,
    }
}

/// What to do about an output that cannot be written.
fn output_hint(path: &str, source: &std::io::Error) -> Option<String> {
    let parent = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())?;
    match source.kind() {
        std::io::ErrorKind::NotFound if !parent.exists() => Some(format!(
            "the directory {} does not exist: create it first (mkdir -p)",
            parent.display()
        )),
        _ => None,
    }
}

fn permission_hint() -> String {
    if nix::unistd::geteuid().is_root() {
        // Root was refused all the same: more privilege is not the answer.
        let mut hint = String::from(
            "gilscope runs as root and was refused all the same: the process may be in a \
             user namespace root does not own, or a security module (SELinux, AppArmor, \
             lockdown) forbids reading it",
        );
        if crate::target::process::ptrace_scope() == Some(3) {
            hint = "kernel.yama.ptrace_scope is 3, which forbids ptrace access to every \
                    process, even for root, until reboot"
                .into();
        }
        return hint;
    }
    let mut hint = String::from(
        "run as root or with CAP_SYS_PTRACE (sudo gilscope ...); in a container add \
         `--cap-add SYS_PTRACE`",
    );
    if let Some(scope) = crate::target::process::ptrace_scope() {
        if scope > 0 {
            hint.push_str(&format!(
                "; kernel.yama.ptrace_scope is {scope}, which limits ptrace access to \
                 non-children without the capability"
            ));
        }
    }
    hint
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchProcess { pid } => write!(f, "no process with pid {pid}"),
            Error::Zombie { pid } => write!(f, "process {pid} has exited (it is a zombie)"),
            Error::KernelThread { pid } => {
                write!(f, "pid {pid} is a kernel thread, not a Python process")
            }
            Error::SelfTarget { pid } => write!(f, "pid {pid} is gilscope itself"),
            Error::PermissionDenied { pid, what } => {
                write!(f, "permission denied: cannot {what} of process {pid}")
            }
            Error::NotPython {
                pid,
                exe,
                unreadable: Some(why),
            } => write!(
                f,
                "process {pid} ({exe}): no CPython interpreter could be read: {why}"
            ),
            Error::NotPython { pid, exe, .. } => {
                write!(f, "process {pid} ({exe}) is not a Python process: no CPython interpreter is loaded")
            }
            Error::NoPythonInTree { pid } => write!(
                f,
                "no Python process was found in process {pid} or below it"
            ),
            Error::UnsupportedVersion { version, why } => {
                write!(f, "Python {version} is not supported: {why}")
            }
            Error::UnrecognisedLayout { version, what } => {
                write!(
                    f,
                    "unrecognised Python {version} interpreter layout: {what}"
                )
            }
            Error::NotReady { pid, what } => {
                write!(
                    f,
                    "the Python interpreter in process {pid} is not ready: {what}"
                )
            }
            Error::ForeignNamespace { pid, why } => write!(
                f,
                "cannot match the threads of process {pid} with its Python threads: {why}"
            ),
            Error::Spawn { command, source } => write!(f, "cannot start `{command}`: {source}"),
            Error::Output { path, source } => write!(f, "cannot write {path}: {source}"),
            Error::Unreadable { pid, why } => write!(f, "process {pid} could not be read: {why}"),
            Error::Listen { address, source } => match source.kind() {
                std::io::ErrorKind::AddrInUse => {
                    write!(
                        f,
                        "cannot listen on {address}: the address is already in use"
                    )
                }
                _ => write!(f, "cannot listen on {address}: {source}"),
            },
            Error::GoneBeforeSampling { pid, execed } => write!(
                f,
                "process {pid} {} before its first sample: nothing was recorded",
                if *execed {
                    "exec'd another program"
                } else {
                    "exited"
                }
            ),
            Error::Usage(message) => write!(f, "{message}"),
            Error::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
