//! How frames read in every format: the one place that turns a frame into words. Formats
//! receive typed frames and make labels only as they write them.

use crate::stack::{Frame, FrameKind, Place, StackTable};

/// "function (file:line)" for Python frames; "symbol (module)" for native ones (their source
/// line, where debug information gives one, is in the JSON and the dump); a marker's own
/// words.
pub fn frame(frame: &Frame) -> String {
    match frame.kind {
        FrameKind::Marker => frame.function.to_string(),
        FrameKind::Native if !frame.module.is_empty() => {
            format!("{} ({})", frame.function, short_module(&frame.module))
        }
        FrameKind::Python if !frame.file.is_empty() => {
            format!("{} ({}:{})", frame.function, frame.file, frame.line)
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
/// (app.py:42)", or a Python frame alone.
pub fn place(table: &StackTable, place: Place) -> String {
    let Some(at) = table.frame(place.frame) else {
        return String::new();
    };
    match place.caller.and_then(|c| table.frame(c)) {
        Some(caller) => format!("{} called from {}", self::frame(at), self::frame(caller)),
        None => self::frame(at),
    }
}

/// A shared object's file name without its directory: `libz.so.1`.
pub fn short_module(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
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
        let mut table = StackTable::new();
        let caller = table.intern_frame(Frame::python("handler".into(), "app.py".into(), 42));
        let at = table.intern_frame(with_line);
        assert_eq!(
            place(
                &table,
                Place {
                    frame: at,
                    caller: Some(caller)
                }
            ),
            "deflate (libz.so.1) called from handler (app.py:42)"
        );
    }
}
