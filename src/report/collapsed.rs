//! Folded stacks ("frame;frame;frame count"): the one stack view every stack format is built
//! from, for the per-thread view (thread, state, stack) and the blame view (holder, stack).

use std::collections::BTreeMap;

use super::{Recording, RenderOptions, View};
use crate::python::stack::StackId;
use crate::sample::ThreadState;

/// The root frame of waiters counted while no thread held the GIL (a hand-off under way).
pub const UNHELD: &str = "[GIL not held: hand-off]";

/// A frame label made safe for the folded format: `;` separates frames and a line ends a
/// stack, so neither may appear inside a label.
pub fn clean(label: &str) -> String {
    label
        .chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect()
}

/// "name (tid)": how a thread heads its stacks.
pub fn thread_label(name: &str, tid: i32) -> String {
    let name = if name.is_empty() { "thread" } else { name };
    clean(&format!("{name} ({tid})"))
}

/// The pseudo-frame of a state under each thread.
pub fn state_label(state: ThreadState) -> String {
    format!("[{}]", state.name())
}

/// The frames of a stack, root first (nothing when there is no stack or no table).
fn frame_labels(recording: &Recording, stack: Option<StackId>) -> Vec<String> {
    match (&recording.stacks, stack) {
        (Some(table), Some(id)) => table.frames(id).map(|f| clean(&f.label())).collect(),
        _ => Vec::new(),
    }
}

/// Every folded stack of the chosen view with its weight, in a stable order.
pub fn folded(recording: &Recording, options: &RenderOptions) -> BTreeMap<Vec<String>, u64> {
    let mut stacks: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let profile = &recording.profile;
    match options.view {
        View::Threads => {
            for thread in profile.threads() {
                let head = thread_label(thread.name(), thread.tid);
                for &state in &options.states {
                    for (&stack, &count) in &thread.stacks[state.index()] {
                        let mut path = vec![head.clone(), state_label(state)];
                        path.extend(frame_labels(recording, stack));
                        *stacks.entry(path).or_default() += count;
                    }
                }
            }
        }
        View::Blame => {
            for blame in profile.blame() {
                let mut path = vec![thread_label(blame.holder.name(), blame.holder.tid)];
                path.extend(frame_labels(recording, blame.stack));
                *stacks.entry(path).or_default() += blame.waiter_ticks;
            }
            if profile.blame_unheld > 0 {
                *stacks.entry(vec![UNHELD.to_string()]).or_default() += profile.blame_unheld;
            }
        }
    }
    stacks.retain(|_, count| *count > 0);
    stacks
}

/// The folded-stack file: one "frame;frame count" line per stack.
pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    let mut out = String::new();
    for (path, count) in folded(recording, options) {
        out.push_str(&path.join(";"));
        out.push(' ');
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}
