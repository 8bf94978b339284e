//! Native stacks of real interpreters running the C fixture (fixtures/native/gilnative.c, built
//! here against each interpreter's headers): the known C functions, in order, above the
//! interpreter's evaluation loop, captured without ever stopping the target; and `--native`
//! recordings, dumps and reports that put them under the right Python frame and GIL state.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pythons, Fixture, Python};
use gilscope::target::memory::ProcessMemory;
use gilscope::target::native::merge::is_evaluator_name;
use gilscope::target::native::perf::PerfStacks;
use gilscope::target::native::symbols::Symbols;
use gilscope::target::native::syscall::Sleepers;
use gilscope::target::native::unwind::Modules;
use gilscope::target::native::{monotonic_ns, CaptureError, NativeStack, StackEnd};
use libtest_mimic::{Completion, Failed};

/// How long each role may take to show its known stack (its C call lasts 20 ms of every 40).
const PATIENCE: Duration = Duration::from_secs(5);
/// perf sampling period: 1,000 samples per second of CPU time per followed thread.
const PERF_PERIOD_NS: u64 = 1_000_000;
/// Stack bytes copied per perf sample.
const PERF_STACK_BYTES: u32 = 16 * 1024;

fn main() {
    // The suite takes the machine-wide test lock around each per-version trial.
    let mut suite = common::Suite::new(pythons());
    suite.every_version("known_c_functions_in_order_never_stopped", known_stacks);
    suite.every_version(
        "a_native_recording_puts_c_functions_under_their_python_frame_and_gil_state",
        merged_recording,
    );
    suite.add([free_threaded_trial()]);
    let cli: [(&str, CliTest); 4] = [
        (
            "native_json_reports_place_the_holder_in_c_and_follow_the_schema",
            native_json_report,
        ),
        (
            "native_dumps_show_c_frames_with_their_lines_and_follow_the_schema",
            native_dump,
        ),
        (
            "native_flamegraphs_and_speedscope_files_tell_native_frames_apart",
            native_drawings,
        ),
        (
            "native_top_blames_the_c_function_holding_the_gil",
            native_top,
        ),
    ];
    for (name, test) in cli {
        suite.once(name, test);
    }
    suite.run();
}

/// A test run once, with the interpreter the CLI tests use.
type CliTest = fn(&Python) -> Result<Completion, Failed>;

/// Seconds and rate of the `--native` recordings: each role's C call lasts 20 ms of every 40,
/// so a role shows its C functions at about 300 of the 600 ticks.
const RECORD_SECS: &str = "3";
const RECORD_RATE: &str = "200";
/// Least number of ticks at which a role must show its known stack: far below the ~300
/// expected, so that only a merge that does not work fails it.
const MIN_SHOWN: u64 = 20;

/// What each role of fixtures/native_frames.py must show in a `--native` recording: its
/// frames root first (Python and C) and the GIL state it is in while there.
struct Answer {
    role: &'static str,
    /// The state it shows its frames in at `MIN_SHOWN` ticks at least.
    state: &'static str,
    /// What the C code makes certain of that state there.
    rule: Rule,
    /// Root first; `python` names which of them is the Python frame.
    frames: &'static [&'static str],
    python: &'static str,
}

/// What a role's C code makes certain of its GIL state while its frames show.
enum Rule {
    /// It keeps the GIL all through its C call: it is mostly in `state` there (a tick may
    /// still read the GIL a moment before the thread took it).
    Mostly,
    /// It released the GIL for its C call: it does not hold it there, but for the ticks at
    /// the call's edges (its native stack and the GIL are read microseconds apart: 1 tick
    /// of 283 once, under load), at most [`EDGE_TICKS`] of them. Running or waiting depends
    /// on the machine's load (a preempted thread that had waited reads as waiting).
    NeverHolds,
    /// It competes for the GIL with the other roles while there: `state` at some ticks only.
    Contended,
}

