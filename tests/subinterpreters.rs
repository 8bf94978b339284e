//! Subinterpreters (3.12+), each with its own GIL or sharing the main one: known answers from
//! fixtures/subinterpreters.py. Every GIL is reported on its own, with its threads.

mod common;

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{fraction, thread_row, thread_rows, Attempt, Fixture, Python};

/// Seconds recorded (2,000 ticks at the default rate).
const RECORD_S: f64 = 2.0;
/// The fixture's subinterpreter spinner starts 0.5 s after the subinterpreter exists; give
/// it time to be spinning before the recording starts.
const SETTLE_S: f64 = 1.0;
/// A spinner with a GIL to itself holds it all the time, whether or not it is on a CPU (a
/// preempted holder still holds). What takes it away: the fixture's main thread waking
/// every 200 ms takes the main GIL for up to one 5 ms switch interval (2.5%), more when the
/// two cores are busy with the other spinner and the sampler and the hand-back is delayed;
/// plus 2 points of classification error and a sampling margin of ~2 points at 2,000
/// ticks. 0.6 leaves room for a loaded host; what tells two GILs from one is the sum below.
const OWN_GIL_HOLD: f64 = 0.6;
/// Two spinners holding two GILs at once: more than one GIL's worth of holding, which one
/// GIL cannot give (its holders' shares add up to at most 1).
const TWO_GILS_HOLD_SUM: f64 = 1.4;
/// One GIL shared: its holders' shares add up to at most 1, plus classification error (2
/// points) and sampling margin.
const ONE_GIL_HOLD_SUM: f64 = 1.05;
/// Spinners sharing one GIL wait whenever the other holds it: about half the time each on
/// 3.13+, and one of them all the time on 3.12 (a shared GIL is never handed over between
/// interpreters there: see the fixture).
const SHARED_WAIT_SUM: f64 = 0.5;

fn main() {
    let mut suite = common::Suite::new(common::pythons());
    let tests: [(&str, KnownAnswer, Enter); 4] = [
        (
            "an_own_gil_subinterpreter_holds_its_gil_beside_the_main_one",
            own_gil,
            Enter::Inside,
        ),
        (
            "a_subinterpreter_sharing_the_main_gil_takes_turns_with_it",
            shared_gil,
            Enter::Inside,
        ),
        (
            "a_thread_running_an_own_gil_subinterpreter_is_on_its_gil",
            own_gil,
            Enter::RunString,
        ),
        (
            "a_thread_running_a_shared_gil_subinterpreter_takes_turns",
            shared_gil,
            Enter::RunString,
        ),
    ];
    // Only 3.12 on have subinterpreters with a GIL of their own: each layout family of them
    // (3.12, 3.13, 3.15) in the default pass, since the version is the point; 3.14 in CI's
    // second pass.
    for (name, test, enter) in tests {
        let trials =
            common::per_interpreter(&common::matrix(&suite.pythons), name, move |python| {
                if let Some(why) = no_subinterpreters(python, enter) {
                    return Ok(Completion::ignored_with(why));
                }
                let _exclusive = common::exclusive();
                common::unless_host_steals(|| {
                    LAST_STEAL.set(None);
                    Ok(match test(python, enter) {
                        Ok(()) => Attempt::Done(Completion::Completed),
                        Err(failed) => Attempt::Missed {
                            message: failed.message().unwrap_or("failed").to_string(),
                            steal: LAST_STEAL.get(),
                        },
                    })
                })
            });
        suite.add(trials);
    }
    suite.run()
}

/// A test of one interpreter.
type KnownAnswer = fn(&Python, Enter) -> Result<(), Failed>;

/// How the subinterpreter's spinner runs (the fixture's `--enter`).
#[derive(Debug, Clone, Copy)]
enum Enter {
    /// A thread started inside the subinterpreter: one thread state, its own.
    Inside,
    /// A main-interpreter thread calling `run_string`: a thread state in each interpreter,
    /// with the same tid (3.13+).
    RunString,
}

