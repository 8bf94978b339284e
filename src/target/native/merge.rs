//! The merged stack as py-spy shows it: the native stack with each call of the interpreter's
//! evaluation loop replaced by the Python frames that call runs, in order. A pure function:
//! python/ says which Python frames each call runs; nothing here reads the target.
//!
//! How many Python frames one call of the evaluation loop runs, by version (python/ applies
//! it when it walks the frames):
//! - 3.6-3.10: exactly one. Each `PyFrameObject` is run by its own call of
//!   `_PyEval_EvalFrameDefault` (2.7: `PyEval_EvalFrameEx`); runs carry no anchor and are
//!   matched to evaluation frames by name, innermost first.
//! - 3.11: one call runs a Python-to-Python call chain in place; its first frame has
//!   `is_entry` set. Each call keeps a `_PyCFrame` as a local (on its C stack) whose
//!   `current_frame` is its innermost Python frame: the `tstate->cframe` chain gives each run
//!   an anchor, so the evaluation frame is found by stack address, without symbols.
//! - 3.12+: each call pushes an entry frame of its own C stack (`owner ==
//!   FRAME_OWNED_BY_CSTACK`, 3.14+ `FRAME_OWNED_BY_INTERPRETER`, both 3) below the Python
//!   frames it runs: that shim's address is the anchor of the run above it.

/// The Python frames one call of the evaluation loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonRun<P> {
    /// Innermost first.
    pub frames: Vec<P>,
    /// An address in that call's own stack frame (a local variable of it), where the
    /// version has one: it finds the call among the native frames without symbols.
    pub anchor: Option<u64>,
}

/// One frame of a merged stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged<P> {
    /// `native[i]`, kept.
    Native(usize),
    Python(P),
}

/// How well the native and Python stacks fitted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Every run found its evaluation call, and no evaluation call was left without a run.
    Exact,
    /// Some runs found no evaluation call among the native frames (the native stack was cut
    /// short, or the two stacks were read at different moments): they are put at the root,
    /// outside every native frame, in their order.
    Partial { unplaced_runs: usize },
}

/// Is a function by this name the interpreter's evaluation loop? (`.cold` and other
/// compiler clones of it are parts of the same call.) On Python 3, `PyEval_EvalFrameEx` is
/// only a wrapper that calls the loop: counting it would give one Python frame two calls.
pub fn is_evaluator_name(name: &str, python2: bool) -> bool {
    let base = name.split('.').next().unwrap_or(name);
    match python2 {
        false => base == "_PyEval_EvalFrameDefault",
        true => base == "PyEval_EvalFrameEx",
    }
}

