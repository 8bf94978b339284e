//! Native stacks of real interpreters running the C fixture (fixtures/native/gilnative.c, built
//! here against each interpreter's headers): the known C functions, in order, above the
//! interpreter's evaluation loop, captured without ever stopping the target.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{per_interpreter, pythons, Fixture, Python};
use gilscope::target::memory::ProcessMemory;
use gilscope::target::native::merge::is_evaluator_name;
use gilscope::target::native::perf::PerfStacks;
use gilscope::target::native::symbols::Symbols;
use gilscope::target::native::syscall::Sleepers;
use gilscope::target::native::unwind::Modules;
use gilscope::target::native::{monotonic_ns, CaptureError, NativeStack, StackEnd};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// How long each role may take to show its known stack (its C call lasts 20 ms of every 40).
const PATIENCE: Duration = Duration::from_secs(5);
/// perf sampling period: 1,000 samples per second of CPU time per followed thread.
const PERF_PERIOD_NS: u64 = 1_000_000;
/// Stack bytes copied per perf sample.
const PERF_STACK_BYTES: u32 = 16 * 1024;

fn main() {
    let args = Arguments::from_args();
    let pythons = pythons();
    let trials: Vec<Trial> = per_interpreter(
        &pythons,
        "known_c_functions_in_order_never_stopped",
        known_stacks,
    );
    libtest_mimic::run(&args, trials).exit();
}

