//! `gilscope dump --locals` end to end: known variables of every kind on every interpreter, a
//! value changing fast, the values py-spy shows; and `dump --sample`'s findings on three hangs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{gilscope_ok, stdout_of, Fixture, Python, Pythons};

/// Seconds `dump --sample` records in the hang tests (the "dump --sample 2").
const SAMPLE_S: &str = "2";
/// Dumps of the fast-changing variables.
const CHANGING_DUMPS: usize = 20;
/// A state "for the whole sample", as the findings define it (src/formats/hangs.rs).
const WHOLE: f64 = 0.95;

/// A test run on one interpreter: its outcome, or a completion that says why it was skipped.
type ReadTest = fn(&Python) -> Result<Completion, Failed>;
/// A hang test run on one interpreter.
type HangTest = fn(&Python) -> Result<(), Failed>;

fn main() {
    let pythons = common::pythons();
    let free_threaded = common::free_threaded_pythons();
    let everything = Pythons {
        found: pythons
            .found
            .iter()
            .chain(&free_threaded.found)
            .cloned()
            .collect(),
        missing: pythons
            .missing
            .iter()
            .chain(&free_threaded.missing)
            .cloned()
            .collect(),
    };
    let mut trials = Vec::new();
    let reads: [(&str, ReadTest); 3] = [
        ("variables_of_every_kind_read_back", every_kind),
        (
            "a_value_changing_fast_is_read_whole_or_said_to_change",
            changing,
        ),
        ("variables_agree_with_py_spy", agree_with_py_spy),
    ];
    for (name, test) in reads {
        trials.extend(common::per_interpreter(&everything, name, test));
    }
    trials.push(common::on_cli_python(
        &pythons,
        "json_with_variables_matches_the_documented_schema",
        |python| schema(python).map(|()| Completion::Completed),
    ));
    let hangs: [(&str, HangTest); 3] = [
        ("a_thread_keeping_the_gil_asleep_is_named", asleep),
        ("a_deadlock_on_locks_names_each_threads_frame", deadlock),
        ("a_waiter_behind_a_stopped_holder_is_named", stopped),
    ];
    // Findings are drawn from the sample's figures and the snapshot, whatever the version
    // (what each version's GIL and stacks read as is tested on every one elsewhere): one
    // interpreter, which also takes the lock of the tests that measure GIL time.
    for (name, test) in hangs {
        trials.push(common::on_cli_python(&pythons, name, move |python| {
            common::unless_host_steals(|| Ok(common::steal_measured(|| test(python))))
        }));
    }
    common::Suite::run_trials(trials);
}

/// `gilscope dump --json` of `pid` with `extra` arguments, parsed.
fn dump_json(pid: i32, extra: &[&str]) -> Result<Value, Failed> {
    let pid = pid.to_string();
    let mut args = vec!["dump", "--pid", &pid, "--json"];
    args.extend_from_slice(extra);
    let out = gilscope_ok(&args)?;
    Ok(serde_json::from_str(&stdout_of(&out))?)
}

fn thread_of(dump: &Value, tid: i32) -> Result<&Value, Failed> {
    dump["threads"]
        .as_array()
        .and_then(|threads| {
            threads
                .iter()
                .find(|t| t["native_id"].as_i64() == Some(tid as i64))
        })
        .ok_or_else(|| format!("no thread {tid} in the dump").into())
}

/// The frame of `thread` whose function is `function` or ends in `.function`.
fn frame_of<'a>(thread: &'a Value, function: &str) -> Result<&'a Value, Failed> {
    let dotted = format!(".{function}");
    thread["stack"]
        .as_array()
        .and_then(|stack| {
            stack.iter().find(|f| {
                f["function"]
                    .as_str()
                    .is_some_and(|name| name == function || name.ends_with(&dotted))
            })
        })
        .ok_or_else(|| format!("no frame {function} in {}", thread["stack"]).into())
}

/// A frame's variables by name.
fn variables(frame: &Value) -> HashMap<String, &Value> {
    frame["variables"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|v| (v["name"].as_str().unwrap_or("").to_string(), v))
                .collect()
        })
        .unwrap_or_default()
}

