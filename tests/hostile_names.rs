//! Hostile names (markup, quotes, separators, control characters, non-UTF-8 file names) from
//! fixtures/hostile_names.py, through every output format on every interpreter found.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed};
use serde_json::Value;

use common::{gilscope_ok, stdout_of, Fixture, Python};

use gilscope::formats::collapsed::clean;
use gilscope::formats::printable;

/// Seconds each format is recorded: both spinners hold the GIL about half of it.
const RECORD_S: &str = "1";

type Check = fn(&Hostile, &Fixture) -> Result<(), Failed>;

fn main() {
    let pythons = common::pythons();
    // The names are read on every version (the JSON check compares them exactly); how each
    // format escapes what was read does not depend on the version: one interpreter.
    let checks: [(&str, Check); 6] = [
        ("json_reports_and_dumps_keep_hostile_names_exactly", json),
        ("svgs_stay_well_formed_and_show_hostile_names_as_text", svgs),
        (
            "speedscope_and_chrome_traces_parse_and_name_hostile_frames",
            viewers,
        ),
        (
            "folded_stacks_keep_one_frame_per_name_and_one_stack_per_line",
            folded,
        ),
        ("text_dump_and_top_escape_control_characters", terminal),
        ("prometheus_labels_escape_hostile_thread_names", prometheus),
    ];
    let one = common::cli_only(&pythons);
    let mut trials = Vec::new();
    let family = common::matrix(&pythons);
    trials.extend(common::per_interpreter(
        &family,
        "a_function_name_of_10000_characters_is_cut_and_its_stack_kept",
        |python| {
            let _exclusive = common::exclusive();
            long_name(python).map(|()| Completion::Completed)
        },
    ));
    for (name, check) in checks {
        let on = if name.starts_with("json_") {
            &family
        } else {
            &one
        };
        trials.extend(common::per_interpreter(on, name, move |python| {
            let _exclusive = common::exclusive();
            let fx = Fixture::start(&python.path, "hostile_names", &["--duration", "120"])?;
            let hostile = Hostile::announced(&fx, python)?;
            check(&hostile, &fx).map(|()| Completion::Completed)
        }));
    }
    common::Suite::run_trials(trials);
}

/// The names the fixture announced, as gilscope must show them in JSON.
struct Hostile {
    /// (function, file) of every hostile frame.
    frames: Vec<(String, String)>,
    /// Role -> thread name.
    threads: Vec<(String, String)>,
    /// Role -> its innermost hostile functions, outermost first.
    stacks: Vec<(String, Vec<String>)>,
    python: String,
}

impl Hostile {
    fn announced(fx: &Fixture, python: &Python) -> Result<Hostile, Failed> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let facts = &fx.facts;
        let frames: Vec<(String, String)> = strings(&facts["functions"])
            .into_iter()
            .zip(strings(&facts["files"]))
            .collect();
        let threads: Vec<(String, String)> = ["holder", "rival"]
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    facts["threads"][r].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        let stacks = ["holder", "rival"]
            .iter()
            .map(|r| (r.to_string(), strings(&facts["stacks"][r])))
            .collect();
        if frames.len() != 4 || threads.iter().any(|(_, n)| n.is_empty()) {
            return Err(format!("the fixture announced no hostile names: {facts}").into());
        }
        Ok(Hostile {
            frames,
            threads,
            stacks,
            python: python.label.clone(),
        })
    }

    fn file_of(&self, function: &str) -> &str {
        self.frames
            .iter()
            .find(|(f, _)| f == function)
            .map_or("", |(_, file)| file)
    }

    /// "function (file:" : a frame's label up to its line number.
    fn label_start(&self, function: &str) -> String {
        format!("{function} ({}:", self.file_of(function))
    }

    /// Every hostile text the display formats must show (escaped).
    fn texts(&self) -> Vec<&str> {
        let frames = self.frames.iter().flat_map(|(f, file)| [f.as_str(), file]);
        frames
            .chain(self.threads.iter().map(|(_, n)| n.as_str()))
            .collect()
    }
}

