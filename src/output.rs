//! Writing what gilscope made, as root beside users it does not trust: a path vetted once and
//! held by its directory, written whole or not at all, and every error told in the user's
//! terms. It knows nothing of what the bytes say.
//!
//! The rules (docs/RELIABILITY.md, "Output files"): a symbolic link is followed only if its
//! owner is this user or root and nobody else could have planted it; a FIFO or device only if
//! it belongs to this user or root; a regular file is never written in place but replaced by
//! a rename from a temporary file in the same directory (the rename changes a directory
//! entry, never the file another user may have linked there), except that a file of another
//! user in a sticky directory is left alone, as the kernel's `protected_regular` would. The
//! temporary file has no name while it is written (O_TMPFILE), so a killed gilscope leaves
//! nothing behind; where the file system cannot do that, its name carries gilscope's pid and
//! the next run removes those of runs that are gone.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{linkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// Symbolic links followed at most, as the kernel's own limit (ELOOP).
const MAX_LINKS: usize = 40;
/// The start of every temporary file's name; the rest is `PID-RANDOM`.
const TEMP_PREFIX: &str = ".gilscope-";
/// procfs's magic number (statfs(2)): links there are the kernel's, not files. (nix's
/// typed constant: the raw field is signed in glibc and unsigned in musl.)
const PROC_SUPER_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::PROC_SUPER_MAGIC;

/// An output vetted before the recording starts and written when it is over. Dropped
/// without [`Output::commit`], it leaves what was at the path untouched.
#[derive(Debug)]
pub struct Output {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A regular file, new or replacing one: written into a temporary file in its directory,
    /// renamed over the name at commit.
    File {
        dir: OwnedFd,
        name: OsString,
        temp: Temp,
        /// Permissions of the new file.
        mode: u32,
    },
    /// A FIFO or a device: opened and written in place at commit (nothing to replace).
    InPlace {
        dir: OwnedFd,
        name: OsString,
        identity: (u64, u64),
        /// What is written, kept until commit (a FIFO is not opened before its reader).
        buffer: Vec<u8>,
    },
    /// One of gilscope's own open files (`/dev/stdout`, `/proc/self/fd/N`).
    Descriptor(File),
}

#[derive(Debug)]
struct Temp {
    file: File,
    /// Its directory and name while it has one (where O_TMPFILE is not available, and from
    /// the link to the rename where it is).
    name: Option<(OwnedFd, OsString)>,
}

/// Where a path leads, once its links are followed by the rules above.
enum Destination {
    New {
        dir: OwnedFd,
        name: OsString,
    },
    File {
        dir: OwnedFd,
        name: OsString,
        stat: FileStat,
    },
    Special {
        dir: OwnedFd,
        name: OsString,
        stat: FileStat,
    },
    Descriptor(RawFd),
}

impl Output {
    /// Vet `path` and prepare to write it: every check that can be made before a recording
    /// is made here (a missing or read-only directory, a name too long, a planted link).
    pub fn prepare(path: &Path) -> io::Result<Output> {
        let kind = match resolve(path)? {
            Destination::New { dir, name } => {
                let temp = create_temp(&dir)?;
                Kind::File {
                    dir,
                    name,
                    temp,
                    mode: default_mode(),
                }
            }
            Destination::File { dir, name, stat } => {
                let temp = create_temp(&dir)?;
                // Its permissions are kept, but no set-id bit, and only a file of this user
                // passes them on: another's mode would be chosen by them.
                let mode = if Uid::from_raw(stat.st_uid) == Uid::effective() {
                    stat.st_mode & 0o777
                } else {
                    default_mode()
                };
                Kind::File {
                    dir,
                    name,
                    temp,
                    mode,
                }
            }
            Destination::Special { dir, name, stat } => Kind::InPlace {
                dir,
                name,
                identity: (stat.st_dev, stat.st_ino),
                buffer: Vec::new(),
            },
            Destination::Descriptor(fd) => {
                // SAFETY: `fd` is open in this process (it resolved through /proc/self/fd); the
                // duplicate is ours to own and close.
                let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
                if dup < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a descriptor fcntl just created for us.
                Kind::Descriptor(unsafe { File::from_raw_fd(dup) })
            }
        };
        Ok(Output { kind })
    }

