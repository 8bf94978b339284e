//! Developer tool: attach to a live Python, take a few ticks with stacks and thread names, and
//! save every byte they read as a snapshot (src/fuzzing.rs) for the fuzzers and replay tests.
//!
//! cargo run --release --features dev-tools --example snapshot -- --pid N -o FILE [--ticks N]

use std::time::Duration;

use gilscope::dev::fuzzing::{self, Recording, Snapshot};
use gilscope::python::interpreter::Interpreter;
use gilscope::sample::observe::Observer;
use gilscope::target::memory::{Memory, ProcessMemory};
use gilscope::target::namespace::ThreadIds;
use gilscope::target::task::Tasks;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let usage = "usage: snapshot --pid N -o FILE [--ticks N]";
    let pid: i32 = opt("--pid").and_then(|p| p.parse().ok()).expect(usage);
    let out = opt("-o").expect(usage);
    let ticks: usize = opt("--ticks").and_then(|t| t.parse().ok()).unwrap_or(4);
    if let Err(e) = take(pid, &out, ticks) {
        eprintln!("snapshot: {e}");
        std::process::exit(1);
    }
}

fn take(pid: i32, out: &str, ticks: usize) -> Result<(), String> {
    let interpreter = attach(pid)?;
    let live = Tasks::new(pid).list().map_err(|e| e.to_string())?;
    let mut snapshot = Snapshot::of(&interpreter, &live);
    let ids = ThreadIds::of(pid).map_err(|e| e.why)?;
    let memory = Recording::new(ProcessMemory::new(pid));
    let mut observer = Observer::new(pid, memory, interpreter, ids);
    observer.enable_stacks();
    for _ in 0..ticks {
        observer.observe().map_err(|e| format!("tick: {e:?}"))?;
        observer.python_thread_names();
        std::thread::sleep(Duration::from_millis(20));
    }
    // The replay finds the head and GIL again from the runtime: record what that reads too.
    fuzzing::walk(&snapshot, observer.memory());
    snapshot.regions = observer.memory().regions();
    let bytes = snapshot.to_bytes();
    std::fs::write(out, &bytes).map_err(|e| format!("{out}: {e}"))?;
    let replayed = fuzzing::walk_snapshot(&bytes);
    eprintln!(
        "{out}: Python {}, {} regions, {} bytes; replay reads {} threads, {} frames, {} names",
        observer.interpreter.description().version,
        snapshot.regions.len(),
        bytes.len(),
        replayed.threads,
        replayed.frames,
        replayed.names,
    );
    Ok(())
}

/// Attach as gilscope does, waiting a little for an interpreter that is still starting.
fn attach(pid: i32) -> Result<Interpreter, String> {
    let memory = ProcessMemory::new(pid);
    let mut last = String::new();
    for _ in 0..50 {
        match Interpreter::attach(pid, &memory as &dyn Memory) {
            Ok(interpreter) => return Ok(interpreter),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}