fn record(fx: &Fixture, format: &str, extra: &[&str]) -> Result<String, Failed> {
    let pid = fx.pid.to_string();
    let mut args = vec![
        "record",
        "--pid",
        &pid,
        "--duration",
        RECORD_S,
        "--format",
        format,
    ];
    args.extend_from_slice(extra);
    Ok(stdout_of(&gilscope_ok(&args)?))
}

/// Control characters that may not reach a terminal or a file: all but the line ends between
/// lines (and, in XML, the whitespace the writer itself puts between elements); and the
/// characters that reorder or break a line: bidirectional overrides and isolates, and the
/// Unicode line and paragraph separators.
fn raw_controls(text: &str, allowed: &[char]) -> Vec<String> {
    let reorders_or_breaks = |c: char| {
        matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        ) || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    let mut found: Vec<String> = text
        .chars()
        .filter(|&c| (c.is_control() || reorders_or_breaks(c)) && !allowed.contains(&c))
        .map(|c| format!("{:?}", c))
        .collect();
    found.sort();
    found.dedup();
    found
}

fn no_raw_controls(what: &str, text: &str, allowed: &[char]) -> Result<(), Failed> {
    let found = raw_controls(text, allowed);
    if !found.is_empty() {
        return Err(format!("{what} has raw control characters {found:?}").into());
    }
    Ok(())
}

/// Every (function, file) pair anywhere in a JSON document, and every string.
fn walk<'a>(value: &'a Value, frames: &mut Vec<(&'a str, &'a str)>, strings: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let (Some(f), Some(file)) = (map.get("function"), map.get("file")) {
                if let (Some(f), Some(file)) = (f.as_str(), file.as_str()) {
                    frames.push((f, file));
                }
            }
            map.values().for_each(|v| walk(v, frames, strings));
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, frames, strings)),
        Value::String(s) => strings.push(s),
        _ => {}
    }
}

fn thread_name_of(threads: &Value, tid: i32, id: &str) -> Option<String> {
    threads
        .as_array()?
        .iter()
        .find(|t| t[id].as_i64() == Some(tid as i64))
        .and_then(|t| t["name"].as_str().map(String::from))
}

/// JSON report and dump: they parse, and every name is there exactly (a lone surrogate as
/// U+FFFD), each function with its own file.
fn json(hostile: &Hostile, fx: &Fixture) -> Result<(), Failed> {
    let report: Value = serde_json::from_str(&record(fx, "json", &[])?)
        .map_err(|e| format!("the JSON report does not parse: {e}"))?;
    let mut frames = Vec::new();
    walk(&report, &mut frames, &mut Vec::new());
    for (function, file) in &hostile.frames {
        if !frames.contains(&(function.as_str(), file.as_str())) {
            return Err(format!(
                "{}: the report has no frame {function:?} in {file:?}; it has {frames:?}",
                hostile.python
            )
            .into());
        }
    }
    for (role, name) in &hostile.threads {
        let shown = thread_name_of(&report["threads"], fx.tid(role), "native_id");
        if shown.as_deref() != Some(name.as_str()) {
            return Err(format!("the report names {role} {shown:?}, not {name:?}").into());
        }
    }
    // A dump catches a thread between two reads now and then: take the first whole one.
    let pid = fx.pid.to_string();
    let mut last = String::new();
    for _ in 0..20 {
        let out = stdout_of(&gilscope_ok(&["dump", "--pid", &pid, "--json"])?);
        let dump: Value = serde_json::from_str(&out)
            .map_err(|e| format!("the JSON dump does not parse: {e}\n{out}"))?;
        let threads = &dump["threads"];
        for (role, name) in &hostile.threads {
            let shown = thread_name_of(threads, fx.tid(role), "native_id");
            if shown.as_deref() != Some(name.as_str()) {
                return Err(format!("the dump names {role} {shown:?}, not {name:?}").into());
            }
        }
        let mut frames = Vec::new();
        walk(threads, &mut frames, &mut Vec::new());
        let whole = hostile
            .frames
            .iter()
            .all(|(f, file)| frames.contains(&(f.as_str(), file.as_str())));
        if whole {
            return Ok(());
        }
        last = format!("{frames:?}");
    }
    Err(format!(
        "{}: no dump of 20 had every hostile frame; the last had {last}",
        hostile.python
    )
    .into())
}

