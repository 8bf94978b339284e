//! The target's memory map, parsed from /proc/PID/maps.
//! It only describes mappings; opening the files behind them is elf.rs's job.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// Offset in the file of the first mapped byte.
    pub offset: u64,
    pub inode: u64,
    /// The path as the target sees it ("" for anonymous memory), without " (deleted)".
    pub path: String,
    /// The file was replaced or removed after the target mapped it.
    pub deleted: bool,
}

impl Mapping {
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parse the text of /proc/PID/maps. Lines that do not parse are skipped, never fatal.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms[0] == b'r',
        writable: perms[1] == b'w',
        executable: perms[2] == b'x',
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: path.to_string(),
        deleted,
    })
}

/// Read and parse /proc/PID/maps (through a live thread if the main one has exited).
pub fn read_maps(pid: i32) -> std::io::Result<Vec<Mapping>> {
    let task = crate::target::process::memory_task(pid);
    let text = std::fs::read_to_string(Path::new("/proc").join(task.to_string()).join("maps"))?;
    Ok(parse_maps(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fe:01 1311246                    /root/.pyenv/versions/3.12.1/bin/python3.12
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e2d2ae000-7f1e2d4c1000 r-xp 000ae000 fe:01 1311300                    /usr/lib/lib python.so (deleted)
7ffd4f3f1000-7ffd4f412000 rw-p 00000000 00:00 0                          [stack]
garbage line
";

    #[test]
    fn parses_files_anonymous_memory_and_deleted_paths() {
        let maps = parse_maps(SAMPLE);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].path, "/root/.pyenv/versions/3.12.1/bin/python3.12");
        assert!(maps[0].readable && !maps[0].executable && maps[0].is_file());
        assert!(!maps[1].is_file());
        assert_eq!(maps[2].path, "/usr/lib/lib python.so");
        assert!(maps[2].deleted && maps[2].executable);
        assert_eq!(maps[2].offset, 0xae000);
        assert_eq!(maps[3].path, "[stack]");
        assert!(!maps[3].is_file());
    }
}