/// fixtures/native/gilnative.c built for `python` (with -O2 -g) in a scratch directory.
fn build_extension(python: &Python) -> Result<PathBuf, String> {
    let out = std::process::Command::new(&python.path)
        .args([
            "-c",
            "import sysconfig as s; print(s.get_paths()['include']); \
             print(s.get_config_var('EXT_SUFFIX'))",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let (include, suffix) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    if !Path::new(include).join("Python.h").exists() {
        return Err(format!(
            "no Python.h in {include} (Debian builds: libpython3.X-dev unpacked beside them)"
        ));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gilnative-{}", python.label));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let module = dir.join(format!("gilnative{suffix}"));
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-g", "-pthread", "-I", include])
        // Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>.
        .arg("-I")
        .arg(Path::new(include).parent().unwrap_or(Path::new(include)))
        .arg("-o")
        .arg(&module)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/native/gilnative.c"))
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !cc.status.success() {
        return Err(format!("cc: {}", String::from_utf8_lossy(&cc.stderr)));
    }
    Ok(dir)
}

/// A native stack as names, innermost first: the function (without a compiler clone's
/// suffix) or "module+offset".
struct Named {
    functions: Vec<String>,
    lines: Vec<String>,
    end: StackEnd,
    /// The module of the outermost frame.
    last_module: String,
}

fn name_stack(stack: &NativeStack, modules: &Modules, symbols: &mut Symbols) -> Named {
    let mut functions = Vec::new();
    let mut lines = Vec::new();
    let mut last_module = String::new();
    for frame in &stack.frames {
        for symbol in symbols.lookup(modules, frame.lookup_address()).iter() {
            let name = match &symbol.function {
                Some(f) => f.split('.').next().unwrap_or(f).to_string(),
                None => format!("{}+{:#x}", symbol.module, symbol.module_offset),
            };
            lines.push(format!(
                "{name} ({}{})",
                symbol.module,
                symbol
                    .file
                    .as_ref()
                    .map(|f| format!(" {}:{}", f, symbol.line))
                    .unwrap_or_default()
            ));
            functions.push(name);
            last_module = symbol.module.to_string();
        }
    }
    Named {
        functions,
        lines,
        end: stack.end,
        last_module,
    }
}

/// Do `wanted` appear in `functions` in this order (innermost first), each right after the
/// last or further out?
fn in_order(functions: &[String], wanted: &[&str]) -> bool {
    let mut rest = functions.iter();
    wanted.iter().all(|w| rest.any(|f| f == w))
}

/// Is there an evaluation loop frame outside the last of `after` (by name where the build
/// has one)?
fn evaluator_outside(functions: &[String], after: &str) -> bool {
    let Some(at) = functions.iter().position(|f| f == after) else {
        return false;
    };
    functions[at..].iter().any(|f| is_evaluator_name(f, false))
}

/// What a role must show, innermost first, and how it is captured.
struct Expectation {
    role: &'static str,
    functions: &'static [&'static str],
    /// Captured asleep in a system call (else from perf samples on a CPU).
    asleep: bool,
    /// The C code runs under the evaluation loop (not in a thread C started).
    under_python: bool,
}

const EXPECTED: &[Expectation] = &[
    Expectation {
        role: "c-sleeper",
        functions: &["gn_nap", "gn_hold_sleeping"],
        asleep: true,
        under_python: true,
    },
    Expectation {
        role: "c-callback",
        functions: &["gn_nap", "gn_callback_main"],
        asleep: true,
        under_python: false,
    },
    Expectation {
        role: "c-spinner",
        functions: &["gn_burn", "gn_hold_spinning"],
        asleep: false,
        under_python: true,
    },
    Expectation {
        role: "c-releaser",
        functions: &["gn_burn", "gn_burn_free", "gn_release_spinning"],
        asleep: false,
        under_python: true,
    },
    Expectation {
        role: "c-callback",
        functions: &["gn_call_back", "gn_callback_main"],
        asleep: false,
        under_python: false,
    },
];

/// Watch the state letter of every thread of `pid` until told to stop: the letters seen.
fn watch_states(pid: i32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeSet<char>> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                break;
            };
            for task in tasks.flatten() {
                if let Ok(stat) = std::fs::read(task.path().join("stat")) {
                    if let Some(state) = gilscope::target::task::stat_state(&stat) {
                        seen.insert(state);
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        seen
    })
}

fn known_stacks(python: &Python) -> Result<Completion, Failed> {
    let dir = match build_extension(python) {
        Ok(dir) => dir,
        Err(why) if why.starts_with("no Python.h") => {
            return Ok(Completion::ignored_with(why));
        }
        Err(why) => return Err(format!("cannot build fixtures/native/gilnative.c: {why}").into()),
    };
    let dir = dir.to_string_lossy().into_owned();
    let _exclusive = common::exclusive();
    let fx = Fixture::start(
        python.path.as_path(),
        "native_frames",
        &["--module-dir", &dir],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_states(fx.pid, stop.clone());
    let result = check_roles(&fx);
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().map_err(|_| "state watcher panicked")?;
    result?;
    if seen.contains(&'t') || seen.contains(&'T') {
        return Err(format!("a thread of the target was stopped: states seen {seen:?}").into());
    }
    if seen.is_empty() {
        return Err("the state watcher read no thread".into());
    }
    Ok(Completion::Completed)
}

fn check_roles(fx: &Fixture) -> Result<(), Failed> {
    let memory = ProcessMemory::new(fx.pid);
    let mut modules = Modules::new(fx.pid, &memory, monotonic_ns())?;
    let mut symbols = Symbols::new(fx.pid);
    let mut sleepers = Sleepers::new(fx.pid);
    let mut perf = PerfStacks::new(PERF_PERIOD_NS, PERF_STACK_BYTES);
    let mut costs: Vec<(&str, Duration)> = Vec::new();
    for expected in EXPECTED {
        let tid = fx.tid(expected.role);
        if !expected.asleep {
            perf.follow(tid)?;
        }
        let deadline = Instant::now() + PATIENCE;
        let mut last = Vec::new();
        let mut captures = 0;
        let found = loop {
            if Instant::now() > deadline {
                break None;
            }
            let stack = if expected.asleep {
                std::thread::sleep(Duration::from_millis(3));
                let t = Instant::now();
                let stack = sleepers.capture(tid, &memory, &mut modules, monotonic_ns());
                costs.push(("syscall capture+unwind", t.elapsed()));
                stack
            } else {
                std::thread::sleep(Duration::from_millis(10));
                let t = Instant::now();
                perf.drain();
                let stack = perf.capture(tid, monotonic_ns(), 20_000_000, &mut modules);
                costs.push(("perf drain+unwind", t.elapsed()));
                stack
            };
            let stack = match stack {
                Ok(stack) => stack,
                Err(CaptureError::Running | CaptureError::Moved) => continue,
                Err(e) => return Err(format!("{}: {e}", expected.role).into()),
            };
            captures += 1;
            let t = Instant::now();
            let named = name_stack(&stack, &modules, &mut symbols);
            costs.push(("symbols", t.elapsed()));
            if in_order(&named.functions, expected.functions) {
                break Some(named);
            }
            last = named.lines;
        };
        let Some(named) = found else {
            return Err(format!(
                "{} never showed {:?} in {captures} stacks in {PATIENCE:?}; the last:\n  {}",
                expected.role,
                expected.functions,
                last.join("\n  ")
            )
            .into());
        };
        if std::env::var_os("GILSCOPE_TEST_SHOW").is_some() {
            eprintln!(
                "{} ({captures} stacks):\n  {}",
                expected.role,
                named.lines.join("\n  ")
            );
        }
        let outermost_c = expected.functions[expected.functions.len() - 1];
        let stripped = named.functions.iter().all(|f| !is_evaluator_name(f, false));
        if expected.under_python && !stripped && !evaluator_outside(&named.functions, outermost_c) {
            return Err(format!(
                "{}: no evaluation loop outside {outermost_c}:\n  {}",
                expected.role,
                named.lines.join("\n  ")
            )
            .into());
        }
        // A stack read whole (asleep) ends at the thread's start, or, where a function of
        // the interpreter finds its frame through a frame pointer that the kernel does not
        // show and that cannot be verified on the stack (a hot/cold split part: Debian's
        // 3.14 and 3.15), is cut there, past every C function of the fixture: never made up.
        let cut_in_interpreter = named.last_module.contains("python");
        if expected.asleep && named.end != StackEnd::Root && !cut_in_interpreter {
            return Err(format!(
                "{}: the unwind stopped short:\n  {}",
                expected.role,
                named.lines.join("\n  ")
            )
            .into());
        }
        perf.forget(tid);
    }
    if std::env::var_os("GILSCOPE_TEST_SHOW").is_some() {
        for kind in ["syscall capture+unwind", "perf drain+unwind", "symbols"] {
            let mut times: Vec<Duration> =
                costs.iter().filter(|c| c.0 == kind).map(|c| c.1).collect();
            times.sort();
            if let (Some(first), Some(median)) = (times.first(), times.get(times.len() / 2)) {
                eprintln!(
                    "cost {kind}: n={} min {first:?} median {median:?}",
                    times.len()
                );
            }
        }
        eprintln!("perf samples read {} lost {}", perf.read, perf.lost);
    }
    Ok(())
}