    /// Put the written bytes where the path said: rename the temporary file over the name,
    /// or write the FIFO or device. Errors name no temporary file.
    pub fn commit(self) -> io::Result<()> {
        match self.kind {
            Kind::File {
                dir,
                name,
                mut temp,
                mode,
            } => {
                temp.file.flush()?;
                fchmod(temp.file.as_fd(), Mode::from_bits_truncate(mode))?;
                temp.file.sync_all()?;
                if temp.name.is_none() {
                    temp.name = Some((dir.try_clone()?, link_temp(&dir, &temp.file)?));
                }
                let Some((_, temp_name)) = &temp.name else {
                    return Err(Errno::EBADF.into());
                };
                renameat(&dir, temp_name.as_os_str(), &dir, name.as_os_str())?;
                // Renamed: nothing of that name to remove any more.
                temp.name = None;
                // The rename itself is on disk once the directory is.
                if let Ok(listing) = openat(
                    &dir,
                    ".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    let _ = nix::unistd::fsync(&listing);
                }
                Ok(())
            }
            Kind::InPlace {
                dir,
                name,
                identity,
                buffer,
            } => {
                let mut file = open_in_place(&dir, &name, identity)?;
                file.write_all(&buffer)?;
                file.flush()
            }
            Kind::Descriptor(mut file) => file.flush(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::File { temp, .. } => temp.file.write(buf),
            Kind::InPlace { buffer, .. } => {
                buffer.extend_from_slice(buf);
                Ok(buf.len())
            }
            Kind::Descriptor(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.kind {
            Kind::File { temp, .. } => temp.file.flush(),
            Kind::InPlace { .. } => Ok(()),
            Kind::Descriptor(file) => file.flush(),
        }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // A named temporary file not renamed into place is removed; an unnamed one vanishes
        // with its descriptor.
        if let Some((dir, name)) = self.name.take() {
            let _ = unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Vet an output path before anything is recorded: [`Output::prepare`], its error told under
/// the path the user gave.
pub fn prepare(path: &Path) -> Result<Output> {
    Output::prepare(path).map_err(|source| Error::Output {
        path: path.display().to_string(),
        source,
    })
}

/// Make the directory `path` and the missing ones above it, as root would make them for the
/// user: every link on the way vetted as for an output file (create_dir_all follows any).
pub fn create_dirs(path: &Path) -> Result<()> {
    Walk {
        links: 0,
        create: true,
    }
    .open_dir(path)
    .map(drop)
    .map_err(|source| Error::Output {
        path: path.display().to_string(),
        source,
    })
}

/// Write a prepared output whole, or say why not under the path the user gave.
pub fn write_prepared(mut output: Output, path: &Path, contents: &[u8]) -> Result<()> {
    output
        .write_all(contents)
        .and_then(|()| output.commit())
        .map_err(|source| Error::Output {
            path: path.display().to_string(),
            source,
        })
}

/// Write to standard output; a write error (a full disk, a closed pipe) is an output error.
pub fn write_stdout(contents: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(contents)
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Output {
            path: "standard output".into(),
            source,
        })
}

/// A refusal, said in the user's terms.
fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("user {} ({uid})", user.name),
        _ => format!("user {uid}"),
    }
}

/// May users other than this one (and root) create or replace entries in the directory?
fn others_may_write(dir: &FileStat) -> bool {
    let me = Uid::effective().as_raw();
    let world = dir.st_mode & 0o002 != 0;
    let group = dir.st_mode & 0o020 != 0 && Gid::from_raw(dir.st_gid) != Gid::effective();
    let owner = dir.st_uid != me && dir.st_uid != 0;
    world || group || owner
}

fn is_sticky(dir: &FileStat) -> bool {
    dir.st_mode & libc::S_ISVTX != 0
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// The rule for links: followed only if this user or root owns the link and nobody else
/// could have put it there (another user may write its directory, and the link is not its
/// owner's or the directory owner's).
fn vet_link(dir: &FileStat, link: &FileStat) -> io::Result<()> {
    let me = Uid::effective().as_raw();
    let trusted_owner = link.st_uid == me || link.st_uid == 0;
    let planted = others_may_write(dir) && link.st_uid != me && link.st_uid != dir.st_uid;
    if trusted_owner && !planted {
        return Ok(());
    }
    Err(refused(format!(
        "it leads through a symbolic link of {}: gilscope follows no link that other users \
         control",
        user_name(link.st_uid)
    )))
}

/// A walk along a path one name at a time, each link vetted before it is followed, with one
/// budget of links for the whole path.
struct Walk {
    links: usize,
    /// Make each missing directory on the way (`man --out-dir share/man/man1`).
    create: bool,
}

impl Walk {
    /// The directory `path` names, opened (O_PATH) after vetting every link on the way.
    fn open_dir(&mut self, path: &Path) -> io::Result<OwnedFd> {
        let open = |at: BorrowedFd, name: &OsStr| -> io::Result<OwnedFd> {
            Ok(openat(
                at,
                name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?)
        };
        let mut names: std::collections::VecDeque<OsString> = std::collections::VecDeque::new();
        let push_front = |names: &mut std::collections::VecDeque<OsString>, path: &Path| {
            for component in path.components().rev() {
                names.push_front(component.as_os_str().to_os_string());
            }
        };
        push_front(&mut names, path);
        let mut dir = open(AT_FDCWD, OsStr::new("."))?;
        while let Some(name) = names.pop_front() {
            if name == "/" {
                dir = open(AT_FDCWD, OsStr::new("/"))?;
                continue;
            }
            if name == "." {
                continue;
            }
            if name == ".." {
                dir = open(dir.as_fd(), &name)?;
                continue;
            }
            let stat = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) if self.create => {
                    // Made where the vetted walk stands, never through a link; one made by
                    // someone else meanwhile is looked at like any other name.
                    match mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o777)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?
                }
                stat => stat?,
            };
            if file_type(&stat) != SFlag::S_IFLNK {
                // Swapped for a link since the look: O_NOFOLLOW with O_DIRECTORY refuses it.
                dir = open(dir.as_fd(), &name)?;
                continue;
            }
            vet_link(&fstat(&dir)?, &stat)?;
            self.links += 1;
            if self.links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = readlinkat(&dir, name.as_os_str())?;
            push_front(&mut names, Path::new(&target));
        }
        Ok(dir)
    }
}

/// Split a path into its directory and final name; a path that names a directory itself
/// ("/", "..", "dir/") has no final name.
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let is_a_directory = || io::Error::new(io::ErrorKind::IsADirectory, "it is a directory");
    if path.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "the path is empty"));
    }
    if path.as_os_str().as_bytes().ends_with(b"/") {
        return Err(is_a_directory());
    }
    match path.components().next_back() {
        Some(Component::Normal(name)) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            Ok((dir, name.to_os_string()))
        }
        _ => Err(is_a_directory()),
    }
}