/// Every text node and attribute value of a well-formed XML document, decoded.
fn xml_texts(what: &str, svg: &str) -> Result<String, Failed> {
    no_raw_controls(what, svg, &['\n', '\t'])?;
    // inferno declares the SVG 1.1 DTD; its external subset is not read.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(svg, options)
        .map_err(|e| format!("{what} is not well-formed XML: {e}"))?;
    let mut texts = String::new();
    for node in document.descendants() {
        if node.is_element() && node.tag_name().name().eq_ignore_ascii_case("script") {
            // inferno's own script, in CDATA: it names no frame.
            if node.text().is_some_and(|t| t.contains("alert(")) {
                return Err(format!("{what} has a script element from a name").into());
            }
            continue;
        }
        if let Some(text) = node.text() {
            texts.push_str(text);
            texts.push('\n');
        }
        for attribute in node.attributes() {
            texts.push_str(attribute.value());
            texts.push('\n');
        }
    }
    Ok(texts)
}

/// Flamegraphs (both views) and the timeline SVG: well-formed XML whose decoded text shows
/// every name, control characters escaped, and no element made from a name.
fn svgs(hostile: &Hostile, fx: &Fixture) -> Result<(), Failed> {
    let threads = xml_texts("the flamegraph", &record(fx, "flamegraph", &[])?)?;
    for text in hostile.texts() {
        let shown = clean(text);
        if !threads.contains(&shown) {
            return Err(format!("the flamegraph does not show {shown:?}").into());
        }
    }
    let blame = xml_texts(
        "the blame flamegraph",
        &record(fx, "flamegraph", &["--view", "blame"])?,
    )?;
    for (function, _) in &hostile.frames {
        let shown = clean(&hostile.label_start(function));
        if !blame.contains(&shown) {
            return Err(format!("the blame flamegraph does not show {shown:?}").into());
        }
    }
    let timeline = xml_texts("the timeline", &record(fx, "timeline", &[])?)?;
    for (role, name) in &hostile.threads {
        // Rows are labelled with at most 33 characters of the name and tid.
        let start: String = printable(name).chars().take(20).collect();
        if !timeline.contains(&start) {
            return Err(format!("the timeline has no row for {role} ({start:?}...)").into());
        }
    }
    for (_, stack) in &hostile.stacks {
        let leaf = stack
            .last()
            .map(|f| hostile.label_start(f))
            .unwrap_or_default();
        if !timeline.contains(&printable(&leaf)) {
            return Err(format!("the timeline does not show {:?}", printable(&leaf)).into());
        }
    }
    Ok(())
}

/// speedscope files and Chrome traces: they parse, and name each hostile frame (speedscope:
/// function and file apart; Chrome trace: the frame's label in each span's stack).
fn viewers(hostile: &Hostile, fx: &Fixture) -> Result<(), Failed> {
    let speedscope: Value = serde_json::from_str(&record(fx, "speedscope", &[])?)
        .map_err(|e| format!("the speedscope file does not parse: {e}"))?;
    let frames = speedscope["shared"]["frames"]
        .as_array()
        .ok_or("no frames in the speedscope file")?;
    for (function, file) in &hostile.frames {
        let (name, file) = (clean(function), clean(file));
        let found = frames.iter().any(|f| {
            f["name"].as_str() == Some(name.as_str()) && f["file"].as_str() == Some(file.as_str())
        });
        if !found {
            return Err(
                format!("speedscope has no frame {name:?} in {file:?}; it has {frames:?}").into(),
            );
        }
    }
    let trace: Value = serde_json::from_str(&record(fx, "chrometrace", &[])?)
        .map_err(|e| format!("the Chrome trace does not parse: {e}"))?;
    let mut strings = Vec::new();
    walk(&trace, &mut Vec::new(), &mut strings);
    for (function, _) in &hostile.frames {
        let label = printable(&hostile.label_start(function));
        if !strings.iter().any(|s| s.starts_with(&label)) {
            return Err(format!("the Chrome trace has no frame {label:?}").into());
        }
    }
    for (role, name) in &hostile.threads {
        if !strings.contains(&printable(name).as_str()) {
            return Err(format!("the Chrome trace does not name {role} {name:?}").into());
        }
    }
    Ok(())
}