impl Enter {
    fn arg(self) -> &'static str {
        match self {
            Enter::Inside => "inside",
            Enter::RunString => "run_string",
        }
    }
}

thread_local! {
    /// The host steal measured by the last recording of this thread's trial: a miss in a
    /// window the hypervisor stole from is measured again.
    static LAST_STEAL: std::cell::Cell<Option<f64>> = const { std::cell::Cell::new(None) };
}

/// Why `python` cannot run the fixture, if it cannot: a subinterpreter with its own GIL
/// needs 3.12 (`_xxsubinterpreters`) or later (`_interpreters`).
fn no_subinterpreters(python: &Python, enter: Enter) -> Option<String> {
    let mut parts = python
        .version
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next()?, parts.next()?);
    if (major, minor) < (3, 12) {
        return Some(format!(
            "CPython {} has no subinterpreters with a GIL of their own (3.12+)",
            python.version
        ));
    }
    if let (Enter::RunString, (3, 12)) = (enter, (major, minor)) {
        return Some(
            "3.12's run_string borrows the subinterpreter's first thread state, whose tid is \
             the creating thread's (CPython gh-109860): not attributable"
                .into(),
        );
    }
    let has_module = std::process::Command::new(&python.path)
        .args(["-c", "import importlib.util as u, sys; sys.exit(not (u.find_spec('_interpreters') or u.find_spec('_xxsubinterpreters')))"])
        .status()
        .is_ok_and(|s| s.success());
    (!has_module).then(|| {
        format!(
            "CPython {} has neither _interpreters nor _xxsubinterpreters",
            python.version
        )
    })
}

/// Start the fixture with `--gil mode`, let its spinners start, record it.
fn record(python: &Python, mode: &str, enter: Enter) -> Result<(Fixture, Value), Failed> {
    let fixture = Fixture::start(
        &python.path,
        "subinterpreters",
        &["--duration", "60", "--gil", mode, "--enter", enter.arg()],
    )?;
    std::thread::sleep(std::time::Duration::from_secs_f64(SETTLE_S));
    let report = common::record_json(fixture.pid, RECORD_S)?;
    LAST_STEAL.set(common::report_steal(&report));
    common::matches_documented_schema(&report, "docs/JSON_SCHEMA.md")?;
    Ok((fixture, report))
}

/// The `gils[]` entry whose `threads` list `tid`, and its index.
fn gil_of(report: &Value, tid: i32) -> Option<(usize, &Value)> {
    report["gils"]
        .as_array()?
        .iter()
        .enumerate()
        .find(|(_, g)| {
            g["threads"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t.as_i64() == Some(tid as i64)))
        })
}

/// What a failure message needs: the GILs and the thread rows.
fn context(report: &Value) -> String {
    format!(
        "gils: {}\nthreads:\n{}",
        report["gils"],
        thread_rows(report).join("\n")
    )
}

/// The subinterpreter's spinner is named only in its own interpreter's `threading` when it
/// was started there (the fixture does not name its OS thread): its row must have that name.
fn named_from_its_interpreter(report: &Value, fixture: &Fixture) -> Result<(), String> {
    let row = thread_row(report, fixture.tid("sub-spinner")).ok_or("no sub-spinner row")?;
    if row["name"] != "sub-spinner" {
        return Err(format!(
            "the subinterpreter's spinner is named {}",
            row["name"]
        ));
    }
    Ok(())
}