/// The share of a releasing call's ticks that may read as holding: its edges. A thread
/// that did not release would hold at most of them.
const EDGE_TICKS: f64 = 0.02;

const ANSWERS: &[Answer] = &[
    Answer {
        role: "c-spinner",
        state: "hold",
        rule: Rule::Mostly,
        frames: &["in_c_spinning", "gn_hold_spinning", "gn_burn"],
        python: "in_c_spinning",
    },
    Answer {
        role: "c-sleeper",
        state: "hold",
        rule: Rule::Mostly,
        frames: &["in_c_sleeping", "gn_hold_sleeping", "gn_nap"],
        python: "in_c_sleeping",
    },
    Answer {
        role: "c-releaser",
        state: "running",
        rule: Rule::NeverHolds,
        frames: &[
            "in_c_released",
            "gn_release_spinning",
            "gn_burn_free",
            "gn_burn",
        ],
        python: "in_c_released",
    },
    Answer {
        role: "c-callback",
        state: "hold",
        rule: Rule::Contended,
        frames: &["gn_callback_main", "gn_call_back", "called_from_c"],
        python: "called_from_c",
    },
];

/// The fixture's Python functions: every other name in a stack is native, the threading
/// module's or the interpreter's.
const PYTHON_FUNCTIONS: &[&str] = &[
    "in_c_spinning",
    "in_c_sleeping",
    "in_c_released",
    "called_from_c",
];

/// The interpreter's functions that take and give up the GIL, shown in merged stacks.
const GIL_HAND_OFF: &[&str] = &[
    "take_gil",
    "drop_gil",
    "PyEval_RestoreThread",
    "PyEval_SaveThread",
    "PyEval_AcquireThread",
    "PyGILState_Ensure",
    "PyGILState_Release",
];

/// One folded stack: the thread's tid, its state, its frames' function names root first.
struct Folded {
    tid: i32,
    state: String,
    functions: Vec<String>,
    count: u64,
}

/// Folded stacks ("thread (tid);[state];frame;... count") as functions: a label is
/// "function (file:line)" or "symbol (module)".
fn parse_folded(text: &str) -> Vec<Folded> {
    text.lines()
        .filter_map(|line| {
            let (path, count) = line.rsplit_once(' ')?;
            let mut parts = path.split(';');
            let head = parts.next()?;
            let tid = head
                .rsplit_once('(')?
                .1
                .trim_end_matches(')')
                .parse()
                .ok()?;
            let state = parts.next()?.trim_matches(['[', ']']).to_string();
            let functions = parts
                .map(|label| match label.rsplit_once(" (") {
                    Some((function, _)) => function.to_string(),
                    None => label.to_string(),
                })
                .collect();
            Some(Folded {
                tid,
                state,
                functions,
                count: count.parse().ok()?,
            })
        })
        .collect()
}

/// Are the answer's frames that `functions` holds in the answer's order, each once, with
/// none of the fixture's other Python functions among them, and is the Python caller of a C
/// function there whenever that function is?
fn in_place(functions: &[String], answer: &Answer) -> bool {
    let positions: Vec<Option<usize>> = answer
        .frames
        .iter()
        .map(|frame| functions.iter().position(|f| f == frame))
        .collect();
    let present: Vec<usize> = positions.iter().flatten().copied().collect();
    if !present.windows(2).all(|w| w[0] < w[1]) {
        return false;
    }
    let once = answer
        .frames
        .iter()
        .all(|frame| functions.iter().filter(|f| f == frame).count() <= 1);
    let (Some(&first), Some(&last)) = (present.first(), present.last()) else {
        return true;
    };
    let foreign = functions[first..=last]
        .iter()
        .any(|f| PYTHON_FUNCTIONS.contains(&f.as_str()) && !answer.frames.contains(&f.as_str()));
    let python = answer.frames.iter().position(|f| *f == answer.python);
    // A C function called from Python has its caller below it.
    let caller_missing = python
        .is_some_and(|p| positions[p].is_none() && positions[p + 1..].iter().any(Option::is_some));
    once && !foreign && !caller_missing
}