/// Folded stacks: each line is "frame;...;frame count"; a hostile name is one frame, and
/// each thread's hostile functions are its innermost frames in order.
fn folded(hostile: &Hostile, fx: &Fixture) -> Result<(), Failed> {
    let text = record(fx, "collapsed", &[])?;
    no_raw_controls("the folded stacks", &text, &['\n'])?;
    let mut stacks = Vec::new();
    for line in text.lines() {
        let (path, count) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("a folded line without a count: {line:?}"))?;
        if count.parse::<u64>().is_err() {
            return Err(format!("a folded line with a bad count: {line:?}").into());
        }
        stacks.push(path.split(';').collect::<Vec<&str>>());
    }
    for ((role, name), (_, functions)) in hostile.threads.iter().zip(&hostile.stacks) {
        let head = clean(&format!("{name} ({})", fx.tid(role)));
        let expected: Vec<String> = functions
            .iter()
            .map(|f| clean(&hostile.label_start(f)))
            .collect();
        let found = stacks.iter().any(|frames| {
            frames.first() == Some(&head.as_str())
                && frames.get(1) == Some(&"[hold]")
                && frames.len() >= 2 + expected.len()
                && frames[frames.len() - expected.len()..]
                    .iter()
                    .zip(&expected)
                    .all(|(frame, start)| frame.starts_with(start.as_str()))
        });
        if !found {
            return Err(format!(
                "no folded stack of {role} is {head:?};[hold];...;{}\n{text}",
                expected.join(";")
            )
            .into());
        }
    }
    Ok(())
}

