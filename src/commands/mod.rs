//! The subcommands, one module each: each turns its parsed arguments into a plan, runs it and
//! writes what it made. main.rs only dispatches to them.

pub(crate) mod dump;
pub(crate) mod man;
pub(crate) mod record;
pub(crate) mod serve;
pub(crate) mod top;

use std::sync::atomic::AtomicBool;
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

/// SIGINT and SIGTERM end the recording (a second SIGINT ends gilscope at once).
pub fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone());
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}