/// Does `functions` hold `frames` in this order, with no Python frame of the fixture between
/// the answer's Python frame and the native frames next to it?
fn shows(functions: &[String], answer: &Answer) -> bool {
    let mut at = Vec::new();
    let mut from = 0;
    for frame in answer.frames {
        match functions[from..].iter().position(|f| f == frame) {
            Some(i) => {
                at.push(from + i);
                from += i + 1;
            }
            None => return false,
        }
    }
    let python = answer.frames.iter().position(|f| *f == answer.python);
    let Some(python) = python else {
        return false;
    };
    // The native frame next to the Python one (after it, or before it for a C thread
    // calling into Python): nothing of the fixture's Python between them.
    let (low, high) = match python {
        0 => (at[0], at[1]),
        p => (at[p - 1], at[p]),
    };
    !functions[low + 1..high]
        .iter()
        .any(|f| PYTHON_FUNCTIONS.contains(&f.as_str()))
}

/// Start the fixture with the C extension built for `python`, and watch its threads' states.
fn native_fixture(python: &Python) -> Result<Option<Fixture>, Failed> {
    let dir = match build_extension(python) {
        Ok(dir) => dir,
        Err(why) if why.starts_with("no Python.h") => return Ok(None),
        Err(why) => return Err(format!("cannot build fixtures/native/gilnative.c: {why}").into()),
    };
    let dir = dir.to_string_lossy().into_owned();
    Ok(Some(Fixture::start(
        python.path.as_path(),
        "native_frames",
        &["--module-dir", &dir],
    )?))
}

fn merged_recording(python: &Python) -> Result<Completion, Failed> {
    recording_known_answers(python, "hold")
}

/// One free-threaded build, the newest found: its frames and evaluation calls are those of
/// the GIL build of its version (tested above); what it adds is that no thread holds a GIL,
/// so a thread in C with its thread state attached shows as `attached`, and the extension
/// must leave the GIL off (the fixture says it needs none).
fn free_threaded_trial() -> libtest_mimic::Trial {
    let mut pythons = common::free_threaded_pythons();
    pythons.found.sort_by(|a, b| b.version.cmp(&a.version));
    pythons.found.truncate(1);
    if !pythons.found.is_empty() {
        pythons.missing.clear();
    }
    pythons.missing.truncate(1);
    // The full matrix's second pass (GILSCOPE_MATRIX=rest) has run it already.
    let pythons = common::every(&pythons);
    common::per_interpreter(
        &pythons,
        "a_free_threaded_native_recording_puts_c_functions_under_their_python_frame",
        |python| {
            let _exclusive = common::exclusive();
            recording_known_answers(python, "attached")
        },
    )
    .into_iter()
    .next()
    .expect("one trial")
}

/// The known answers of a `--native` recording of the fixture; `holding` is the state of a
/// thread that keeps the GIL (or, free-threaded, its attachment) through its C call.
fn recording_known_answers(python: &Python, holding: &str) -> Result<Completion, Failed> {
    let Some(fx) = native_fixture(python)? else {
        return Ok(Completion::ignored_with(
            "no Python.h for this interpreter (Debian builds: libpython3.X-dev unpacked beside them)",
        ));
    };
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("native-{}.folded", python.label));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_states(fx.pid, stop.clone());
    let recorded = common::gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--native",
        "-d",
        RECORD_SECS,
        "-r",
        RECORD_RATE,
        "-f",
        "collapsed",
        "-o",
        &out.to_string_lossy(),
    ]);
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().map_err(|_| "state watcher panicked")?;
    recorded?;
    if seen.contains(&'t') || seen.contains(&'T') {
        return Err(format!("a thread of the target was stopped: states seen {seen:?}").into());
    }
    let stacks = parse_folded(&std::fs::read_to_string(&out)?);
    for answer in ANSWERS {
        check_answer(&fx, &stacks, answer, holding)?;
    }
    Ok(Completion::Completed)
}

