//! pprof's profile format (`go tool pprof`, Grafana Pyroscope, Parca, Cloud Profiler): a
//! gzip-compressed protobuf `perftools.profiles.Profile` with two sample types per thread
//! state (samples, and their wall time in nanoseconds) and each stack's thread name, tid and
//! GIL as labels. Encoding is prost's; the messages are declared here from profile.proto's
//! field numbers, so the build needs no protobuf compiler.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use prost::Message;

use super::RenderOptions;
use crate::model::profile::ThreadProfile;
use crate::model::Recording;
use crate::sample::ThreadState;
use crate::stack::{Frame, FrameId, FrameKind, StackId};

/// `perftools.profiles.Profile` (the fields gilscope fills).
#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    /// Every string the profile uses, by index; the first is "".
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
    #[prost(int64, tag = "3")]
    num: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
    #[prost(int64, tag = "5")]
    start_line: i64,
}

/// The function of samples whose stack was not read.
const NO_STACK: &str = "[no Python stack]";

/// A profile being built: strings, functions and locations each stored once.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    /// (frame, process) -> location id; a location's function is its own.
    locations: HashMap<(Frame, usize), u64>,
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        if let Some(&at) = self.strings.get(text) {
            return at;
        }
        let at = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), at);
        at
    }

    /// The location of a frame: one function and one line each.
    fn location(&mut self, frame: &Frame, process: usize) -> u64 {
        if let Some(&id) = self.locations.get(&(frame.clone(), process)) {
            return id;
        }
        let file = match frame.kind {
            FrameKind::Native if frame.file.is_empty() => &frame.module,
            _ => &frame.file,
        };
        let name = self.string(&frame.function);
        let filename = self.string(file);
        let id = self.profile.location.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.profile.location.push(Location {
            id,
            line: vec![Line {
                function_id: id,
                line: i64::from(frame.line),
            }],
        });
        self.locations.insert((frame.clone(), process), id);
        id
    }
}

pub fn render(recording: &Recording) -> Vec<u8> {
    encode(std::slice::from_ref(recording))
}

/// The states a profile has sample types for: every state of the recordings' builds (a
/// pprof reader picks the sample type to show, so `--state` does not narrow them).
fn states_of(recordings: &[Recording]) -> Vec<ThreadState> {
    let free_threaded = recordings.iter().any(|r| r.target.free_threaded);
    let no_gil = recordings.iter().all(|r| r.profile.gil_ticks().no_gil());
    let mut states = super::shown_states(free_threaded, no_gil);
    // Waits cannot be told apart on some interpreters: no wait samples rather than zeros.
    if recordings.iter().all(|r| !r.target.wait_measured) {
        states.retain(|&s| s != ThreadState::Wait);
    }
    states
}

fn encode(recordings: &[Recording]) -> Vec<u8> {
    let mut builder = Builder::default();
    builder.string("");
    let states = states_of(recordings);
    for state in &states {
        let samples = builder.string(&format!("{}_samples", state.name()));
        let count = builder.string("count");
        builder.profile.sample_type.push(ValueType {
            r#type: samples,
            unit: count,
        });
        let time = builder.string(state.name());
        let nanoseconds = builder.string("nanoseconds");
        builder.profile.sample_type.push(ValueType {
            r#type: time,
            unit: nanoseconds,
        });
    }
    // Time waiting is what gilscope is for, where it is measured.
    let default = states
        .iter()
        .position(|&s| s == ThreadState::Wait)
        .unwrap_or(0);
    builder.profile.default_sample_type = builder.profile.sample_type[default * 2 + 1].r#type;
    let wall = builder.string("wall");
    let nanoseconds = builder.string("nanoseconds");
    builder.profile.period_type = Some(ValueType {
        r#type: wall,
        unit: nanoseconds,
    });
    let keys = [
        builder.string("thread_name"),
        builder.string("tid"),
        builder.string("gil"),
        builder.string("pid"),
    ];
    let mut duration_ns = 0u64;
    let mut period_ns = 0i64;
    for (process, recording) in recordings.iter().enumerate() {
        let profile = &recording.profile;
        let tick_ns = (profile.tick_s() * 1e9).round() as i64;
        period_ns = period_ns.max(tick_ns);
        duration_ns = duration_ns.max((profile.duration_s() * 1e9) as u64);
        for thread in profile.threads() {
            let labels = labels(&mut builder, recording, thread, keys);
            for (slot, &state) in states.iter().enumerate() {
                // Stacks in a stable order, so that the same recording makes the same file.
                let mut stacks: Vec<(&Option<StackId>, &u64)> =
                    thread.stacks[state.index()].iter().collect();
                stacks.sort();
                for (&stack, &n) in stacks {
                    if n == 0 {
                        continue;
                    }
                    let mut value = vec![0i64; states.len() * 2];
                    value[slot * 2] = n as i64;
                    value[slot * 2 + 1] = (n as i64).saturating_mul(tick_ns);
                    let location_id = locations(&mut builder, recording, process, stack);
                    builder.profile.sample.push(Sample {
                        location_id,
                        value,
                        label: labels.clone(),
                    });
                }
            }
        }
    }
    builder.profile.period = period_ns;
    builder.profile.duration_nanos = duration_ns as i64;
    builder.profile.time_nanos = start_wall_ns(recordings);
    let comment = builder.string(&format!(
        "gilscope {}: sample types are thread states (hold, wait, running, idle), in samples \
         and in wall time",
        env!("CARGO_PKG_VERSION")
    ));
    builder.profile.comment.push(comment);
    let bytes = builder.profile.encode_to_vec();
    let mut gzip = GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into memory cannot fail.
    let _ = gzip.write_all(&bytes);
    gzip.finish().unwrap_or_default()
}

