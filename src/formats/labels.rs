//! How frames read in every format: the one place that turns a frame into words. Formats
//! receive typed frames and make labels only as they write them.

use crate::stack::{Frame, FrameKind};

/// "function (file:line)" for Python frames; "symbol (file:line)" or "symbol (module)" for
/// native ones; a marker's own words.
pub fn frame(frame: &Frame) -> String {
    match frame.kind {
        FrameKind::Marker => frame.function.to_string(),
        FrameKind::Python | FrameKind::Native if !frame.file.is_empty() => {
            format!("{} ({}:{})", frame.function, frame.file, frame.line)
        }
        FrameKind::Native if !frame.module.is_empty() => {
            format!("{} ({})", frame.function, short_module(&frame.module))
        }
        _ => frame.function.to_string(),
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
    }
}