/// A role's known stack shows at many ticks, in its GIL state mostly, and its C functions are
/// never anywhere but where they belong.
fn check_answer(
    fx: &Fixture,
    stacks: &[Folded],
    answer: &Answer,
    holding: &str,
) -> Result<(), Failed> {
    let state = match answer.state {
        "hold" => holding,
        other => other,
    };
    let tid = fx.tid(answer.role);
    let mine: Vec<&Folded> = stacks.iter().filter(|s| s.tid == tid).collect();
    let describe = || {
        let mut heaviest: Vec<&&Folded> = mine.iter().collect();
        heaviest.sort_by_key(|s| std::cmp::Reverse(s.count));
        heaviest
            .iter()
            .take(8)
            .map(|s| format!("{} [{}] {}", s.count, s.state, s.functions.join(";")))
            .collect::<Vec<_>>()
            .join("\n  ")
    };
    // The C function only this role calls (gn_burn and gn_nap are shared).
    let own = answer.frames[1];
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    let mut shown = 0;
    for stack in &mine {
        if !in_place(&stack.functions, answer) {
            return Err(format!(
                "{}: {:?} out of place in [{}] {}",
                answer.role,
                answer.frames,
                stack.state,
                stack.functions.join(";")
            )
            .into());
        }
        // In its code, not in the GIL's hand-off (a callback waiting to get back in).
        let handing_over = stack
            .functions
            .iter()
            .any(|f| GIL_HAND_OFF.contains(&f.as_str()));
        if !shows(&stack.functions, answer) || handing_over {
            continue;
        }
        *by_state.entry(&stack.state).or_default() += stack.count;
        if stack.state == state {
            shown += stack.count;
        }
    }
    // No other thread shows this role's own C function.
    for stack in stacks.iter().filter(|s| s.tid != tid) {
        if stack.functions.iter().any(|f| f == own) {
            return Err(format!(
                "{own} ({}) in another thread's stack: [{}] {}",
                answer.role,
                stack.state,
                stack.functions.join(";")
            )
            .into());
        }
    }
    if shown < MIN_SHOWN {
        return Err(format!(
            "{} showed {:?} in {} at {shown} ticks only; its heaviest stacks:\n  {}",
            answer.role,
            answer.frames,
            state,
            describe()
        )
        .into());
    }
    let dominant = by_state.iter().max_by_key(|(_, n)| **n).map(|(s, _)| *s);
    let broken = match answer.rule {
        Rule::Mostly => dominant != Some(state),
        Rule::NeverHolds => {
            let all: usize = by_state.values().map(|&n| n as usize).sum();
            by_state.get(holding).map_or(0, |&n| n as usize) as f64 > EDGE_TICKS * all as f64
        }
        Rule::Contended => false,
    };
    if broken {
        return Err(format!(
            "{} in {own}: states {by_state:?}, expected {} ({})",
            answer.role,
            state,
            match answer.rule {
                Rule::Mostly => "mostly",
                _ => "and never hold",
            }
        )
        .into());
    }
    if std::env::var_os("GILSCOPE_TEST_SHOW").is_some() {
        eprintln!("{}: {by_state:?}\n  {}", answer.role, describe());
    }
    Ok(())
}

