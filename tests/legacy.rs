//! Interpreters whose GIL waits cannot be seen: CPython 2.7 (with and without its symbol
//! table), and 3.6 with a libpython stripped of its symbol table. Known answers from fixtures/legacy.py: holding, running and idle are
//! measured, and every wait figure is reported as unavailable (null, "n/a"), never as 0.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Completion, Failed, Trial};
use serde_json::Value;

use common::{fraction, gilscope_ok, stdout_of, thread_row, Fixture};

/// Seconds recorded by the known-answer tests.
const RECORD_S: f64 = 3.0;

/// An interpreter of this file's kind, and how to start a fixture under it.
#[derive(Debug, Clone)]
struct Legacy {
    label: String,
    python: PathBuf,
    version: String,
    /// The stripped copy of libpython the interpreter must load (through LD_LIBRARY_PATH).
    stripped: Option<PathBuf>,
}

impl Legacy {
    fn start(&self, args: &[&str]) -> Result<Fixture, Failed> {
        let script = common::fixture_path("legacy");
        let mut argv: Vec<OsString> = Vec::new();
        // `env` execs the interpreter: the fixture's pid is the interpreter's.
        if let Some(library) = &self.stripped {
            let dir = library.parent().ok_or("no directory")?;
            argv.push(format!("LD_LIBRARY_PATH={}", dir.display()).into());
        }
        argv.push(self.python.clone().into());
        argv.push(script.into());
        argv.extend(args.iter().map(OsString::from));
        let fx = Fixture::start_command(Path::new("/usr/bin/env"), &argv)?;
        if let Some(library) = &self.stripped {
            // The binary's RUNPATH names pyenv's own library: make sure the copy won.
            let maps = std::fs::read_to_string(format!("/proc/{}/maps", fx.pid))?;
            if !maps.contains(&*library.to_string_lossy()) {
                return Err(format!("{} is not mapped by {}", library.display(), fx.pid).into());
            }
        }
        Ok(fx)
    }
}

/// pyenv's 2.7, as built and with a stripped copy of its libpython, and pyenv's 3.6 with a
/// stripped copy (copies in `scratch`); each missing one with the reason.
fn legacy_pythons(scratch: &Path) -> (Vec<Legacy>, Vec<(String, String)>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let python = |minor: &str, name: &str| {
        let path = common::pyenv_version(minor)?.join("bin").join(name);
        let version = common::python_version(&path)?;
        Some((path, version))
    };
    match python("2.7", "python2.7") {
        Some((python, version)) => found.push(Legacy {
            label: format!("pyenv-{version}"),
            python,
            version,
            stripped: None,
        }),
        None => missing.push(("pyenv-2.7".into(), "no pyenv CPython 2.7".into())),
    }
    for (minor, name, library) in [
        ("2.7", "python2.7", "libpython2.7.so.1.0"),
        ("3.6", "python3.6", "libpython3.6m.so.1.0"),
    ] {
        let label = format!("pyenv-{minor}-stripped");
        let dir = scratch.join(minor);
        match python(minor, name).map(|(p, v)| (strip_library(&p, library, &dir), p, v)) {
            Some((Ok(library), python, version)) => found.push(Legacy {
                label: format!("pyenv-{version}-stripped"),
                python,
                version,
                stripped: Some(library),
            }),
            Some((Err(why), _, _)) => missing.push((label, why)),
            None => missing.push((label, format!("no pyenv CPython {minor}"))),
        }
    }
    (found, missing)
}

