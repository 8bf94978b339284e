//! Free-threaded CPython (3.13t, built by `scripts/test-pythons 3.13t`): known answers from
//! fixtures/free_threaded.py, three spinners and a sleeper, with the GIL off (the default)
//! and on (`PYTHON_GIL=1`). Skipped with a message where no free-threaded build is found.

mod common;

use std::path::Path;

use libtest_mimic::{Completion, Failed, Trial};
use serde_json::Value;

use common::{fraction, gilscope_ok, stdout_of, thread_row, thread_rows, Attempt, Fixture, Python};

/// Seconds recorded.
const RECORD_S: f64 = 3.0;
const SPINNERS: [&str; 3] = ["spinner-0", "spinner-1", "spinner-2"];
/// Without a GIL a spinner stays attached while the kernel preempts it (attached is "inside
/// Python", not "on a CPU"): only a stop-the-world pause (GC) takes it out, for microseconds.
/// 0.6 leaves room for a loaded host and the 2-point classification error.
const SPINNER_ATTACHED: f64 = 0.6;
/// Three spinners attached at once: more than one thread's worth of Python at every tick,
/// which a GIL cannot give (its holders' shares add up to at most 1).
const ATTACHED_SUM: f64 = 1.2;
/// The sleeper wakes once a second for microseconds.
const SLEEPER_IDLE: f64 = 0.9;
/// One GIL: its holders' shares add up to at most 1, plus classification error (2 points)
/// and the sampling margin at 3,000 ticks (under 2 points).
const ONE_GIL_HOLD_SUM: f64 = 1.05;
/// Holders' shares and the GIL's utilisation measure the same thing from the same ticks;
/// they differ by hand-overs (a tick with the GIL locked but its next holder not yet
/// active) and the classifier's corrections: a few points.
const HOLD_SUM_VS_HELD: f64 = 0.05;
/// Three spinners on one GIL each hold about a third of the time and wait the rest.
const SPINNER_WAIT: f64 = 0.4;
/// The switching test turns the GIL on this long after the threads start: about half-way
/// through a recording that starts 0.3 s after the announcement.
const ENABLE_GIL_AFTER_S: f64 = 1.8;
/// Share of the ticks with the GIL on, and each spinner's share of attached and of GIL ticks
/// (hold + wait), around the expected half: the start of the window and the import's own
/// time move it by a few tenths at most.
const SWITCHING_SHARE: (f64, f64) = (0.2, 0.8);

fn main() {
    let pythons = common::free_threaded_pythons();
    let tests: [(&str, KnownAnswer); 5] = [
        (
            "without_a_gil_the_spinners_run_python_in_parallel",
            without_gil,
        ),
        ("with_python_gil_1_the_spinners_share_the_gil", with_gil),
        ("text_dump_and_top_say_there_is_no_gil", no_gil_views),
        ("json_reports_and_dumps_match_their_schemas", schemas),
        (
            "a_gil_turned_on_at_run_time_is_followed_tick_by_tick",
            switching,
        ),
    ];
    let mut trials: Vec<Trial> = Vec::new();
    for (name, test) in tests {
        trials.extend(common::per_interpreter(&pythons, name, move |python| {
            let _exclusive = common::exclusive();
            common::unless_host_steals(|| {
                Ok(match test(python) {
                    Ok(()) => Attempt::Done(Completion::Completed),
                    Err((failed, steal)) => Attempt::Missed {
                        message: failed.message().unwrap_or("failed").to_string(),
                        steal,
                    },
                })
            })
        }));
    }
    common::Suite::run_trials(trials);
}

/// A test of one interpreter; a failure carries the host steal its recording measured.
type KnownAnswer = fn(&Python) -> Result<(), (Failed, Option<f64>)>;

/// `value` is above `min`; false for NaN (a null figure), which must fail a check.
fn above(value: f64, min: f64) -> bool {
    value > min
}