fn native_json_report(python: &Python) -> Result<Completion, Failed> {
    let Some(fx) = native_fixture(python)? else {
        return Ok(Completion::ignored_with(
            "no Python.h for the CLI interpreter",
        ));
    };
    let out = common::gilscope_ok(&[
        "record",
        "--pid",
        &fx.pid.to_string(),
        "--native",
        "-d",
        "2",
        "-r",
        "200",
        "-f",
        "json",
    ])?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    common::matches_documented_schema(&report, "docs/JSON_SCHEMA.md")?;
    if report["sampler"]["native"] != "perf" {
        return Err(format!("sampler.native is {}", report["sampler"]["native"]).into());
    }
    let sleeper = common::thread_row(&report, fx.tid("c-sleeper")).ok_or("no c-sleeper row")?;
    let top = &sleeper["top_hold"][0];
    let module = top["module"].as_str().unwrap_or("");
    if top["kind"] != "native" || top["function"] != "gn_nap" || !module.starts_with("gilnative") {
        return Err(format!("c-sleeper's first hold location: {top}").into());
    }
    if top["called_from"]["function"] != "in_c_sleeping" || top["called_from"]["kind"] != "python" {
        return Err(format!("gn_nap called from {}", top["called_from"]).into());
    }
    // Its blame stack has the C frames above the Python one.
    let blamed = report["blame"]["top"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["holder_native_id"] == fx.tid("c-sleeper"))
        .ok_or("c-sleeper is not blamed")?;
    let kinds: Vec<(String, String)> = blamed["stack"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("").to_string(),
                f["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let at = |name: &str| kinds.iter().position(|(f, _)| f == name);
    match (at("in_c_sleeping"), at("gn_hold_sleeping"), at("gn_nap")) {
        (Some(p), Some(h), Some(n)) if p < h && h < n && kinds[n].1 == "native" => {}
        _ => return Err(format!("blame stack of c-sleeper: {kinds:?}").into()),
    }
    Ok(Completion::Completed)
}

fn native_dump(python: &Python) -> Result<Completion, Failed> {
    let Some(fx) = native_fixture(python)? else {
        return Ok(Completion::ignored_with(
            "no Python.h for the CLI interpreter",
        ));
    };
    let pid = fx.pid.to_string();
    // The sleeper holds the GIL in gn_nap half of the time: a few dumps find it there.
    let mut last = String::new();
    for _ in 0..20 {
        let out = common::gilscope_ok(&["dump", "--pid", &pid, "--native", "--json"])?;
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        common::matches_documented_schema(&dump, "docs/DUMP_SCHEMA.md")?;
        let sleeper = dump["threads"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["native_id"] == fx.tid("c-sleeper"))
            .ok_or("no c-sleeper in the dump")?;
        let stack = sleeper["stack"].as_array().cloned().unwrap_or_default();
        let nap = stack.iter().position(|f| f["function"] == "gn_nap");
        let caller = stack.iter().position(|f| f["function"] == "in_c_sleeping");
        if let (Some(nap), Some(caller), "hold") =
            (nap, caller, sleeper["state"].as_str().unwrap_or(""))
        {
            // Innermost first: the C frame before its Python caller, with its source line.
            let frame = &stack[nap];
            let file = frame["file"].as_str().unwrap_or("");
            if nap > caller || frame["kind"] != "native" || !file.ends_with("gilnative.c") {
                return Err(format!("c-sleeper's stack: {stack:?}").into());
            }
            if frame["line"].as_u64().unwrap_or(0) == 0 {
                return Err(format!("gn_nap without a line: {frame}").into());
            }
            // The text dump shows the same frame with its module and line (at a dump that
            // finds the sleeper in gn_nap again).
            let mut text = String::new();
            for _ in 0..20 {
                let out = common::gilscope_ok(&["dump", "--pid", &pid, "--native"])?;
                text = common::stdout_of(&out);
                if text.contains("gn_nap (gilnative") {
                    break;
                }
            }
            let nap = text.lines().find(|l| l.contains("gn_nap (gilnative"));
            if !nap.is_some_and(|l| l.contains("gilnative.c:")) {
                return Err(format!("text dumps without gn_nap's module and line:\n{text}").into());
            }
            return Ok(Completion::Completed);
        }
        last = format!("{} {stack:?}", sleeper["state"]);
    }
    Err(format!("20 dumps never caught c-sleeper holding in gn_nap; the last: {last}").into())
}

fn native_drawings(python: &Python) -> Result<Completion, Failed> {
    let Some(fx) = native_fixture(python)? else {
        return Ok(Completion::ignored_with(
            "no Python.h for the CLI interpreter",
        ));
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let svg = dir.join("native.svg");
    let speedscope = dir.join("native.speedscope.json");
    for out in [&svg, &speedscope] {
        common::gilscope_ok(&[
            "record",
            "--pid",
            &fx.pid.to_string(),
            "--native",
            "-d",
            "1.5",
            "-r",
            "200",
            "-o",
            &out.to_string_lossy(),
        ])?;
    }
    // Native frames are filled with the native code's pale green (green the largest
    // component, palette.rs); the program's Python frames with its pale sand (red the largest).
    let svg = std::fs::read_to_string(&svg)?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, options)?;
    let fill_of = |prefix: &str| -> Option<(u8, u8, u8)> {
        let group = doc.descendants().find(|n| {
            n.has_tag_name("g")
                && n.children().any(|c| {
                    c.has_tag_name("title") && c.text().is_some_and(|t| t.starts_with(prefix))
                })
        })?;
        let fill = group
            .children()
            .find(|c| c.has_tag_name("rect"))?
            .attribute("fill")?;
        let rgb: Vec<u8> = fill
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        Some((*rgb.first()?, *rgb.get(1)?, *rgb.get(2)?))
    };
    let (r, g, b) = fill_of("gn_nap (gilnative").ok_or("no gn_nap frame in the flamegraph")?;
    if !(g > r && g > b) {
        return Err(format!("gn_nap is drawn rgb({r},{g},{b}), not in green").into());
    }
    let (r, g, _) = fill_of("in_c_sleeping (").ok_or("no in_c_sleeping frame")?;
    if g >= r {
        return Err(format!("in_c_sleeping is drawn like a native frame (r {r}, g {g})").into());
    }
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&speedscope)?)?;
    let frames = doc["shared"]["frames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // A native frame with a source line is named by its function, with its file and line.
    let nap = frames
        .iter()
        .find(|f| f["name"] == "gn_nap")
        .ok_or("no gn_nap frame in the speedscope file")?;
    let file = nap["file"].as_str().unwrap_or("");
    if !file.ends_with("gilnative.c") || nap["line"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("speedscope's gn_nap: {nap}").into());
    }
    Ok(Completion::Completed)
}