/// The labels of a thread's samples: its name, tid, GIL and (with several) its process.
fn labels(
    builder: &mut Builder,
    recording: &Recording,
    thread: &ThreadProfile,
    [name_key, tid_key, gil_key, pid_key]: [i64; 4],
) -> Vec<Label> {
    let name = builder.string(&super::printable(thread.name()));
    let gils = recording.profile.gils();
    let gil = match thread.gil {
        Some((base, interpreter)) if gils.len() > 1 && base != gils[0].base => {
            interpreter.map_or_else(|| "own".to_string(), |id| format!("interpreter {id}"))
        }
        _ => "main".to_string(),
    };
    let gil = builder.string(&gil);
    vec![
        Label {
            key: name_key,
            str: name,
            num: 0,
        },
        Label {
            key: tid_key,
            str: 0,
            num: i64::from(thread.tid),
        },
        Label {
            key: gil_key,
            str: gil,
            num: 0,
        },
        Label {
            key: pid_key,
            str: 0,
            num: i64::from(recording.target.pid),
        },
    ]
}

/// A stack's locations, leaf first as pprof has them.
fn locations(
    builder: &mut Builder,
    recording: &Recording,
    process: usize,
    stack: Option<StackId>,
) -> Vec<u64> {
    let frames: Vec<FrameId> = match (&recording.stacks, stack) {
        (Some(table), Some(id)) => table.stack(id).to_vec(),
        _ => Vec::new(),
    };
    let table = recording.stacks.as_ref();
    let mut ids: Vec<u64> = frames
        .iter()
        .rev()
        .filter_map(|&f| table?.frame(f).cloned())
        .map(|frame| builder.location(&frame, process))
        .collect();
    if ids.is_empty() {
        ids.push(builder.location(&Frame::marker(NO_STACK), process));
    }
    ids
}

/// When the first recording began, as Unix time in ns: the recordings' clock is
/// CLOCK_MONOTONIC, mapped through the time now on both clocks.
fn start_wall_ns(recordings: &[Recording]) -> i64 {
    let Some(start) = recordings.iter().filter_map(|r| r.profile.start_ns).min() else {
        return 0;
    };
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let ago = crate::sample::monotonic_ns().saturating_sub(start);
    now_wall.saturating_sub(ago as i64)
}

/// This format, for [`super::Format::report`].
pub struct Pprof;

impl super::Report for Pprof {
    fn one(&self, recording: &Recording, _: &RenderOptions) -> Vec<u8> {
        render(recording)
    }

    fn several(&self, recordings: &[Recording], _: &RenderOptions) -> Vec<u8> {
        encode(recordings)
    }
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(bytes: &[u8]) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .expect("gzip");
        Profile::decode(raw.as_slice()).expect("protobuf")
    }

    #[test]
    fn each_state_has_samples_and_time_and_they_add_up_to_the_profile() {
        let recording = crate::dev::synthetic::recording(6, 1.0, 500.0);
        let profile = decode(&render(&recording));
        let name = |i: i64| profile.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|t| (name(t.r#type), name(t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                ("hold_samples", "count"),
                ("hold", "nanoseconds"),
                ("wait_samples", "count"),
                ("wait", "nanoseconds"),
                ("running_samples", "count"),
                ("running", "nanoseconds"),
                ("idle_samples", "count"),
                ("idle", "nanoseconds"),
            ]
        );
        assert_eq!(name(profile.default_sample_type), "wait");
        assert_eq!(profile.string_table[0], "");
        for (slot, state) in ThreadState::WITH_GIL.iter().enumerate() {
            let samples: i64 = profile.sample.iter().map(|s| s.value[slot * 2]).sum();
            let expected: u64 = recording
                .profile
                .threads()
                .iter()
                .map(|t| t.counts.get(*state))
                .sum();
            assert_eq!(samples as u64, expected, "{}", state.name());
        }
        // Every sample names its thread, and its leaf comes first.
        let sample = &profile.sample[0];
        let labels: Vec<&str> = sample.label.iter().map(|l| name(l.key)).collect();
        assert_eq!(labels, ["thread_name", "tid", "gil", "pid"]);
        let leaf = &profile.location[sample.location_id[0] as usize - 1];
        let function = &profile.function[leaf.line[0].function_id as usize - 1];
        assert!(
            name(function.name).starts_with("step_"),
            "{}",
            name(function.name)
        );
        assert!(name(function.filename).starts_with("/srv/app/"));
    }
}