/// Copy the interpreter's shared `name` into `dir` and `strip --strip-all` it.
fn strip_library(python: &Path, name: &str, dir: &Path) -> Result<PathBuf, String> {
    let original = python
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("lib").join(name))
        .filter(|p| p.exists())
        .ok_or_else(|| format!("no shared {name} beside {}", python.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = dir.join(name);
    std::fs::copy(&original, &copy).map_err(|e| format!("copy {name}: {e}"))?;
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg(&copy)
        .status()
        .map_err(|e| format!("no strip(1): {e}"))?;
    if !status.success() {
        return Err(format!("strip --strip-all failed: {status}"));
    }
    Ok(copy)
}

type Test = fn(&Legacy) -> Result<(), Failed>;

fn main() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let (found, missing) = legacy_pythons(scratch.path());
    let tests: [(&str, Test); 7] = [
        (
            "a_spinner_holds_a_sleeper_idles_and_wait_is_null",
            spinner_and_sleeper,
        ),
        ("the_text_report_says_wait_is_not_available", text_report),
        ("two_spinners_share_the_gil", two_spinners),
        ("stacks_name_the_fixture_functions_and_file", stacks),
        ("dump_shows_the_holder_and_its_stack", dump),
        ("json_report_matches_the_documented_schema", json_schema),
        ("top_shows_wait_as_not_available", top),
    ];
    let mut trials = Vec::new();
    for (name, test) in tests {
        for legacy in &found {
            let legacy = legacy.clone();
            trials.push(Trial::ignorable_test(
                format!("{name}::{}", legacy.label),
                move || {
                    let _exclusive = common::exclusive();
                    common::unless_host_steals(|| Ok(common::steal_measured(|| test(&legacy))))
                },
            ));
        }
        for (label, why) in &missing {
            let why = why.clone();
            trials.push(Trial::ignorable_test(
                format!("{name}::{label}"),
                move || Ok(Completion::ignored_with(why)),
            ));
        }
    }
    common::Suite::run_trials_then(trials, move || drop(scratch));
}

fn record(legacy: &Legacy, args: &[&str]) -> Result<(Fixture, Value), Failed> {
    let mut all = vec!["--duration", "60"];
    all.extend_from_slice(args);
    let fx = legacy.start(&all)?;
    let report = common::record_json(fx.pid, RECORD_S)?;
    check_report(&report, legacy)?;
    Ok((fx, report))
}

fn row<'a>(report: &'a Value, fx: &Fixture, role: &str) -> Result<&'a Value, Failed> {
    thread_row(report, fx.tid(role))
        .ok_or_else(|| format!("{role} ({}) is not in the report", fx.tid(role)).into())
}

fn fail(what: String, report: &Value) -> Failed {
    format!("{what}\n  {}", common::thread_rows(report).join("\n  ")).into()
}

/// What every report of these interpreters must say: the version, that waits are not
/// measured, every wait figure null (not 0), and hold + running + idle = 1 per thread.
fn check_report(report: &Value, legacy: &Legacy) -> Result<(), Failed> {
    let target = &report["target"];
    if target["python_version"] != legacy.version.as_str() {
        return Err(fail(
            format!("detected {}", target["python_version"]),
            report,
        ));
    }
    if target["wait_measured"] != false {
        return Err(fail("target.wait_measured is not false".into(), report));
    }
    let layout = target["layout"].as_str().unwrap_or("");
    if legacy.stripped.is_some() && !layout.contains("PyInterpreterState_Head") {
        return Err(fail(format!("stripped, yet layout {layout:?}"), report));
    }
    for key in [
        "contended",
        "mean_waiting",
        "contended_margin",
        "interval_s",
    ] {
        if !report["gil"][key].is_null() {
            return Err(fail(
                format!("gil.{key} is {}, not null", report["gil"][key]),
                report,
            ));
        }
    }
    if !report["blame"].is_null() {
        return Err(fail("blame is not null".into(), report));
    }
    for t in report["threads"].as_array().ok_or("no threads")? {
        if !t["wait"].is_null() || !t["top_wait"].is_null() {
            return Err(fail("a thread's wait is not null".into(), report));
        }
        let sum: f64 = ["hold", "running", "idle"]
            .iter()
            .map(|s| fraction(t, s))
            .sum();
        if (sum - 1.0).abs() > 1e-9 {
            return Err(fail(format!("hold + running + idle = {sum}"), report));
        }
    }
    Ok(())
}

