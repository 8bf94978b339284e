//! `gilscope dump`: every thread's GIL state and stack now, as text or JSON, for one process
//! or a tree.

use std::time::Duration;

use crate::cli::DumpArgs;
use crate::error::Result;
use crate::formats;
use crate::recorder::{self, snapshot};

/// `gilscope dump`.
pub fn run(args: DumpArgs) -> Result<()> {
    recorder::check_target(args.pid)?;
    let options = snapshot::DumpOptions {
        sample: args.sample.map(Duration::from_secs_f64),
        locals: args.locals,
        native: args.native,
        switch_sites: args.switch_sites,
    };
    let snapshots = snapshot::dump(args.pid, args.subprocesses, options)?;
    let text = match (args.subprocesses, args.json) {
        (true, true) => formats::dump::json_processes(&snapshots),
        (true, false) => formats::dump::text_processes(&snapshots),
        (false, true) => formats::dump::json(&snapshots[0]),
        (false, false) => formats::dump::text(&snapshots[0]),
    };
    crate::output::write_stdout(text.as_bytes())
}