/// Follow `path` to where the output goes, by the rules at the top of this file.
fn resolve(path: &Path) -> io::Result<Destination> {
    let me = Uid::effective().as_raw();
    let mut walk = Walk {
        links: 0,
        create: false,
    };
    let mut path = path.to_path_buf();
    loop {
        let (dir_path, name) = split(&path)?;
        let dir = walk.open_dir(&dir_path)?;
        let dir_stat = fstat(&dir)?;
        let stat = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::ENOENT) => return Ok(Destination::New { dir, name }),
            Err(e) => return Err(e.into()),
        };
        let kind = file_type(&stat);
        if kind == SFlag::S_IFLNK {
            if is_procfs(&dir) {
                return own_descriptor(&dir, &name);
            }
            vet_link(&dir_stat, &stat)?;
            walk.links += 1;
            if walk.links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = PathBuf::from(readlinkat(&dir, name.as_os_str())?);
            path = if target.is_absolute() {
                target
            } else {
                dir_path.join(target)
            };
            continue;
        }
        return match kind {
            SFlag::S_IFDIR => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory",
            )),
            SFlag::S_IFREG => {
                if is_sticky(&dir_stat)
                    && others_may_write(&dir_stat)
                    && stat.st_uid != me
                    && stat.st_uid != dir_stat.st_uid
                {
                    return Err(refused(format!(
                        "it is a file of {} in a shared directory: gilscope replaces no files \
                         of other users there",
                        user_name(stat.st_uid)
                    )));
                }
                Ok(Destination::File { dir, name, stat })
            }
            SFlag::S_IFSOCK => Err(io::Error::other("it is a socket")),
            _ => {
                if stat.st_uid != me && stat.st_uid != 0 {
                    return Err(refused(format!(
                        "it is a {} of {}: gilscope writes into no FIFO or device that \
                         other users control",
                        if kind == SFlag::S_IFIFO {
                            "FIFO"
                        } else {
                            "device"
                        },
                        user_name(stat.st_uid)
                    )));
                }
                Ok(Destination::Special { dir, name, stat })
            }
        };
    }
}