/// `top --native` into a pipe: a line per second, whose blame names the C function the
/// holder kept the GIL in and the Python frame that called it (the spinner and the sleeper
/// hold it in C about half of the time each; the others wait on them).
fn native_top(python: &Python) -> Result<Completion, Failed> {
    use std::io::BufRead;
    let Some(fx) = native_fixture(python)? else {
        return Ok(Completion::ignored_with(
            "no Python.h for the CLI interpreter",
        ));
    };
    let mut child = std::process::Command::new(common::gilscope_bin())
        .args([
            "top",
            "--pid",
            &fx.pid.to_string(),
            "--native",
            "--rate",
            "200",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let expected = [
        format!(
            "waited on c-spinner ({}) in gn_burn (gilnative",
            fx.tid("c-spinner")
        ),
        format!(
            "waited on c-sleeper ({}) in gn_nap (gilnative",
            fx.tid("c-sleeper")
        ),
    ];
    let mut lines = Vec::new();
    let mut found = None;
    for _ in 0..5 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                if let Some(e) = expected.iter().find(|e| line.contains(e.as_str())) {
                    found = Some((e.clone(), line.clone()));
                }
                lines.push(line);
                if found.is_some() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let Some((expected, line)) = found else {
        return Err(format!(
            "no line of top --native blames the C function holding the GIL:\n  {}",
            lines.join("\n  ")
        )
        .into());
    };
    // The C function is placed under the Python frame it was called from.
    let caller = if expected.contains("gn_burn") {
        "called from in_c_spinning ("
    } else {
        "called from in_c_sleeping ("
    };
    if !line.contains(caller) {
        return Err(format!("`{caller}` not in: {line}").into());
    }
    Ok(Completion::Completed)
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
                let now = monotonic_ns();
                perf.drain(now);
                let stack = perf.capture(tid, now, 20_000_000, &mut modules);
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