/// Alone, a pure-Python spinner holds the GIL all the time but for the instants it hands
/// it over (every 100 bytecodes on 2.7, every 5 ms on 3.6) to a sleeper that wakes every
/// 50 ms and the main thread every 200 ms, each for microseconds: measured 98-99% here. A
/// spinner preempted by another process still holds (the current-thread pointer stays
/// set), so load on the machine does not lower it; 0.8 leaves room for the classifier's
/// stated error and far more. The sleeper is asleep but for those microseconds.
fn spinner_and_sleeper(legacy: &Legacy) -> Result<(), Failed> {
    let (fx, report) = record(legacy, &[])?;
    let spinner = row(&report, &fx, "spinner-0")?;
    if fraction(spinner, "hold") < 0.8 {
        return Err(fail("the spinner holds less than 80%".into(), &report));
    }
    let sleeper = row(&report, &fx, "sleeper")?;
    if fraction(sleeper, "idle") < 0.9 {
        return Err(fail("the sleeper is idle less than 90%".into(), &report));
    }
    if report["gil"]["held"].as_f64().unwrap_or(0.0) < 0.8 {
        return Err(fail("gil.held below 80% with a spinner".into(), &report));
    }
    Ok(())
}

fn text_report(legacy: &Legacy) -> Result<(), Failed> {
    let fx = legacy.start(&["--duration", "60"])?;
    let pid = fx.pid.to_string();
    let out = gilscope_ok(&["record", "--pid", &pid, "--duration", "1"])?;
    let text = stdout_of(&out);
    if !text.contains("contended n/a") || !text.contains("mean waiting n/a") {
        return Err(format!("no n/a for contention:\n{text}").into());
    }
    let spinner = fx.tid("spinner-0").to_string();
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(spinner.as_str()))
        .ok_or_else(|| format!("no row for the spinner:\n{text}"))?;
    // TID NAME HOLD WAIT RUNNING IDLE
    if row.split_whitespace().nth(3) != Some("n/a") {
        return Err(format!("the WAIT column is not n/a: {row}\n{text}").into());
    }
    if !text.contains("cannot be measured on this interpreter") {
        return Err(format!("the report does not say why:\n{text}").into());
    }
    Ok(())
}

/// Two spinners always want the GIL: it is held most of the time, never by both at once
/// (their holds add up to the process's), and each gets a real share. 2.7 has no fairness
/// (the thread that releases often takes the lock straight back) and 3.6 hands over every
/// 5 ms: measured 46-54% each here, so 15% is a bound on seeing both hold, not on fairness.
/// On 2.7 with two cores the lock is also free for a real share of the time: every 100
/// bytecodes the holder releases it and both threads race to take it again, so
/// `_PyThreadState_Current` is null 11-17% of the time (held 0.83-0.89 measured here, with the
/// fixture as it was and as it is); 0.75 still fails a holder read that misses threads.
fn two_spinners(legacy: &Legacy) -> Result<(), Failed> {
    let (fx, report) = record(legacy, &["--spinners", "2", "--no-sleeper"])?;
    let held = report["gil"]["held"].as_f64().unwrap_or(0.0);
    let holds: Vec<f64> = ["spinner-0", "spinner-1"]
        .iter()
        .map(|role| row(&report, &fx, role).map(|r| fraction(r, "hold")))
        .collect::<Result<_, _>>()?;
    let sum: f64 = holds.iter().sum();
    if held < 0.75 {
        return Err(fail(format!("gil.held {held} with two spinners"), &report));
    }
    // Rows and the process figure count the same ticks; both are rounded to 4 decimals.
    if (sum - held).abs() > 0.01 {
        return Err(fail(
            format!("holds add up to {sum}, gil.held {held}"),
            &report,
        ));
    }
    if holds.iter().any(|&h| !(0.15..=0.85).contains(&h)) {
        return Err(fail(format!("holds {holds:?}"), &report));
    }
    Ok(())
}