/// A gilscope command whose stdout or stderr lines are read as they come; killed when dropped.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str], stderr: bool) -> Result<Running, Failed> {
        let mut child = Command::new(common::gilscope_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start gilscope {args:?}: {e}"))?;
        let stream: Box<dyn Read + Send> = if stderr {
            Box::new(child.stderr.take().ok_or("no stderr")?)
        } else {
            Box::new(child.stdout.take().ok_or("no stdout")?)
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        Ok(Running { child, lines })
    }

    /// The first line for which `done` holds, within `timeout`.
    fn line(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> Result<String, Failed> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if done(&line) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => {
                    return Err(format!("no expected line in {timeout:?}; saw {seen:?}").into())
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Text report, dump (plain and sampled) and top's plain lines: no control character but the
/// line ends, and each name shown with its control characters escaped.
fn terminal(hostile: &Hostile, fx: &Fixture) -> Result<(), Failed> {
    let report = record(fx, "text", &[])?;
    no_raw_controls("the text report", &report, &['\n'])?;
    for (_, stack) in &hostile.stacks {
        for function in stack {
            let shown = printable(function);
            if !report.contains(&shown) {
                return Err(format!("the text report does not show {shown:?}\n{report}").into());
            }
        }
    }
    for (_, name) in &hostile.threads {
        if !report.contains(&printable(name)) {
            return Err(format!("the text report does not name {name:?}\n{report}").into());
        }
    }
    let pid = fx.pid.to_string();
    let dump = stdout_of(&gilscope_ok(&[
        "dump", "--pid", &pid, "--sample", RECORD_S,
    ])?);
    no_raw_controls("the dump", &dump, &['\n'])?;
    for (_, name) in &hostile.threads {
        if !dump.contains(&printable(name)) {
            return Err(format!("the dump does not name {name:?}\n{dump}").into());
        }
    }
    let top = Running::start(&["top", "--pid", &pid], false)?;
    let holder = printable(&hostile.threads[0].1);
    let line = top.line(Duration::from_secs(10), |l| l.contains(&holder))?;
    no_raw_controls("top's plain line", &line, &['\n'])
}

/// `gilscope serve`: every sample line's labels are in the exposition format's syntax, and
/// the thread label holds each thread's name exactly once unescaped.
fn prometheus(hostile: &Hostile, fx: &Fixture) -> Result<(), Failed> {
    let pid = fx.pid.to_string();
    let serve = Running::start(&["serve", "--pid", &pid, "--listen", "127.0.0.1:0"], true)?;
    let line = serve.line(Duration::from_secs(15), |l| {
        l.contains("serving metrics on http://")
    })?;
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.trim_end().strip_suffix("/metrics"))
        .ok_or_else(|| format!("no address in {line:?}"))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = scrape(&address)?;
        let mut names = Vec::new();
        for line in body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let labels = sample_labels(line)
                .map_err(|e| format!("a bad sample line ({e}): {line:?}\n{body}"))?;
            names.extend(
                labels
                    .into_iter()
                    .filter(|(key, _)| key == "thread")
                    .map(|(_, value)| value),
            );
        }
        if hostile.threads.iter().all(|(_, n)| names.contains(n)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the thread labels are {names:?}, without {:?}\n{body}",
                hostile.threads
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn scrape(address: &str) -> Result<String, Failed> {
    let mut stream =
        TcpStream::connect(address).map_err(|e| format!("connect to {address}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {response:?}"))?;
    Ok(body.to_string())
}

/// The labels of an exposition-format sample line `name{key="value",...} number`, values
/// unescaped (`\\`, `\"` and `\n` are the only escapes; a raw newline cannot occur here).
fn sample_labels(line: &str) -> Result<Vec<(String, String)>, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let name_end = line.find(|c| !is_name(c)).unwrap_or(line.len());
    if name_end == 0 {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let key_end = rest.find(|c| !is_name(c)).unwrap_or(rest.len());
            let key = &rest[..key_end];
            let mut chars = rest[key_end..]
                .strip_prefix("=\"")
                .ok_or("no =\" after a label name")?
                .char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (_, '\\') => match chars.next().ok_or("a trailing backslash")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("an unknown escape \\{other}")),
                    },
                    (at, '"') => break at,
                    (_, c) => value.push(c),
                }
            };
            let after_value = &rest[key_end..][2 + end + 1..];
            labels.push((key.to_string(), value));
            rest = after_value.strip_prefix(',').unwrap_or(after_value);
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let number = value.split(' ').next().unwrap_or("");
    if number.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&number) {
        return Err(format!("a bad value {number:?}"));
    }
    Ok(labels)
}

/// A spinner inside a function whose name has 10,000 characters: `dump` shows its stack with
/// the name cut after 4,096 characters and marked, and the text report places its samples
/// there. Before, every read of that stack failed ("stack changed while being read") and the
/// text report said nothing of it.
fn long_name(python: &Python) -> Result<(), Failed> {
    let fx = Fixture::start(&python.path, "long_name", &["--duration", "60"])?;
    let cut = format!("{}...[5904 more characters]", "x".repeat(4096));
    let pid = fx.pid.to_string();
    let dump = stdout_of(&gilscope_ok(&["dump", "--pid", &pid])?);
    if !dump.contains(&cut) {
        return Err(format!("{}: the dump has no cut name:\n{dump:.600}", python.label).into());
    }
    let report = stdout_of(&gilscope_ok(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        RECORD_S,
    ])?);
    let placed = report
        .lines()
        .any(|l| l.trim_start().starts_with("hold") && l.contains(&cut));
    if !placed {
        return Err(format!(
            "{}: no hold location in the cut name:\n{report:.2000}",
            python.label
        )
        .into());
    }
    Ok(())
}
