//! Folded stacks ("frame;frame;frame count"): the one stack view every stack format is built
//! from, for the per-thread view (thread, state, stack) and the blame view (holder, stack).
//! Paths are typed nodes; each format makes its labels from them as it writes.

use std::collections::BTreeMap;

use super::labels::Paths;
use super::{RenderOptions, View};
use crate::model::{Recording, TargetInfo};
use crate::sample::ThreadState;
use crate::stack::{Frame, StackId};

/// The root frame of waiters counted while no thread held the GIL (a hand-off under way).
pub const UNHELD: &str = "[nobody held the GIL: hand-off to a thread not yet running]";

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

/// One step of a folded path: what it stands for, labelled only when a format writes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// A process, at the root when several are shown: "command (pid N)".
    Process(String),
    /// The GIL a thread's states were judged against, with several GILs.
    Gil(String),
    /// A thread: "name (tid)".
    Thread(String),
    /// A thread's state at the samples below it.
    State(ThreadState),
    /// A frame of a stack.
    Frame(Frame),
    /// Waiters counted while nobody held the GIL.
    Unheld,
}

impl Node {
    /// The node as folded stacks and flamegraphs name it (made safe for the folded format),
    /// file names made short by `paths`.
    pub fn label(&self, paths: &Paths) -> String {
        match self {
            Node::Process(label) | Node::Gil(label) | Node::Thread(label) => label.clone(),
            Node::State(state) => state_label(*state),
            Node::Frame(frame) => clean(&super::labels::short(frame, paths)),
            Node::Unheld => UNHELD.to_string(),
        }
    }

    /// The node's label with a frame's file named in full (for tooltips); None where it
    /// reads as [`Node::label`] does.
    pub fn full_label(&self, paths: &Paths) -> Option<String> {
        match self {
            Node::Frame(frame) if paths.short(&frame.file) != &*frame.file => {
                Some(clean(&super::labels::frame(frame)))
            }
            _ => None,
        }
    }
}

/// A folded path and its weight, root first.
pub type Folded = BTreeMap<Vec<Node>, u64>;

/// The frames of a stack, root first (nothing when there is no stack or no table).
fn frame_nodes(recording: &Recording, stack: Option<StackId>) -> Vec<Node> {
    match (&recording.stacks, stack) {
        (Some(table), Some(id)) => table.frames(id).cloned().map(Node::Frame).collect(),
        _ => Vec::new(),
    }
}

/// Every folded stack of the chosen view with its weight.
pub fn folded(recording: &Recording, options: &RenderOptions) -> Folded {
    let mut stacks = Folded::new();
    let profile = &recording.profile;
    match options.view {
        View::Threads => {
            for thread in profile.threads() {
                let head = Node::Thread(thread_label(thread.name(), thread.tid));
                let root = gil_root(recording, thread.gil).map(Node::Gil);
                for &state in &options.states {
                    for (&stack, &count) in &thread.stacks[state.index()] {
                        let mut path: Vec<Node> = root.iter().cloned().collect();
                        path.extend([head.clone(), Node::State(state)]);
                        path.extend(frame_nodes(recording, stack));
                        *stacks.entry(path).or_default() += count;
                    }
                }
            }
        }
        View::Blame => {
            for blame in profile.blame() {
                let mut path: Vec<Node> = gil_root(recording, blame.holder.gil)
                    .map(Node::Gil)
                    .into_iter()
                    .collect();
                path.push(Node::Thread(thread_label(
                    blame.holder.name(),
                    blame.holder.tid,
                )));
                path.extend(frame_nodes(recording, blame.stack));
                *stacks.entry(path).or_default() += blame.waiter_ticks;
            }
            if profile.blame_unheld > 0 {
                *stacks.entry(vec![Node::Unheld]).or_default() += profile.blame_unheld;
            }
        }
    }
    stacks.retain(|_, count| *count > 0);
    stacks
}

/// Every folded stack of several processes, each under its process's root frame.
pub fn folded_processes(recordings: &[Recording], options: &RenderOptions) -> Folded {
    let mut stacks = Folded::new();
    for recording in recordings {
        let head = Node::Process(process_label(&recording.target));
        for (mut path, count) in folded(recording, options) {
            path.insert(0, head.clone());
            *stacks.entry(path).or_default() += count;
        }
    }
    stacks
}

/// The folded-stack file: one "frame;frame count" line per stack.
pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    let paths = Paths::of(std::slice::from_ref(recording));
    lines(folded(recording, options), &paths)
}

/// The folded-stack file of several processes, each process a root frame.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    lines(
        folded_processes(recordings, options),
        &Paths::of(recordings),
    )
}

/// One "label;label count" line per path, sorted by their labels; paths whose labels are
/// the same (two frames that read alike) are one line.
pub fn lines(stacks: Folded, paths: &Paths) -> String {
    let mut labelled: BTreeMap<String, u64> = BTreeMap::new();
    for (path, count) in stacks {
        let labels: Vec<String> = path.iter().map(|node| node.label(paths)).collect();
        *labelled.entry(labels.join(";")).or_default() += count;
    }
    let mut out = String::new();
    for (path, count) in labelled {
        out.push_str(&path);
        out.push(' ');
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}

/// This format, for [`super::Format::report`].
pub struct Collapsed;

impl super::Report for Collapsed {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8> {
        render(recording, options).into_bytes()
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8> {
        render_processes(recordings, options).into_bytes()
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
