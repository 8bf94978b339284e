//! The subcommands, one module each: each turns its parsed arguments into a plan, runs it and
//! writes what it made. main.rs only dispatches to them.

pub(crate) mod dump;
pub(crate) mod man;
pub(crate) mod record;
pub(crate) mod serve;
pub(crate) mod top;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cli::Command;
use crate::error::Result;

/// Run the subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Record(args) => record::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Top(args) => top::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Completions(args) => man::completions(args),
        Command::Man(args) => man::run(args),
    }
}

/// SIGINT and SIGTERM end the recording. A second one is ignored: `timeout` and a terminal
/// signal gilscope and its process group, two signals for one request, and the report is
/// still to be written. A third ends gilscope at once (exit 130), saying so.
pub fn stop_flag() -> Arc<AtomicBool> {
    static SIGNALS: AtomicUsize = AtomicUsize::new(0);
    const GIVEN_UP: &[u8] =
        b"\ngilscope: interrupted three times: ending at once, nothing written\n";
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let stop = stop.clone();
        let handler = move || {
            stop.store(true, Ordering::SeqCst);
            if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 2 {
                // SAFETY: write(2) and _exit(2) are async-signal-safe.
                unsafe {
                    libc::write(2, GIVEN_UP.as_ptr().cast(), GIVEN_UP.len());
                    libc::_exit(130);
                }
            }
        };
        // SAFETY: the handler only stores to atomics and calls async-signal-safe functions.
        let _ = unsafe { signal_hook::low_level::register(signal, handler) };
    }
    stop
}