/// Merge a native stack (innermost first) with the Python runs of the same thread (innermost
/// first). `is_evaluator(i)` says whether `native[i]` is the evaluation loop by its name;
/// frames found through an anchor need no name. The result is root first.
///
/// Evaluation frames whose run is placed are replaced by the run's frames; those without
/// one stay as native frames. Runs matched by name go to the innermost evaluation frames
/// in order, never across an anchored one.
pub fn merge<P: Clone>(
    native: &[super::NativeFrame],
    is_evaluator: impl Fn(usize) -> bool,
    runs: &[PythonRun<P>],
) -> (Vec<Merged<P>>, Fit) {
    // A run without Python frames has nothing to put in an evaluation call's place, and its
    // anchor need not be on the C stack at all: 3.15 ends every thread's frame chain with a
    // sentinel entry frame kept in the thread state (the heap), which no call owns. Counting
    // it as unplaced would call every whole native stack of 3.15 a misfit.
    let runs: Vec<&PythonRun<P>> = runs.iter().filter(|r| !r.frames.is_empty()).collect();
    // placed[i] = the run that native frame i runs.
    let mut placed: Vec<Option<usize>> = vec![None; native.len()];
    let mut cursor = 0;
    let mut unplaced = runs.len();
    for (r, run) in runs.iter().enumerate() {
        let found = match run.anchor {
            Some(anchor) => (cursor..native.len()).find(|&i| native[i].holds(anchor)),
            None => (cursor..native.len()).find(|&i| is_evaluator(i)),
        };
        match found {
            Some(i) => {
                placed[i] = Some(r);
                cursor = i + 1;
                unplaced = runs.len() - r - 1;
            }
            None => break,
        }
    }
    let mut merged =
        Vec::with_capacity(native.len() + runs.iter().map(|r| r.frames.len()).sum::<usize>());
    // Root first: runs that found no place, outermost first, then the native frames.
    for run in runs[runs.len() - unplaced..].iter().rev() {
        merged.extend(run.frames.iter().rev().cloned().map(Merged::Python));
    }
    for i in (0..native.len()).rev() {
        match placed[i] {
            Some(r) => merged.extend(runs[r].frames.iter().rev().cloned().map(Merged::Python)),
            None => merged.push(Merged::Native(i)),
        }
    }
    let leftover_evaluators = (0..native.len()).any(|i| placed[i].is_none() && is_evaluator(i));
    let fit = if unplaced > 0 {
        Fit::Partial {
            unplaced_runs: unplaced,
        }
    } else if leftover_evaluators {
        Fit::Partial { unplaced_runs: 0 }
    } else {
        Fit::Exact
    };
    (merged, fit)
}

#[cfg(test)]
mod tests {
    use super::super::NativeFrame;
    use super::*;

    /// Native frames named innermost first, each 0x100 bytes of stack above the last.
    fn native(names: &[&str]) -> (Vec<NativeFrame>, Vec<String>) {
        let frames = (0..names.len() as u64)
            .map(|i| NativeFrame {
                address: 0x1000 + i,
                is_return: i > 0,
                stack_pointer: 0x7000_0000 + 0x100 * i,
                frame_end: Some(0x7000_0000 + 0x100 * (i + 1)),
            })
            .collect();
        (frames, names.iter().map(|n| n.to_string()).collect())
    }

    fn show(merged: &[Merged<&str>], names: &[String]) -> Vec<String> {
        merged
            .iter()
            .map(|m| match m {
                Merged::Native(i) => names[*i].clone(),
                Merged::Python(p) => format!("py:{p}"),
            })
            .collect()
    }