fn is_procfs(dir: &OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(dir).is_ok_and(|s| s.filesystem_type() == PROC_SUPER_MAGIC)
}

/// A link in /proc: only gilscope's own descriptors (`/dev/stdout` leads to
/// /proc/self/fd/1) are outputs; anything else there is not a file to write.
fn own_descriptor(dir: &OwnedFd, name: &OsStr) -> io::Result<Destination> {
    let me = std::process::id();
    let at = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).unwrap_or_default();
    let own = at == Path::new(&format!("/proc/{me}/fd"))
        || (at.starts_with(format!("/proc/{me}/task/")) && at.ends_with("fd"));
    match name.to_str().and_then(|n| n.parse::<RawFd>().ok()) {
        Some(fd) if own && fd >= 0 => Ok(Destination::Descriptor(fd)),
        _ => Err(io::Error::other(
            "it is in /proc: only gilscope's own descriptors there are outputs",
        )),
    }
}

/// 0666 less the umask, as a plain `open(O_CREAT)` would give.
fn default_mode() -> u32 {
    let umask = nix::sys::stat::umask(Mode::empty());
    nix::sys::stat::umask(umask);
    0o666 & !umask.bits()
}

/// A temporary file in `dir`: unnamed where the file system allows, else named after this
/// process (and the names of runs that are gone removed first).
fn create_temp(dir: &OwnedFd) -> io::Result<Temp> {
    let mode = Mode::from_bits_truncate(0o600);
    remove_stale_temps(dir);
    match openat(
        dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        mode,
    ) {
        Ok(fd) => {
            return Ok(Temp {
                file: File::from(fd),
                name: None,
            })
        }
        // Not supported by this file system (or kernel): a named one.
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    let (file, name) = create_named(dir, mode)?;
    Ok(Temp {
        file,
        name: Some((dir.try_clone()?, name)),
    })
}

/// A new file `.gilscope-PID-RANDOM` in `dir`, made with O_EXCL (never an existing one).
fn create_named(dir: &OwnedFd, mode: Mode) -> io::Result<(File, OsString)> {
    for _ in 0..100 {
        let name = OsString::from(format!(
            "{TEMP_PREFIX}{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        match openat(
            dir,
            name.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            mode,
        ) {
            Ok(fd) => return Ok((File::from(fd), name)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Errno::EEXIST.into())
}

/// Give an unnamed temporary file a name in its directory, just before the rename.
fn link_temp(dir: &OwnedFd, file: &File) -> io::Result<OsString> {
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    for _ in 0..100 {
        let name = OsString::from(format!(
            "{TEMP_PREFIX}{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        match linkat(
            AT_FDCWD,
            source.as_str(),
            dir,
            name.as_os_str(),
            AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) => return Ok(name),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Errno::EEXIST.into())
}

/// The pid in a temporary file's name, if it is one of ours.
fn temp_owner(name: &OsStr) -> Option<i32> {
    let rest = name.to_str()?.strip_prefix(TEMP_PREFIX)?;
    let (pid, random) = rest.split_once('-')?;
    (random.len() == 8 && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Is `pid` a gilscope that is still running (it may still be writing its file)?
fn gilscope_running(pid: i32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim_end() == "gilscope" || pid == std::process::id() as i32
}

/// Remove the temporary files that runs killed between naming and renaming them left in
/// `dir`: only this user's regular files, named as gilscope names them, of a pid that is no
/// running gilscope.
fn remove_stale_temps(dir: &OwnedFd) {
    let me = Uid::effective().as_raw();
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = temp_owner(&name) else {
            continue;
        };
        let Ok(stat) = fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if file_type(&stat) == SFlag::S_IFREG && stat.st_uid == me && !gilscope_running(pid) {
            let _ = unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Open the FIFO or device vetted as `identity`, without blocking on a FIFO nobody reads
/// and without following anything put there since.
fn open_in_place(dir: &OwnedFd, name: &OsStr, identity: (u64, u64)) -> io::Result<File> {
    let fd = match openat(
        dir,
        name,
        OFlag::O_WRONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENXIO) => {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "no process is reading the FIFO",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let stat = fstat(&fd)?;
    if (stat.st_dev, stat.st_ino) != identity {
        return Err(refused(
            "it was replaced since the recording started".to_string(),
        ));
    }
    // Writes may wait for a slow reader like any other writer's.
    set_blocking(fd.as_fd())?;
    Ok(File::from(fd))
}

fn set_blocking(fd: BorrowedFd) -> io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
        let mut output = Output::prepare(path)?;
        output.write_all(contents)?;
        output.commit()
    }

    #[test]
    fn files_are_replaced_whole_and_keep_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        write_file(&path, b"first").unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&path).unwrap().ino();
        write_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o640);
        assert_ne!(
            after.ino(),
            before,
            "replaced by a rename, not written in place"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file may be left behind");
    }

    #[test]
    fn an_output_never_committed_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.txt");
        std::fs::write(&path, b"old").unwrap();
        let mut output = Output::prepare(&path).unwrap();
        output.write_all(b"partial").unwrap();
        drop(output);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_fifo_with_a_reader_is_written_through_and_one_without_is_an_error() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        let output = Output::prepare(&fifo).unwrap();
        // Nobody reads it: an error at once, not a hang.
        let err = output.commit().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        // The reader opens the FIFO at some point: the writer's open succeeds from then on.
        let mut done = false;
        for _ in 0..500 {
            let mut output = Output::prepare(&fifo).unwrap();
            output.write_all(b"through the pipe").unwrap();
            if output.commit().is_ok() {
                done = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(done);
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn this_users_links_are_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("report.txt");
        let link = dir.path().join("latest.txt");
        std::fs::write(&file, b"old").unwrap();
        std::os::unix::fs::symlink("report.txt", &link).unwrap();
        write_file(&link, b"new").unwrap();
        assert!(link.is_symlink());
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
    }

    #[test]
    fn dev_null_and_own_descriptors_are_written_in_place() {
        write_file(Path::new("/dev/null"), b"nothing").unwrap();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", writer.as_raw_fd()));
        write_file(&path, b"piped").unwrap();
        drop(writer);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut File::from(reader), &mut got).unwrap();
        assert_eq!(got, "piped");
        assert!(Output::prepare(Path::new("/proc/1/environ")).is_err());
    }

    #[test]
    fn directories_and_missing_directories_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            dir.path().to_path_buf(),
            dir.path().join("sub/"),
            dir.path().join(".."),
            dir.path().join("missing/report.json"),
            dir.path().join("x".repeat(300)),
        ] {
            assert!(Output::prepare(&path).is_err(), "{}", path.display());
        }
    }

    #[test]
    fn temporary_names_carry_the_pid_and_only_ours_are_recognised() {
        assert_eq!(temp_owner(OsStr::new(".gilscope-123-0a1b2c3d")), Some(123));
        assert_eq!(temp_owner(OsStr::new(".gilscope-123-0a1b2c3")), None);
        assert_eq!(temp_owner(OsStr::new(".gilscope-abcdef")), None);
        assert_eq!(temp_owner(OsStr::new("report.json")), None);
    }

    #[test]
    fn temporary_files_of_runs_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that is no gilscope: this test's parent is cargo or a shell.
        let dead = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-0000abcd", i32::MAX));
        let running = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-0000abcd", std::process::id()));
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(&running, b"x").unwrap();
        let fd = Walk {
            links: 0,
            create: false,
        }
        .open_dir(dir.path())
        .unwrap();
        remove_stale_temps(&fd);
        assert!(!dead.exists());
        assert!(running.exists());
    }
}