fn own_gil(python: &Python, enter: Enter) -> Result<(), Failed> {
    let (fixture, report) = record(python, "own", enter)?;
    let check = || -> Result<(), String> {
        named_from_its_interpreter(&report, &fixture)?;
        let gils = report["gils"].as_array().ok_or("no gils")?;
        if gils.len() != 2 {
            return Err(format!("{} GILs, expected 2", gils.len()));
        }
        if gils[0]["own"] != false || gils[1]["own"] != true {
            return Err("gils[0] must be the main GIL and gils[1] the own one".into());
        }
        let (main, sub) = (fixture.tid("main-spinner"), fixture.tid("sub-spinner"));
        let mut holds = 0.0;
        for (tid, gil, main_interpreter) in [(main, 0, true), (sub, 1, false)] {
            let row = thread_row(&report, tid).ok_or(format!("no row for {tid}"))?;
            let listed = gil_of(&report, tid).map(|(i, _)| i);
            if listed != Some(gil) || row["gil"].as_u64() != Some(gil as u64) {
                return Err(format!(
                    "{tid} is on GIL {listed:?} ({}), expected {gil}",
                    row["gil"]
                ));
            }
            let interpreter = row["interpreter"].as_i64().ok_or("no interpreter id")?;
            if (interpreter == 0) != main_interpreter {
                return Err(format!("{tid} is in interpreter {interpreter}"));
            }
            let (hold, wait) = (fraction(row, "hold"), fraction(row, "wait"));
            if hold < OWN_GIL_HOLD || wait > 1.0 - OWN_GIL_HOLD {
                return Err(format!(
                    "{tid} held {hold} and waited {wait} with a GIL of its own"
                ));
            }
            holds += hold;
        }
        if holds < TWO_GILS_HOLD_SUM {
            return Err(format!(
                "the spinners held {holds} together: not two GILs at once"
            ));
        }
        let sub_gil = &gils[1];
        if sub_gil["held"].as_f64().unwrap_or(0.0) < OWN_GIL_HOLD {
            return Err(format!("the own GIL was held {}", sub_gil["held"]));
        }
        if !sub_gil["interpreters"]
            .as_array()
            .is_some_and(|i| i.len() == 1 && i[0].as_i64().is_some_and(|id| id > 0))
        {
            return Err(format!("own GIL interpreters {}", sub_gil["interpreters"]));
        }
        Ok(())
    };
    check().map_err(|e| format!("{e}\n{}", context(&report)))?;
    dump_shows_each_gil(&fixture)?;
    top_shows_each_gil(&fixture)?;
    stacks_are_grouped_by_gil(&fixture)
}

/// Folded stacks start with the GIL each thread was judged against: the main spinner's under
/// `[main GIL]`, the subinterpreter's spinner's under its interpreter's own.
fn stacks_are_grouped_by_gil(fixture: &Fixture) -> Result<(), Failed> {
    let pid = fixture.pid.to_string();
    let out = common::gilscope_ok(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "1",
        "--format",
        "collapsed",
    ])?;
    let folded = common::stdout_of(&out);
    let root_of = |tid: i32| -> Option<String> {
        let head = format!(" ({tid});");
        let line = folded.lines().find(|l| l.contains(&head))?;
        Some(line.split(';').next()?.to_string())
    };
    let (main, sub) = (fixture.tid("main-spinner"), fixture.tid("sub-spinner"));
    match (root_of(main), root_of(sub)) {
        (Some(m), Some(s)) if m == "[main GIL]" && s.starts_with("[own GIL of interpreter ") => {
            Ok(())
        }
        roots => Err(format!("stack roots {roots:?}:\n{folded}").into()),
    }
}

/// `top`'s plain line (stdout is a pipe) has the own GIL's figures, held nearly all the time
/// by the subinterpreter's spinner.
fn top_shows_each_gil(fixture: &Fixture) -> Result<(), Failed> {
    let line = common::top_first_line(fixture.pid)?;
    let held = line
        .split(" | ")
        .find_map(|part| part.strip_prefix("own GIL, interpreter "))
        .and_then(|rest| rest.split(" held ").nth(1))
        .and_then(|rest| rest.split('%').next())
        .and_then(|figure| figure.parse::<f64>().ok());
    match held {
        Some(held) if held / 100.0 >= OWN_GIL_HOLD => Ok(()),
        _ => Err(format!("top's line has no own GIL held >= {OWN_GIL_HOLD}:\n{line}").into()),
    }
}

