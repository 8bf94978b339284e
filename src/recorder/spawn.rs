//! Commands that gilscope starts (`-- python3 app.py`): started, waited for until they are a
//! Python gilscope can sample, and ended when the recording is over.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{attach, SPAWN_ATTACH_TIMEOUT};
use crate::error::{Error, Result};
use crate::sample::observe::Observer;
use crate::target::memory::ProcessMemory;

/// A command started by gilscope; killed when the recording is over if still running.
pub struct Spawned {
    child: Child,
}

impl Spawned {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(super) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// End the command: SIGTERM, a moment's grace, then SIGKILL; always reaped.
    pub fn finish(mut self) {
        if self.exited() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a command.
pub fn start(command: &[String]) -> Result<Spawned> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::Usage("no command given after --".into()))?;
    let gilscope = std::process::id() as libc::pid_t;
    let mut command_to_start = Command::new(program);
    command_to_start.args(args);
    // If gilscope dies without ending the command (SIGKILL, a crash), the kernel kills the
    // command too, rather than leave it running with nobody to end it. A gilscope that died
    // before this was set is seen as a changed parent. The kernel ties this to the thread
    // that forks, not the process: commands are started from gilscope's main thread only.
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        command_to_start.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != gilscope {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = command_to_start.spawn().map_err(|source| Error::Spawn {
        command: command.join(" "),
        source,
    })?;
    Ok(Spawned { child })
}

/// Start a command and wait until it is a Python interpreter we can sample.
pub fn spawn(command: &[String], stop: &AtomicBool) -> Result<(Spawned, Observer<ProcessMemory>)> {
    let mut spawned = start(command)?;
    let pid = spawned.pid();
    let started = Instant::now();
    loop {
        // The command may be a shell or a shim that execs Python: retry until it is one.
        let last = match attach(pid) {
            Ok(observer) => return Ok((spawned, observer)),
            Err(e) => e,
        };
        let transient = matches!(
            last,
            Error::NotReady { .. } | Error::NotPython { .. } | Error::UnrecognisedLayout { .. }
        );
        if spawned.exited() {
            return Err(Error::Spawn {
                command: command.join(" "),
                source: std::io::Error::other("it exited before a Python interpreter started"),
            });
        }
        if !transient || started.elapsed() > SPAWN_ATTACH_TIMEOUT || stop.load(Ordering::Relaxed) {
            spawned.finish();
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
