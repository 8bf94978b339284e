//! Folded stacks ("frame;frame;frame count"): the one stack view every stack format is built
//! from, for the per-thread view (thread, state, stack) and the blame view (holder, stack).

use std::collections::BTreeMap;

use super::{RenderOptions, View};
use crate::model::{Recording, TargetInfo};
use crate::sample::ThreadState;
use crate::stack::StackId;

/// The root frame of waiters counted while no thread held the GIL (a hand-off under way).
pub const UNHELD: &str = "[GIL not held: hand-off]";

/// A frame label made safe for the folded format: `;` separates frames and a line ends a
/// stack, so a `;` becomes `:` and control characters are escaped as in the text report
/// (`\n`, `\u{1b}`): the SVG drawn from these lines may hold no raw control character either.
pub fn clean(label: &str) -> String {
    super::printable(label).replace(';', ":")
}

/// "name (tid)": how a thread heads its stacks.
pub fn thread_label(name: &str, tid: i32) -> String {
    let name = if name.is_empty() { "thread" } else { name };
    clean(&format!("{name} ({tid})"))
}

/// Characters of a command line shown in a process's root frame.
const COMMAND_CHARS: usize = 60;

/// "command (pid N)": how a process heads its threads when several are shown.
pub fn process_label(target: &TargetInfo) -> String {
    let mut command: String = target.command_line.chars().take(COMMAND_CHARS).collect();
    if command.len() < target.command_line.len() {
        command.push_str("...");
    }
    if command.is_empty() {
        command = "python".into();
    }
    clean(&format!("{command} (pid {})", target.pid))
}

/// The pseudo-frame of a state under each thread.
pub fn state_label(state: ThreadState) -> String {
    format!("[{}]", state.name())
}

/// The root frame of a thread's stacks in a process with more than one GIL (3.12+
/// subinterpreters with their own): which GIL its states were judged against. None with one
/// GIL, where stacks start at the thread as always.
fn gil_root(recording: &Recording, gil: Option<(u64, Option<i64>)>) -> Option<String> {
    let gils = recording.profile.gils();
    if gils.len() < 2 {
        return None;
    }
    Some(match gil {
        Some((base, Some(id))) if base != gils[0].base => {
            format!("[own GIL of interpreter {id}]")
        }
        Some((base, None)) if base != gils[0].base => "[own GIL]".to_string(),
        // The main GIL; a thread without a thread state is judged against it too.
        _ => MAIN_GIL.to_string(),
    })
}

/// The root frame of threads on the main interpreter's GIL, with more than one GIL.
pub const MAIN_GIL: &str = "[main GIL]";

/// The frames of a stack, root first (nothing when there is no stack or no table).
fn frame_labels(recording: &Recording, stack: Option<StackId>) -> Vec<String> {
    match (&recording.stacks, stack) {
        (Some(table), Some(id)) => table
            .frames(id)
            .map(|f| clean(&crate::formats::labels::frame(f)))
            .collect(),
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
                let root = gil_root(recording, thread.gil);
                for &state in &options.states {
                    for (&stack, &count) in &thread.stacks[state.index()] {
                        let mut path: Vec<String> = root.iter().cloned().collect();
                        path.extend([head.clone(), state_label(state)]);
                        path.extend(frame_labels(recording, stack));
                        *stacks.entry(path).or_default() += count;
                    }
                }
            }
        }
        View::Blame => {
            for blame in profile.blame() {
                let mut path: Vec<String> =
                    gil_root(recording, blame.holder.gil).into_iter().collect();
                path.push(thread_label(blame.holder.name(), blame.holder.tid));
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

/// Every folded stack of several processes, each under its process's root frame.
pub fn folded_processes(
    recordings: &[Recording],
    options: &RenderOptions,
) -> BTreeMap<Vec<String>, u64> {
    let mut stacks = BTreeMap::new();
    for recording in recordings {
        let head = process_label(&recording.target);
        for (mut path, count) in folded(recording, options) {
            path.insert(0, head.clone());
            *stacks.entry(path).or_default() += count;
        }
    }
    stacks
}

/// The folded-stack file: one "frame;frame count" line per stack.
pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    lines(folded(recording, options))
}

/// The folded-stack file of several processes, each process a root frame.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    lines(folded_processes(recordings, options))
}

fn lines(stacks: BTreeMap<Vec<String>, u64>) -> String {
    let mut out = String::new();
    for (path, count) in stacks {
        out.push_str(&path.join(";"));
        out.push(' ');
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}

/// This format, for [`super::Format::report`].
pub struct Collapsed;

impl super::Report for Collapsed {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> String {
        render(recording, options)
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> String {
        render_processes(recordings, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_labels_stay_one_frame_on_one_line() {
        assert_eq!(
            clean("a;b\nc\td\u{1b}[2J\0 (f;x.py:3)"),
            "a:b\\nc\\td\\u{1b}[2J\\u{0} (f:x.py:3)"
        );
    }
}