/// A dump of the own-GIL fixture lists both GILs, puts each spinner on its own, and (at some
/// instant: each spinner holds its GIL nearly all the time) shows both held at once, each by
/// its spinner; the text dump has a line for the subinterpreter's GIL.
fn dump_shows_each_gil(fixture: &Fixture) -> Result<(), Failed> {
    let pid = fixture.pid.to_string();
    let (main, sub) = (fixture.tid("main-spinner"), fixture.tid("sub-spinner"));
    let mut last = Value::Null;
    for _ in 0..20 {
        let out = common::gilscope_ok(&["dump", "--pid", &pid, "--json"])?;
        let dump: Value = serde_json::from_str(&common::stdout_of(&out))?;
        common::matches_documented_schema(&dump, "docs/DUMP_SCHEMA.md")?;
        let gils = dump["gils"].as_array().ok_or("dump without gils")?;
        let thread = |tid: i32| {
            dump["threads"].as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["native_id"].as_i64() == Some(tid as i64))
            })
        };
        let placed = |tid: i32, gil: u64, main_interpreter: bool| {
            thread(tid).is_some_and(|t| {
                t["gil"].as_u64() == Some(gil)
                    && t["interpreter"]
                        .as_i64()
                        .is_some_and(|id| (id == 0) == main_interpreter)
            })
        };
        if gils.len() != 2
            || gils[1]["own"] != true
            || !placed(main, 0, true)
            || !placed(sub, 1, false)
        {
            return Err(format!("dump's GILs and threads are wrong:\n{dump:#}").into());
        }
        let held_by = |i: usize| gils[i]["holder_native_id"].as_i64();
        if held_by(0) == Some(main as i64) && held_by(1) == Some(sub as i64) {
            let out = common::gilscope_ok(&["dump", "--pid", &pid])?;
            let text = common::stdout_of(&out);
            if !text.contains("GIL of interpreter") || !text.contains(", GIL 1]") {
                return Err(format!("text dump without a line per GIL:\n{text}").into());
            }
            return Ok(());
        }
        last = dump;
    }
    Err(format!("no dump saw both spinners holding their GILs; last:\n{last:#}").into())
}

fn shared_gil(python: &Python, enter: Enter) -> Result<(), Failed> {
    let (fixture, report) = record(python, "shared", enter)?;
    let check = || -> Result<(), String> {
        named_from_its_interpreter(&report, &fixture)?;
        let gils = report["gils"].as_array().ok_or("no gils")?;
        if gils.len() != 1 || gils[0]["own"] != false {
            return Err(format!("{} GILs, expected the main one alone", gils.len()));
        }
        let interpreters = gils[0]["interpreters"]
            .as_array()
            .ok_or("no interpreters")?;
        if interpreters.len() != 2 || interpreters[0].as_i64() != Some(0) {
            return Err(format!("main GIL interpreters {}", gils[0]["interpreters"]));
        }
        let (main, sub) = (fixture.tid("main-spinner"), fixture.tid("sub-spinner"));
        let (mut holds, mut waits) = (0.0, 0.0);
        for (tid, main_interpreter) in [(main, true), (sub, false)] {
            let row = thread_row(&report, tid).ok_or(format!("no row for {tid}"))?;
            if gil_of(&report, tid).map(|(i, _)| i) != Some(0) || row["gil"].as_u64() != Some(0) {
                return Err(format!("{tid} is not on the main GIL"));
            }
            let interpreter = row["interpreter"].as_i64().ok_or("no interpreter id")?;
            if (interpreter == 0) != main_interpreter {
                return Err(format!("{tid} is in interpreter {interpreter}"));
            }
            holds += fraction(row, "hold");
            waits += fraction(row, "wait");
        }
        if holds > ONE_GIL_HOLD_SUM {
            return Err(format!(
                "the spinners held {holds} together sharing one GIL"
            ));
        }
        if waits < SHARED_WAIT_SUM {
            return Err(format!(
                "the spinners waited {waits} together sharing one GIL"
            ));
        }
        Ok(())
    };
    check().map_err(|e| format!("{e}\n{}", context(&report)).into())
}
