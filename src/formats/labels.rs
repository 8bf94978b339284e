//! How frames read in every format: the one place that turns a frame into words, with file
//! names made short as py-spy prints them. Formats receive typed frames and make labels
//! only as they write them; the full path stays in JSON and in tooltips.

use super::palette::Origin;
use crate::model::Recording;
use crate::stack::{Frame, FrameKind, Place, StackTable};

/// "function (file:line)" for Python frames, the file as the code object names it; "symbol
/// (module)" for native ones (their source line, where debug information gives one, is in
/// the JSON and the dump); a marker's own words.
pub fn frame(frame: &Frame) -> String {
    with_file(frame, &frame.file)
}

/// [`frame`] with the file name made short by `paths`: "spin (demo.py:28)",
/// "Thread.run (threading.py:1010)", "get (requests/api.py:73)". The function name comes
/// first, so that a label cut at its end keeps it.
pub fn short(frame: &Frame, paths: &Paths) -> String {
    with_file(frame, paths.short(&frame.file))
}

fn with_file(frame: &Frame, file: &str) -> String {
    match frame.kind {
        FrameKind::Marker => frame.function.to_string(),
        FrameKind::Native if !frame.module.is_empty() => {
            format!("{} ({})", frame.function, short_module(&frame.module))
        }
        FrameKind::Python if !file.is_empty() => {
            format!("{} ({}:{})", frame.function, file, frame.line)
        }
        _ => frame.function.to_string(),
    }
}

/// A frame with everything known of it: a native frame's source line as well as its module
/// ("gn_nap (gilnative.so, gilnative.c:46)"), for the dump's stacks.
pub fn frame_in_full(frame: &Frame) -> String {
    match frame.kind {
        FrameKind::Native if !frame.file.is_empty() => format!(
            "{} ({}, {}:{})",
            frame.function,
            short_module(&frame.module),
            short_module(&frame.file),
            frame.line
        ),
        _ => self::frame(frame),
    }
}

/// A stack summed up at its [`Place`]: "compress_block (libz.so.1) called from handler
/// (app.py:42)", or a Python frame alone; file names made short by `paths` where given,
/// else as the code objects name them.
pub fn place(table: &StackTable, place: Place, paths: Option<&Paths>) -> String {
    let Some(at) = table.frame(place.frame) else {
        return String::new();
    };
    let label = |f: &Frame| match paths {
        Some(paths) => short(f, paths),
        None => frame(f),
    };
    match place.caller.and_then(|c| table.frame(c)) {
        Some(caller) => format!("{} called from {}", label(at), label(caller)),
        None => label(at),
    }
}

/// A shared object's file name without its directory: `libz.so.1`.
pub fn short_module(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// Most `sys.path` entries used: a program that grows its path without end is cut short.
const MAX_PREFIXES: usize = 256;

/// Directories whose modules are named relative to them: the target's `sys.path` entries
/// (the script's directory, the standard library, site-packages...), longest first, so
/// that a file is named from the deepest entry it lies in, as Python imported it.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// Absolute directories, each ending in '/'.
    prefixes: Vec<String>,
}

impl Paths {
    /// The entries of `sys_path` that can shorten a name: absolute directories. Relative
    /// entries ("" for the current directory) are left out: files found through them have
    /// relative names already.
    pub fn new<'a>(sys_path: impl IntoIterator<Item = &'a str>) -> Paths {
        let mut prefixes: Vec<String> = sys_path
            .into_iter()
            .filter(|entry| entry.starts_with('/') && entry.len() > 1)
            .take(MAX_PREFIXES)
            .map(|entry| {
                let mut entry = entry.trim_end_matches('/').to_string();
                entry.push('/');
                entry
            })
            .collect();
        prefixes.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        prefixes.dedup();
        Paths { prefixes }
    }

    /// The `sys.path` of every recording shown together (processes of one program share
    /// most of theirs).
    pub fn of(recordings: &[Recording]) -> Paths {
        Paths::new(
            recordings
                .iter()
                .flat_map(|r| r.target.sys_path.iter().map(String::as_str)),
        )
    }

    /// `file` relative to the deepest `sys.path` entry it lies in; else after its last
    /// site-packages, dist-packages or `lib/pythonX.Y` directory (a target whose path could
    /// not be read); else as it is.
    pub fn short<'a>(&self, file: &'a str) -> &'a str {
        if let Some(rest) = self
            .prefixes
            .iter()
            .find_map(|prefix| file.strip_prefix(prefix.as_str()))
            .filter(|rest| !rest.is_empty())
        {
            return rest;
        }
        let mut start = None;
        let mut at = 0;
        for part in file.split('/') {
            let end = at + part.len();
            if is_library_directory(part) && end < file.len() {
                start = Some(end + 1);
            }
            at = end + 1;
        }
        match start {
            Some(start) if start < file.len() => &file[start..],
            _ => file,
        }
    }

    /// Where a frame's code comes from, for its colour.
    pub fn origin(&self, frame: &Frame) -> Origin {
        match frame.kind {
            FrameKind::Native => return Origin::Native,
            FrameKind::Marker => return Origin::Gilscope,
            FrameKind::Python => {}
        }
        let file = &*frame.file;
        let parts = || file.split('/');
        if parts().any(|p| p == "site-packages" || p == "dist-packages") {
            Origin::Package
        } else if file.starts_with("<frozen")
            || file.starts_with("<built-in")
            || parts().any(is_python_lib)
        {
            Origin::Stdlib
        } else {
            Origin::Program
        }
    }
}