fn failed(what: impl Into<String>) -> (Failed, Option<f64>) {
    (what.into().into(), None)
}

/// A failure of a measured figure, with the report's rows and host steal.
fn missed(what: String, report: &Value) -> (Failed, Option<f64>) {
    (
        format!("{what}\n{}", thread_rows(report).join("\n")).into(),
        common::report_steal(report),
    )
}

/// The fixture under `python`, with the GIL forced on where `gil` is true.
fn start(python: &Python, gil: bool) -> Result<Fixture, (Failed, Option<f64>)> {
    start_with(python, gil, &[])
}

fn start_with(
    python: &Python,
    gil: bool,
    extra: &[&str],
) -> Result<Fixture, (Failed, Option<f64>)> {
    let script = common::fixture_path("free_threaded");
    // Unset, PYTHON_GIL lets an extension turn the GIL on; 0 would forbid it. `env` execs
    // the interpreter: the fixture's pid is the interpreter's.
    let python_path = python.path.to_string_lossy();
    let script_path = script.to_string_lossy();
    let mut argv = vec!["-u", "PYTHON_GIL"];
    if gil {
        argv.push("PYTHON_GIL=1");
    }
    argv.extend([
        python_path.as_ref(),
        script_path.as_ref(),
        "--duration",
        "60",
    ]);
    argv.extend(extra);
    let fx = Fixture::start_command(Path::new("/usr/bin/env"), &argv).map_err(failed)?;
    if fx.facts["gil_enabled"] != gil {
        return Err(failed(format!(
            "PYTHON_GIL={}: the fixture says gil_enabled={}",
            gil as u8, fx.facts["gil_enabled"]
        )));
    }
    Ok(fx)
}

fn record(fx: &Fixture) -> Result<Value, (Failed, Option<f64>)> {
    // Let every thread get going before the window opens.
    std::thread::sleep(std::time::Duration::from_millis(300));
    common::record_json(fx.pid, RECORD_S).map_err(failed)
}

fn row<'a>(
    report: &'a Value,
    fx: &Fixture,
    role: &str,
) -> Result<&'a Value, (Failed, Option<f64>)> {
    thread_row(report, fx.tid(role)).ok_or_else(|| missed(format!("no row for {role}"), report))
}

/// GIL off: the spinners are attached (all three at once), nobody holds or waits, the
/// sleeper is idle, and every GIL figure is null.
fn without_gil(python: &Python) -> Result<(), (Failed, Option<f64>)> {
    let fx = start(python, false)?;
    let report = record(&fx)?;
    let gil = &report["gil"];
    if report["target"]["free_threaded"] != true || gil["mode"] != "no_gil" || gil["enabled"] != 0.0
    {
        return Err(missed(
            format!("target {} gil {gil}", report["target"]),
            &report,
        ));
    }
    for field in [
        "held",
        "contended",
        "mean_waiting",
        "switches_per_s",
        "held_margin",
    ] {
        if !gil[field].is_null() {
            return Err(missed(
                format!("gil.{field} is {} without a GIL", gil[field]),
                &report,
            ));
        }
    }
    if !report["blame"].is_null() || !report["gils"][0]["held"].is_null() {
        return Err(missed("blame or gils[0].held is not null".into(), &report));
    }
    for thread in report["threads"].as_array().into_iter().flatten() {
        if !thread["hold"].is_null() || !thread["wait"].is_null() {
            return Err(missed(
                format!("{} holds or waits", thread["name"]),
                &report,
            ));
        }
    }
    let mut sum = 0.0;
    for role in SPINNERS {
        let r = row(&report, &fx, role)?;
        // The fixture names each thread after its role (its OS name too: gilfixture sets it,
        // and so does 3.14's threading; the main thread below is the one told apart).
        if r["name"] != role {
            return Err(missed(format!("{role} is named {}", r["name"]), &report));
        }
        let attached = fraction(r, "attached");
        if !above(attached, SPINNER_ATTACHED) {
            return Err(missed(format!("{role} attached {attached}"), &report));
        }
        sum += attached;
        let top = &r["top_attached"][0];
        if top["function"] != "spin" {
            return Err(missed(format!("{role} attached in {top}"), &report));
        }
    }
    if !above(sum, ATTACHED_SUM) {
        return Err(missed(
            format!("spinners attached {sum:.3} in all"),
            &report,
        ));
    }
    let idle = fraction(row(&report, &fx, "sleeper")?, "idle");
    if !above(idle, SLEEPER_IDLE) {
        return Err(missed(format!("sleeper idle {idle}"), &report));
    }
    // "MainThread" is no OS name (that is the program's): only a Python name read through
    // the free-threaded object header says it.
    let main = row(&report, &fx, "main")?;
    if main["name"] != "MainThread" {
        return Err(missed(
            format!("main thread named {}", main["name"]),
            &report,
        ));
    }
    Ok(())
}