/// The innermost frame of each thread in its state: names from the fixture, its file, and
/// lines inside the function (`co_lnotab`, unsigned on 2.7).
fn stacks(legacy: &Legacy) -> Result<(), Failed> {
    let (fx, report) = record(legacy, &["--alternator"])?;
    let leaf = |role: &str, state: &str| -> Result<(String, String, u64), Failed> {
        let r = row(&report, &fx, role)?;
        let top = &r[format!("top_{state}")][0];
        Ok((
            top["function"].as_str().unwrap_or("").to_string(),
            top["file"].as_str().unwrap_or("").to_string(),
            top["line"].as_u64().unwrap_or(0),
        ))
    };
    let line_of = |fixture: &str, function: &str| -> Result<u64, Failed> {
        let source = std::fs::read_to_string(common::fixture_path(fixture))?;
        let def = format!("def {function}(");
        Ok(source
            .lines()
            .position(|l| l.starts_with(&def))
            .map(|i| i as u64 + 1)
            .unwrap_or(0))
    };
    for (role, state, function, fixture) in [
        ("spinner-0", "hold", "spin", "gilfixture"),
        ("sleeper", "idle", "doze", "legacy"),
        ("alternator", "hold", "alternate", "legacy"),
        ("alternator", "idle", "alternate", "legacy"),
    ] {
        let (name, file, line) = leaf(role, state)?;
        let first = line_of(fixture, function)?;
        if name != function || !file.ends_with(&format!("fixtures/{fixture}.py")) {
            return Err(fail(format!("{role} {state}: {name} in {file}"), &report));
        }
        if !(first < line && line < first + 10) {
            return Err(fail(
                format!("{role} {state}: line {line}, {function} starts at {first}"),
                &report,
            ));
        }
    }
    Ok(())
}

/// `dump` shows the spinner holding in `spin`, and with --sample null wait figures.
fn dump(legacy: &Legacy) -> Result<(), Failed> {
    let fx = legacy.start(&["--duration", "60"])?;
    let pid = fx.pid.to_string();
    let out = gilscope_ok(&["dump", "--pid", &pid, "--json", "--sample", "0.5"])?;
    let dump: Value = serde_json::from_slice(&out.stdout)?;
    if dump["schema"] != "gilscope.dump/4" || dump["target"]["wait_measured"] != false {
        return Err(format!("schema {} target {}", dump["schema"], dump["target"]).into());
    }
    if !dump["gil"]["interval_s"].is_null() || !dump["sample"]["contended"].is_null() {
        return Err(format!("interval or contention not null: {dump}").into());
    }
    let threads = dump["threads"].as_array().ok_or("no threads")?;
    let spinner = threads
        .iter()
        .find(|t| t["native_id"].as_i64() == Some(fx.tid("spinner-0") as i64))
        .ok_or("no spinner in the dump")?;
    if !spinner["sampled"]["wait"].is_null() {
        return Err(format!("sampled wait is {}", spinner["sampled"]["wait"]).into());
    }
    // The spinner holds but for instants; a dump that caught one is not wrong: try again.
    for _ in 0..10 {
        let out = gilscope_ok(&["dump", "--pid", &pid, "--json"])?;
        let dump: Value = serde_json::from_slice(&out.stdout)?;
        let holder = dump["threads"]
            .as_array()
            .ok_or("no threads")?
            .iter()
            .find(|t| t["state"] == "hold")
            .cloned();
        let Some(holder) = holder else { continue };
        if holder["native_id"].as_i64() != Some(fx.tid("spinner-0") as i64) {
            continue;
        }
        if dump["gil"]["holder_native_id"] != holder["native_id"] {
            return Err("gil.holder_native_id is not the holding thread".into());
        }
        if holder["stack_captured"] == true && holder["stack"][0]["function"] != "spin" {
            return Err(format!("the holder's innermost frame: {}", holder["stack"][0]).into());
        }
        if holder["stack_captured"] == true {
            return Ok(());
        }
    }
    Err("in 10 dumps the spinner was never seen holding with its stack".into())
}

fn json_schema(legacy: &Legacy) -> Result<(), Failed> {
    let (_fx, report) = record(legacy, &["--alternator"])?;
    if report["schema"] != "gilscope.report/6" {
        return Err(format!("schema {}", report["schema"]).into());
    }
    common::matches_documented_schema(&report, "docs/JSON_SCHEMA.md")
}

/// `gilscope top` into a pipe: its line of the last second says n/a for contention and for
/// each thread's wait.
fn top(legacy: &Legacy) -> Result<(), Failed> {
    let fx = legacy.start(&["--duration", "60"])?;
    let line = common::top_first_line(fx.pid)?;
    let spinner = format!("({}) hold ", fx.tid("spinner-0"));
    let ok = line.contains("contended n/a")
        && line.contains(&spinner)
        && line.contains(" wait n/a ")
        && !line.contains(" wait 0.0%");
    if !ok {
        return Err(format!("top line: {line}").into());
    }
    Ok(())
}