    fn run(frames: &[&'static str], anchor: Option<u64>) -> PythonRun<&'static str> {
        PythonRun {
            frames: frames.to_vec(),
            anchor,
        }
    }

    #[test]
    fn one_frame_per_evaluation_call_replaces_each_by_name_in_order() {
        // 3.10: handler -> C -> callback, the C thread's own frames around them.
        let (frames, names) = native(&[
            "usleep",
            "hold_sleeping",
            "cfunction_call",
            "_PyEval_EvalFrameDefault",
            "_PyFunction_Vectorcall",
            "_PyEval_EvalFrameDefault",
            "PyEval_EvalCode",
            "main",
        ]);
        let is_eval = |i: usize| is_evaluator_name(&names[i], false);
        let runs = [run(&["handler"], None), run(&["<module>"], None)];
        let (merged, fit) = merge(&frames, is_eval, &runs);
        assert_eq!(
            show(&merged, &names),
            [
                "main",
                "PyEval_EvalCode",
                "py:<module>",
                "_PyFunction_Vectorcall",
                "py:handler",
                "cfunction_call",
                "hold_sleeping",
                "usleep"
            ]
        );
        assert_eq!(fit, Fit::Exact);
    }

    #[test]
    fn an_anchored_run_finds_its_call_by_stack_address_without_a_name() {
        // Stripped 3.11: no evaluation frame has a name; the cframes locate them.
        let (frames, names) = native(&["read", "blocking", "?", "?", "?", "start"]);
        // Frame i holds 0x7000_0000 + 0x100 * i up to the next: the runs' cframes are locals
        // of frames 2 and 4.
        let runs = [
            run(&["inner", "middle"], Some(0x7000_0210)),
            run(&["outer"], Some(0x7000_0480)),
        ];
        let (merged, fit) = merge(&frames, |_| false, &runs);
        assert_eq!(
            show(&merged, &names),
            [
                "start",
                "py:outer",
                "?",
                "py:middle",
                "py:inner",
                "blocking",
                "read"
            ]
        );
        assert_eq!(fit, Fit::Exact);
    }

    #[test]
    fn runs_beyond_a_cut_native_stack_go_to_the_root_in_order() {
        // A perf copy that ended after the innermost evaluation call.
        let (frames, names) = native(&["compress_block", "_PyEval_EvalFrameDefault", "caller"]);
        let is_eval = |i: usize| is_evaluator_name(&names[i], false);
        let runs = [
            run(&["leaf"], None),
            run(&["mid"], None),
            run(&["<module>"], None),
        ];
        let (merged, fit) = merge(&frames, is_eval, &runs);
        assert_eq!(
            show(&merged, &names),
            [
                "py:<module>",
                "py:mid",
                "caller",
                "py:leaf",
                "compress_block"
            ]
        );
        assert_eq!(fit, Fit::Partial { unplaced_runs: 2 });
    }

    #[test]
    fn an_evaluation_call_without_a_run_stays_and_the_fit_says_so() {
        let (frames, names) =
            native(&["_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault.cold"]);
        let is_eval = |i: usize| is_evaluator_name(&names[i], false);
        let (merged, fit) = merge(&frames, is_eval, &[run(&["only"], None)]);
        assert_eq!(
            show(&merged, &names),
            ["_PyEval_EvalFrameDefault.cold", "py:only"]
        );
        assert_eq!(fit, Fit::Partial { unplaced_runs: 0 });
    }

    #[test]
    fn an_anchor_no_frame_holds_never_matches_and_later_runs_keep_their_order() {
        let (frames, names) = native(&["a", "_PyEval_EvalFrameDefault", "b"]);
        let is_eval = |i: usize| is_evaluator_name(&names[i], false);
        let runs = [run(&["x"], Some(0x1)), run(&["y"], None)];
        let (merged, fit) = merge(&frames, is_eval, &runs);
        // The first run cannot be placed, so neither can the one outside it.
        assert_eq!(
            show(&merged, &names),
            ["py:y", "py:x", "b", "_PyEval_EvalFrameDefault", "a"]
        );
        assert_eq!(fit, Fit::Partial { unplaced_runs: 2 });
    }

    #[test]
    fn a_run_without_python_frames_is_not_left_unplaced() {
        // 3.15: the outermost "run" is the thread state's own sentinel entry frame, anchored
        // in the heap, with no Python frame; the stack still fits exactly.
        let (frames, names) = native(&["burn", "?", "?", "start"]);
        let runs = [
            run(&["inner"], Some(0x7000_0110)),
            run(&["outer"], Some(0x7000_0210)),
            run(&[], Some(0x40bd_f748)),
        ];
        let (merged, fit) = merge(&frames, |_| false, &runs);
        assert_eq!(
            show(&merged, &names),
            ["start", "py:outer", "py:inner", "burn"]
        );
        assert_eq!(fit, Fit::Exact);
    }

    #[test]
    fn evaluator_names_include_clones_and_differ_on_2_7() {
        assert!(is_evaluator_name("_PyEval_EvalFrameDefault", false));
        assert!(is_evaluator_name("_PyEval_EvalFrameDefault.cold", false));
        assert!(!is_evaluator_name("PyEval_EvalFrameEx", false));
        assert!(is_evaluator_name("PyEval_EvalFrameEx", true));
        assert!(!is_evaluator_name("_PyEval_EvalFrame", false));
        assert!(!is_evaluator_name("PyEval_EvalCode", false));
    }
}