/// GIL on: the usual figures, the holders' shares adding up to the GIL's utilisation, at
/// most 1, and each spinner waiting for its turn; nobody is attached or suspended.
fn with_gil(python: &Python) -> Result<(), (Failed, Option<f64>)> {
    let fx = start(python, true)?;
    let report = record(&fx)?;
    let gil = &report["gil"];
    if gil["mode"] != "gil" || gil["enabled"] != 1.0 {
        return Err(missed(format!("gil {gil}"), &report));
    }
    let held = fraction(gil, "held");
    let mut hold_sum = 0.0;
    for thread in report["threads"].as_array().into_iter().flatten() {
        hold_sum += fraction(thread, "hold");
        if fraction(thread, "attached") != 0.0 || fraction(thread, "suspended") != 0.0 {
            return Err(missed(
                format!("{} attached with a GIL", thread["name"]),
                &report,
            ));
        }
    }
    if !(hold_sum <= ONE_GIL_HOLD_SUM && (hold_sum - held).abs() <= HOLD_SUM_VS_HELD) {
        return Err(missed(
            format!("holders add up to {hold_sum:.3}, GIL held {held}"),
            &report,
        ));
    }
    for role in SPINNERS {
        let wait = fraction(row(&report, &fx, role)?, "wait");
        if !above(wait, SPINNER_WAIT) {
            return Err(missed(format!("{role} waits {wait}"), &report));
        }
    }
    Ok(())
}

/// The text report, `dump` and `top` (into a pipe) say there is no GIL and show the
/// spinners attached, without crashing.
fn no_gil_views(python: &Python) -> Result<(), (Failed, Option<f64>)> {
    let fx = start(python, false)?;
    let pid = fx.pid.to_string();
    let spinner = fx.tid("spinner-0").to_string();
    let text = gilscope_ok(&["record", "--pid", &pid, "--duration", "1"]).map_err(|e| (e, None))?;
    let text = stdout_of(&text);
    if !text.contains("GIL: no GIL") || !text.contains("ATTACHED") || !text.contains("held n/a") {
        return Err(failed(format!("text report:\n{text}")));
    }
    let dump = gilscope_ok(&["dump", "--pid", &pid]).map_err(|e| (e, None))?;
    let dump = stdout_of(&dump);
    let spinner_line = format!("Thread {spinner} \"spinner-0\": attached");
    if !dump.contains("GIL: no GIL") || !dump.contains(&spinner_line) {
        return Err(failed(format!("dump:\n{dump}")));
    }
    let line = common::top_first_line(fx.pid).map_err(failed)?;
    let shown = format!("({spinner}) attached ");
    if !(line.contains("no GIL: held n/a contended n/a switches n/a") && line.contains(&shown)) {
        return Err(failed(format!("top line: {line}")));
    }
    Ok(())
}