/// "python3.12", "python2.7": the standard library's directory.
fn is_python_lib(part: &str) -> bool {
    part.strip_prefix("python")
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

fn is_library_directory(part: &str) -> bool {
    part == "site-packages" || part == "dist-packages" || is_python_lib(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::TRUNCATED;

    #[test]
    fn each_kind_of_frame_reads_as_users_expect() {
        let python = Frame::python("spin".into(), "a.py".into(), 7);
        assert_eq!(frame(&python), "spin (a.py:7)");
        assert_eq!(frame(&Frame::marker(TRUNCATED)), TRUNCATED);
        let native = Frame {
            kind: FrameKind::Native,
            function: "deflate".into(),
            file: "".into(),
            line: 0,
            module: "/usr/lib/libz.so.1".into(),
        };
        assert_eq!(frame(&native), "deflate (libz.so.1)");
        let with_line = Frame {
            file: "/src/zlib/deflate.c".into(),
            line: 42,
            ..native.clone()
        };
        assert_eq!(frame(&with_line), "deflate (libz.so.1)");
        assert_eq!(
            frame_in_full(&with_line),
            "deflate (libz.so.1, deflate.c:42)"
        );
        assert_eq!(short(&native, &Paths::default()), "deflate (libz.so.1)");
        let mut table = StackTable::new();
        let caller = table.intern_frame(Frame::python(
            "handler".into(),
            "/srv/app/app.py".into(),
            42,
        ));
        let at = table.intern_frame(with_line);
        assert_eq!(
            place(
                &table,
                Place {
                    frame: at,
                    caller: Some(caller)
                },
                Some(&Paths::new(["/srv/app"])),
            ),
            "deflate (libz.so.1) called from handler (app.py:42)"
        );
    }

    #[test]
    fn files_are_named_from_the_deepest_sys_path_entry_they_lie_in() {
        let paths = Paths::new([
            "/srv/app",
            "/usr/lib/python312.zip",
            "/usr/lib/python3.12",
            "/usr/lib/python3.12/lib-dynload",
            "/srv/venv/lib/python3.12/site-packages/",
            "",
            "relative/dir",
        ]);
        let cases = [
            ("/srv/app/demo.py", "demo.py"),
            ("/srv/app/pkg/mod.py", "pkg/mod.py"),
            ("/usr/lib/python3.12/threading.py", "threading.py"),
            (
                "/usr/lib/python3.12/concurrent/futures/thread.py",
                "concurrent/futures/thread.py",
            ),
            (
                "/srv/venv/lib/python3.12/site-packages/requests/api.py",
                "requests/api.py",
            ),
            // Not under any entry: after the last library directory, or whole.
            ("/opt/other/lib/python3.11/site-packages/x/y.py", "x/y.py"),
            ("/home/me/tool.py", "/home/me/tool.py"),
            ("relative/dir/a.py", "relative/dir/a.py"),
            (
                "<frozen importlib._bootstrap>",
                "<frozen importlib._bootstrap>",
            ),
            // A prefix that is the whole name, or a name like a prefix, is left alone.
            ("/srv/app/", "/srv/app/"),
            ("/srv/application.py", "/srv/application.py"),
        ];
        for (file, expected) in cases {
            assert_eq!(paths.short(file), expected, "{file}");
        }
        let f = Frame::python(
            "Thread.run".into(),
            "/usr/lib/python3.12/threading.py".into(),
            1010,
        );
        assert_eq!(short(&f, &paths), "Thread.run (threading.py:1010)");
        assert_eq!(paths.origin(&f), Origin::Stdlib);
        let lib = Frame::python(
            "get".into(),
            "/srv/venv/lib/python3.12/site-packages/requests/api.py".into(),
            1,
        );
        assert_eq!(paths.origin(&lib), Origin::Package);
        let own = Frame::python("spin".into(), "/srv/app/demo.py".into(), 1);
        assert_eq!(paths.origin(&own), Origin::Program);
    }
}