/// The version's minor number ("3.12.1" -> 12).
fn minor(python: &Python) -> u32 {
    python
        .version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn every_kind(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "locals", &["--duration", "60"])?;
    // The keeper announces itself before it has built its variables (a list of a million
    // items takes a while on a loaded machine, longer on free-threaded builds): dump until
    // it waits in `waiter`, for 30 s at most.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let dump = loop {
        let dump = dump_json(fx.pid, &["--locals"])?;
        let waiting = thread_of(&dump, fx.tid("keeper"))
            .ok()
            .is_some_and(|keeper| frame_of(keeper, "waiter").is_ok());
        if waiting || std::time::Instant::now() > deadline {
            break dump;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let keeper = thread_of(&dump, fx.tid("keeper"))?;
    if keeper["variables"] != "read" {
        return Err(format!("keeper's variables: {}", keeper["variables"]).into());
    }
    let keep = variables(frame_of(keeper, "keep")?);
    // (name, kind, type, repr); kind None where versions differ.
    let widget_repr = keep
        .get("widget")
        .and_then(|w| w["address"].as_str())
        .map(|addr| format!("<Widget at {addr}>"))
        .unwrap_or_default();
    let big = "1267650600228229401496703205376";
    let expected: Vec<(&str, Option<&str>, &str, String)> = vec![
        // A cell argument: the argument itself from 3.11 on, its cell before.
        ("number", None, "int", "7".into()),
        ("text", Some("argument"), "str", "'seven'".into()),
        ("rest", Some("argument"), "tuple", "('extra', 8)".into()),
        ("flag", Some("argument"), "bool", "False".into()),
        (
            "options",
            Some("argument"),
            "dict",
            "{'colour': 'blue'}".into(),
        ),
        ("none", Some("local"), "NoneType", "None".into()),
        ("yes", Some("local"), "bool", "True".into()),
        ("small", Some("local"), "int", "-42".into()),
        ("big", Some("cell"), "int", big.into()),
        ("huge", Some("local"), "int", "<int of 56148 bits>".into()),
        ("ratio", Some("local"), "float", "0.1".into()),
        ("tiny", Some("local"), "float", "1e-05".into()),
        (
            "long_text",
            Some("local"),
            "str",
            format!("'{}'... (10000 characters)", "0123456789".repeat(12)),
        ),
        ("unicode", Some("local"), "str", "'données 数据 🐍'".into()),
        (
            "raw",
            Some("local"),
            "bytes",
            "b\"\\x00\\xffbytes'\"".into(),
        ),
        ("pair", Some("local"), "tuple", "(1, 'two')".into()),
        ("single", Some("local"), "tuple", "(1,)".into()),
        (
            "items",
            Some("local"),
            "list",
            "[0, 1, 2, 3, 4, ...] (1000000 items)".into(),
        ),
        (
            "mapping",
            Some("local"),
            "dict",
            "{'a': 1, 'b': [1, 2]}".into(),
        ),
        ("members", Some("local"), "set", "{3}".into()),
        (
            "frozen",
            Some("local"),
            "frozenset",
            "frozenset({'x'})".into(),
        ),
        ("empty_set", Some("local"), "set", "set()".into()),
        (
            "nested",
            Some("local"),
            "list",
            "[[[<list, 1 item>]]]".into(),
        ),
        ("recursive", Some("local"), "list", "[[...]]".into()),
        (
            "recursive_dict",
            Some("local"),
            "dict",
            "{'self': {...}}".into(),
        ),
        ("widget", Some("local"), "Widget", widget_repr),
        ("données", Some("local"), "str", "'non-ASCII name'".into()),
    ];
    let mut wrong = Vec::new();
    for (name, kind, ty, repr) in &expected {
        let Some(v) = keep.get(*name) else {
            wrong.push(format!("{name}: missing"));
            continue;
        };
        let kind_ok = match kind {
            Some(kind) => v["kind"] == *kind,
            None => v["kind"] == "argument" || v["kind"] == "cell",
        };
        if !kind_ok || v["type"] != *ty || v["repr"] != repr.as_str() || v["changed"] != false {
            wrong.push(format!("{name}: {v}, expected {kind:?} {ty} {repr}"));
        }
    }
    for (name, length) in [
        ("long_text", 10_000),
        ("long_bytes", 2048),
        ("items", 1_000_000),
    ] {
        if keep.get(name).map(|v| v["length"].as_u64()) != Some(Some(length)) {
            wrong.push(format!("{name}: length is not {length}"));
        }
    }
    let waiter = variables(frame_of(keeper, "waiter")?);
    for (name, repr) in [("number", "7"), ("big", big)] {
        match waiter.get(name) {
            Some(v) if v["kind"] == "free" && v["repr"] == repr => {}
            other => wrong.push(format!("waiter's free variable {name}: {other:?}")),
        }
    }
    let event = |vars: &HashMap<String, &Value>| vars.get("event").map(|v| v["repr"].clone());
    if event(&waiter).is_none() || event(&waiter) != event(&keep) {
        wrong.push("keep's cell `event` and waiter's free `event` differ".into());
    }
    // A name no source could give, set through code.replace (3.8+): exact in JSON,
    // escaped in text.
    let hostile_name = "evil\u{1b}[2J\u{202e}name\n";
    if minor(python) >= 8 {
        let hostile = variables(frame_of(thread_of(&dump, fx.tid("hostile"))?, "hostile")?);
        if hostile.get(hostile_name).map(|v| v["repr"].clone()) != Some("'hostile'".into()) {
            wrong.push(format!("hostile name: {:?}", hostile.keys()));
        }
    }
    if !wrong.is_empty() {
        return Err(wrong.join("\n").into());
    }
    let text = stdout_of(&gilscope_ok(&[
        "dump",
        "--pid",
        &fx.pid.to_string(),
        "--locals",
    ])?);
    for line in [
        "        local    items = [0, 1, 2, 3, 4, ...] (1000000 items)",
        "        local    recursive = [[...]]",
        "        local    données = 'non-ASCII name'",
    ] {
        if !text.lines().any(|l| l == line) {
            return Err(format!("no line {line:?} in the text dump").into());
        }
    }
    if minor(python) >= 8
        && !text.contains("        local    evil\\x1b[2J\\u202ename\\n = 'hostile'")
    {
        return Err("the hostile name is not escaped in text".into());
    }
    if text.contains('\u{1b}') || text.contains('\u{202e}') {
        return Err("a raw escape or bidi character reached the text dump".into());
    }
    Ok(Completion::Completed)
}

/// The counter thread changes `n` and `churn` as fast as it can: each dump shows a whole
/// value (an int that only grows from dump to dump; a run of consecutive ints) or says it
/// changed, never a value pieced together.
fn changing(python: &Python) -> Result<Completion, Failed> {
    let fx = Fixture::start(&python.path, "locals", &["--duration", "60"])?;
    let mut last_n = 0;
    let mut whole = 0;
    for _ in 0..CHANGING_DUMPS {
        let dump = dump_json(fx.pid, &["--locals"])?;
        let counter = thread_of(&dump, fx.tid("counter"))?;
        if counter["variables"] != "read" {
            continue;
        }
        let vars = variables(frame_of(counter, "counter")?);
        let (Some(n), Some(churn)) = (vars.get("n"), vars.get("churn")) else {
            return Err(format!("counter's variables: {:?}", vars.keys()).into());
        };
        for v in [n, churn] {
            let changed = v["changed"] == true;
            if changed != (v["repr"] == "(changed while being read)")
                || changed != v["type"].is_null()
            {
                return Err(format!("a changed value must say so, and only then: {v}").into());
            }
        }
        if n["changed"] == false {
            let value: u64 = n["repr"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .ok_or_else(|| format!("n is not an int: {n}"))?;
            if value < last_n {
                return Err(format!("n went back from {last_n} to {value}").into());
            }
            last_n = value;
            whole += 1;
        }
        if churn["changed"] == false {
            let repr = churn["repr"].as_str().unwrap_or("");
            let length = churn["length"].as_u64().unwrap_or(0);
            let items: Vec<u64> = repr
                .trim_start_matches('[')
                .split(", ")
                .take_while(|item| item.chars().all(|c| c.is_ascii_digit()) && !item.is_empty())
                .filter_map(|item| item.parse().ok())
                .collect();
            let consecutive = items.windows(2).all(|w| w[1] == w[0] + 1);
            if !(1..=101).contains(&length) || items.is_empty() || !consecutive {
                return Err(format!("churn is not a run of consecutive ints: {churn}").into());
            }
        }
    }
    if whole == 0 {
        return Ok(Completion::ignored_with(format!(
            "n changed under every read in {CHANGING_DUMPS} dumps: nothing to check"
        )));
    }
    Ok(Completion::Completed)
}

/// py-spy, installed from PyPI once under this test's cache; None (and why) if it cannot be.
fn py_spy() -> &'static Result<PathBuf, String> {
    static PY_SPY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY_SPY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-spy");
        let binary = dir.join("bin").join("py-spy");
        if binary.exists() {
            return Ok(binary);
        }
        let pythons = common::pythons();
        let python = common::cli_python(&pythons).ok_or("no Python to run pip")?;
        let out = Command::new(&python.path)
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .arg("py-spy")
            .output()
            .map_err(|e| format!("pip: {e}"))?;
        if !out.status.success() || !binary.exists() {
            return Err(format!(
                "pip install py-spy failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Ok(binary)
    })
}

/// A py-spy repr and ours, for the values both show in a comparable form: None, bools,
/// ints, floats, plain strings and `<Type at 0x...>`; None for the rest (py-spy shows cells,
/// bytes and sets by address, long values cut in its own way).
fn comparable(py_spy: &str, ours: &str) -> Option<bool> {
    if matches!(py_spy, "None" | "True" | "False") {
        return Some(py_spy == ours);
    }
    if let (Ok(a), Ok(b)) = (py_spy.parse::<i128>(), ours.parse::<i128>()) {
        return Some(a == b);
    }
    if let (Ok(a), Ok(b)) = (py_spy.parse::<f64>(), ours.parse::<f64>()) {
        return Some(a == b);
    }
    let plain = |s: &str| !s.contains('\\') && !s.contains("...");
    if let Some(text) = py_spy.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        let mine = ours.strip_prefix('\'').and_then(|s| s.strip_suffix('\''))?;
        return (plain(text) && plain(mine) && !text.contains('"')).then_some(text == mine);
    }
    let object =
        py_spy.starts_with('<') && py_spy.contains(" at 0x") && !py_spy.starts_with("<cell");
    let by_address_only = ["<bytes ", "<set ", "<frozenset "];
    (object && !by_address_only.iter().any(|p| py_spy.starts_with(p))).then_some(py_spy == ours)
}

fn agree_with_py_spy(python: &Python) -> Result<Completion, Failed> {
    let binary = match py_spy() {
        Ok(binary) => binary,
        Err(why) => return Ok(Completion::ignored_with(why.clone())),
    };
    let fx = Fixture::start(&python.path, "locals", &["--duration", "60"])?;
    let ours = dump_json(fx.pid, &["--locals"])?;
    // --nonblocking: py-spy must not stop the target either.
    let out = Command::new(binary)
        .args(["dump", "--locals", "--json", "--nonblocking", "--pid"])
        .arg(fx.pid.to_string())
        .output()?;
    if !out.status.success() {
        return Ok(Completion::ignored_with(format!(
            "py-spy cannot dump this interpreter: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        )));
    }
    let theirs: Value = serde_json::from_slice(&out.stdout)?;
    let mut compared = 0;
    let mut differ = Vec::new();
    for role in ["keeper", "hostile"] {
        let tid = fx.tid(role);
        let mine = thread_of(&ours, tid)?;
        let Some(their) = theirs.as_array().and_then(|threads| {
            threads
                .iter()
                // Without native ids (before 3.11), by the Python name the fixture gave.
                .find(|t| {
                    t["os_thread_id"].as_i64() == Some(tid as i64) || t["thread_name"] == role
                })
        }) else {
            return Err(format!("py-spy shows no thread {tid}").into());
        };
        // Both innermost first: frames side by side, where they name the same function
        // (py-spy's names are unqualified before 3.11).
        let my_stack = mine["stack"].as_array().cloned().unwrap_or_default();
        for (frame, my_frame) in their["frames"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(&my_stack)
        {
            let (Some(function), Some(my_function)) =
                (frame["name"].as_str(), my_frame["function"].as_str())
            else {
                continue;
            };
            if function != my_function && !my_function.ends_with(&format!(".{function}")) {
                continue;
            }
            let my_vars = variables(my_frame);
            for local in frame["locals"].as_array().into_iter().flatten() {
                let (Some(name), Some(repr)) = (local["name"].as_str(), local["repr"].as_str())
                else {
                    continue;
                };
                let Some(my) = my_vars.get(name).and_then(|v| v["repr"].as_str()) else {
                    continue;
                };
                match comparable(repr, my) {
                    Some(true) => compared += 1,
                    Some(false) => {
                        differ.push(format!("{function} {name}: py-spy {repr}, we {my}"))
                    }
                    None => {}
                }
            }
        }
    }
    if !differ.is_empty() {
        return Err(differ.join("\n").into());
    }
    if compared < 10 {
        return Err(format!("only {compared} values compared with py-spy").into());
    }
    Ok(Completion::Completed)
}

fn schema(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "locals", &["--duration", "60"])?;
    let dump = dump_json(fx.pid, &["--locals", "--sample", "0.5"])?;
    common::matches_documented_schema(&dump, "docs/DUMP_SCHEMA.md")
}

/// The findings of kind `kind` in a dump.
fn findings<'a>(dump: &'a Value, kind: &str) -> Vec<&'a Value> {
    dump["sample"]["findings"]
        .as_array()
        .map(|all| all.iter().filter(|f| f["kind"] == kind).collect())
        .unwrap_or_default()
}

/// The thread a finding names with `tid`.
fn named(finding: &Value, tid: i32) -> Option<&Value> {
    finding["threads"]
        .as_array()?
        .iter()
        .find(|t| t["native_id"].as_i64() == Some(tid as i64))
}

/// x86_64 system call numbers: nanosleep, clock_nanosleep; futex.
const SLEEPS: [i64; 2] = [35, 230];
const FUTEX: [i64; 1] = [202];

/// Wait (up to 10 s) until each thread is blocked in one of its system calls
/// (/proc/PID/task/TID/syscall), seen so twice 20 ms apart.
fn settled(pid: i32, threads: &[(i32, &[i64])]) -> Result<(), Failed> {
    let blocked = || {
        threads.iter().all(|(tid, calls)| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
                .is_some_and(|n| calls.contains(&n))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = 0;
    while seen < 2 {
        if std::time::Instant::now() > deadline {
            return Err(format!("threads {threads:?} of {pid} never all blocked").into());
        }
        seen = if blocked() { seen + 1 } else { 0 };
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

fn innermost_function(thread: &Value) -> String {
    thread["frame"]["function"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn asleep(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(
        &python.path,
        "hangs",
        &["--case", "asleep", "--duration", "60"],
    )?;
    // The fixture announces itself before the sleeper has taken the GIL (printing needs
    // it): the sample starts once the sleeper sleeps and the others block on the GIL, not
    // while a loaded host is still waking them.
    settled(
        fx.pid,
        &[(fx.tid("sleeper"), &SLEEPS), (fx.tid("main"), &FUTEX)],
    )?;
    settled(fx.pid, &[(fx.tid("worker"), &FUTEX)])?;
    let dump = dump_json(fx.pid, &["--sample", SAMPLE_S])?;
    let found = findings(&dump, "gil_held_asleep");
    let [finding] = found.as_slice() else {
        return Err(format!("expected one gil_held_asleep finding: {}", dump["sample"]).into());
    };
    let sleeper = named(finding, fx.tid("sleeper")).ok_or("the sleeper is not named")?;
    if sleeper["role"] != "holder"
        || sleeper["share"].as_f64().unwrap_or(0.0) < WHOLE
        || !innermost_function(sleeper).ends_with("sleep_keeping_the_gil")
        || !matches!(
            sleeper["syscall"].as_str(),
            Some("clock_nanosleep" | "nanosleep")
        )
    {
        return Err(format!("the sleeper as named: {sleeper}").into());
    }
    if dump["target"]["wait_measured"] == true {
        for role in ["worker", "main"] {
            let waiter = named(finding, fx.tid(role)).ok_or(format!("{role} is not named"))?;
            if waiter["role"] != "waiter" || waiter["share"].as_f64().unwrap_or(0.0) < WHOLE {
                return Err(format!("{role} as named: {waiter}").into());
            }
        }
    }
    let text = finding["text"].as_str().unwrap_or("");
    if !text.contains("ctypes.PyDLL") || !text.contains("sleep_keeping_the_gil") {
        return Err(format!("finding: {text}").into());
    }
    Ok(())
}

fn deadlock(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(
        &python.path,
        "hangs",
        &["--case", "deadlock", "--duration", "60"],
    )?;
    let dump = dump_json(fx.pid, &["--sample", SAMPLE_S])?;
    let found = findings(&dump, "lock_deadlock");
    let [finding] = found.as_slice() else {
        return Err(format!("expected one lock_deadlock finding: {}", dump["sample"]).into());
    };
    for (role, function) in [("left", "take"), ("right", "take"), ("main", "join")] {
        let thread = named(finding, fx.tid(role)).ok_or(format!("{role} is not named"))?;
        let innermost = innermost_function(thread);
        let in_join =
            role != "main" || innermost.contains("join") || innermost.contains("tstate_lock");
        if thread["role"] != "blocked"
            || thread["share"].as_f64().unwrap_or(0.0) < WHOLE
            || thread["syscall"] != "futex"
            || (role != "main" && !innermost.ends_with(function))
            || !in_join
        {
            return Err(format!("{role} as named: {thread}").into());
        }
    }
    Ok(())
}

/// PTRACE_SEIZE etc.: the test stops one thread of the fixture the way a debugger does.
const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_DETACH: libc::c_uint = 17;

/// Thread `tid` stopped by this thread (its tracer) until dropped.
struct Stopped {
    tid: i32,
}

impl Stopped {
    fn new(tid: i32) -> Result<Stopped, Failed> {
        // SAFETY: ptrace requests on another process's thread; no memory of ours is passed.
        let seized = unsafe { libc::ptrace(PTRACE_SEIZE, tid, 0, 0) };
        if seized != 0 {
            return Err(format!("PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error()).into());
        }
        let stopped = Stopped { tid };
        // SAFETY: as above; waitpid writes into a local int.
        unsafe {
            if libc::ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0 {
                return Err("PTRACE_INTERRUPT failed".into());
            }
            let mut status = 0;
            if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
                return Err("waitpid on the stopped thread failed".into());
            }
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: detaching resumes the thread; nothing of ours is passed.
        unsafe {
            libc::ptrace(PTRACE_DETACH, self.tid, 0, 0);
        }
    }
}

fn stopped(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(
        &python.path,
        "hangs",
        &["--case", "stopped", "--duration", "60"],
    )?;
    let spinner = fx.tid("spinner");
    // The spinner and the waiter share the GIL: stop the spinner until it is caught
    // holding it.
    let mut held = None;
    for _ in 0..50 {
        let stop = Stopped::new(spinner)?;
        let dump = dump_json(fx.pid, &[])?;
        if dump["gil"]["holder_native_id"].as_i64() == Some(spinner as i64) {
            held = Some(stop);
            break;
        }
        drop(stop);
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let Some(_stopped) = held else {
        return Err("the spinner was never stopped holding the GIL in 50 tries".into());
    };
    let dump = dump_json(fx.pid, &["--sample", SAMPLE_S])?;
    let found = findings(&dump, "holder_stopped");
    let [finding] = found.as_slice() else {
        return Err(format!("expected one holder_stopped finding: {}", dump["sample"]).into());
    };
    let holder = named(finding, spinner).ok_or("the spinner is not named")?;
    if holder["role"] != "holder"
        || holder["os_state"] != "t"
        || innermost_function(holder) != "spin"
    {
        return Err(format!("the spinner as named: {holder}").into());
    }
    let waiter = named(finding, fx.tid("waiter")).ok_or("the waiter is not named")?;
    if waiter["role"] != "waiter" || waiter["share"].as_f64().unwrap_or(0.0) < WHOLE {
        return Err(format!("the waiter as named: {waiter}").into());
    }
    let text = finding["text"].as_str().unwrap_or("");
    // The tracer is this test's thread: TracerPid names the task, not its process.
    let tracer = nix::unistd::gettid().as_raw();
    if !text.contains(&format!("stopped by its tracer, pid {tracer}")) {
        return Err(format!("finding: {text}").into());
    }
    Ok(())
}