/// A report and a sampled dump without a GIL have every documented field and no other.
fn schemas(python: &Python) -> Result<(), (Failed, Option<f64>)> {
    let fx = start(python, false)?;
    let report = record(&fx)?;
    if report["schema"] != "gilscope.report/6" {
        return Err(failed(format!("schema {}", report["schema"])));
    }
    common::matches_documented_schema(&report, "docs/JSON_SCHEMA.md").map_err(|e| (e, None))?;
    let pid = fx.pid.to_string();
    let out = gilscope_ok(&["dump", "--pid", &pid, "--json", "--sample", "0.5"])
        .map_err(|e| (e, None))?;
    let dump: Value = serde_json::from_slice(&out.stdout).map_err(|e| failed(e.to_string()))?;
    if dump["gil"]["enabled"] != false || !dump["sample"]["held"].is_null() {
        return Err(failed(format!(
            "dump gil {} sample {}",
            dump["gil"], dump["sample"]
        )));
    }
    let spinner = dump["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["native_id"] == fx.tid("spinner-0"))
        .ok_or_else(|| failed("no spinner in the dump"))?;
    if spinner["state"] != "attached"
        || !above(fraction(&spinner["sampled"], "attached"), SPINNER_ATTACHED)
    {
        return Err(failed(format!("dump spinner {spinner}")));
    }
    common::matches_documented_schema(&dump, "docs/DUMP_SCHEMA.md").map_err(|e| (e, None))
}

/// fixtures/gilneeder.c built for `python` in a scratch directory: an extension that does
/// not declare free-threading support, so importing it turns the GIL on.
fn build_gil_needer(python: &Python) -> Result<std::path::PathBuf, String> {
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
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gilneeder-{}", python.label));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let module = dir.join(format!("gilneeder{suffix}"));
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-I", include, "-o"])
        .arg(&module)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gilneeder.c"))
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !cc.status.success() {
        return Err(format!("cc: {}", String::from_utf8_lossy(&cc.stderr)));
    }
    Ok(dir)
}

/// The GIL off, then turned on by an import half-way through: the ticks before count as
/// attached, those after as hold and wait, and the GIL figures cover only the ticks with a
/// GIL: the holders' shares of all ticks add up to the GIL's utilisation times its share.
fn switching(python: &Python) -> Result<(), (Failed, Option<f64>)> {
    let dir = match build_gil_needer(python) {
        Ok(dir) => dir,
        Err(why) => return Err(failed(format!("cannot build fixtures/gilneeder.c: {why}"))),
    };
    let after = ENABLE_GIL_AFTER_S.to_string();
    let dir = dir.to_string_lossy();
    let fx = start_with(
        python,
        false,
        &["--enable-gil-after", &after, "--module-dir", &dir],
    )?;
    let report = record(&fx)?;
    let gil = &report["gil"];
    let enabled = fraction(gil, "enabled");
    let (low, high) = SWITCHING_SHARE;
    if gil["mode"] != "switching" || !(above(enabled, low) && enabled < high) {
        return Err(missed(format!("gil {gil}"), &report));
    }
    let mut hold_sum = 0.0;
    for thread in report["threads"].as_array().into_iter().flatten() {
        hold_sum += fraction(thread, "hold");
    }
    let held = fraction(gil, "held");
    if held.is_nan() || (hold_sum - held * enabled).abs() > HOLD_SUM_VS_HELD {
        return Err(missed(
            format!("holders add up to {hold_sum:.3}, GIL held {held} of {enabled} of ticks"),
            &report,
        ));
    }
    for role in SPINNERS {
        let r = row(&report, &fx, role)?;
        let attached = fraction(r, "attached");
        let in_gil = fraction(r, "hold") + fraction(r, "wait");
        if !(above(attached, low) && above(in_gil, low) && attached < high && in_gil < high) {
            return Err(missed(
                format!("{role}: attached {attached}, hold + wait {in_gil}"),
                &report,
            ));
        }
    }
    Ok(())
}
