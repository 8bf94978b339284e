//! Writing what gilscope made: report files replaced whole or not at all, and the errors of
//! doing so told in the user's terms. It knows nothing of what the bytes say.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The error of creating a temporary file, without the temporary file's name (which the user
/// never asked for and which no longer exists): "Permission denied (os error 13)".
pub fn without_temporary_path(error: std::io::Error) -> std::io::Error {
    let text = error.to_string();
    match text.split_once(" at path ") {
        Some((reason, _)) => std::io::Error::new(error.kind(), reason.to_string()),
        None => error,
    }
}

/// Write `contents` to `path` so that readers see the old file or the whole new one, never
/// a part: write a temporary file beside it, flush it to disk, then rename it over.
/// What is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written to, never
/// replaced; a symbolic link stays a link, and the file it points to is replaced.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Ok(metadata) = std::fs::metadata(path) {
        if !metadata.is_file() && !metadata.is_dir() {
            let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
            return file.write_all(contents);
        }
    }
    let resolved;
    let path = match std::fs::canonicalize(path) {
        Ok(target) if path.is_symlink() => {
            resolved = target;
            resolved.as_path()
        }
        _ => path,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".gilscope-")
        .tempfile_in(dir)
        .map_err(without_temporary_path)?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    let mode = existing_mode(path).unwrap_or_else(default_mode);
    std::fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn existing_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(std::fs::metadata(path).ok()?.permissions().mode() & 0o7777)
}

/// 0666 less the umask, as a plain `open(O_CREAT)` would give.
fn default_mode() -> u32 {
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    nix::sys::stat::umask(umask);
    0o666 & !umask.bits()
}

/// Fail before recording, not after, if the output cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    let error = |source| Error::Output {
        path: path.display().to_string(),
        source,
    };
    // A device or a FIFO is written to in place (see report::write_atomically).
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return nix::unistd::access(path, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| error(std::io::Error::from(e)));
    }
    let resolved = std::fs::canonicalize(path)
        .ok()
        .filter(|_| path.is_symlink());
    let path = resolved.as_deref().unwrap_or(path);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if path.is_dir() {
        return Err(error(std::io::Error::other("it is a directory")));
    }
    tempfile::Builder::new()
        .prefix(".gilscope-check-")
        .tempfile_in(&dir)
        .map(drop)
        .map_err(|e| error(without_temporary_path(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files_and_keeps_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_atomically(&path, b"first").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(existing_mode(&path), Some(0o640));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file may be left behind");
    }

    #[test]
    fn devices_fifos_and_links_are_written_through_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomically(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let file = dir.path().join("report.txt");
        let link = dir.path().join("latest.txt");
        std::fs::write(&file, b"old").unwrap();
        std::os::unix::fs::symlink(&file, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(link.is_symlink());
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
    }
}
