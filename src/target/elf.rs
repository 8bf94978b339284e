//! ELF files mapped by the target: symbols (.dynsym and .symtab), sections and load bias.
//! Files are opened as the target sees them (/proc/PID/root, /proc/PID/map_files), never by guess.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD};
use goblin::elf::section_header::{SectionHeader, SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB};
use goblin::elf::sym::Sym;
use goblin::elf::Elf;
use memmap2::Mmap;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::maps::Mapping;

const PAGE_MASK: u64 = !0xfff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    /// The symbol's link-time address; add the load bias for its address in the target.
    pub value: u64,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

/// One ELF object as mapped in the target.
pub struct ElfFile {
    /// The path as the target sees it.
    pub path: String,
    /// What the target added to every link-time address of this object.
    pub load_bias: u64,
    symbols: HashMap<String, Symbol>,
    sections: Vec<Section>,
    data: ElfData,
}

/// The bytes of an ELF file: mapped from disk, or already in memory.
pub enum ElfData {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ElfData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ElfData::Mapped(map) => map,
            ElfData::Owned(bytes) => bytes,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a readable ELF file: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path} is not mapped where its headers say it should be")]
    NotMapped { path: String },
}

impl ElfFile {
    /// Open the object mapped at `mappings` (all the target's mappings of one file).
    pub fn open(pid: i32, mappings: &[&Mapping]) -> Result<ElfFile, ElfError> {
        let first = mappings.first().ok_or_else(|| ElfError::NotMapped {
            path: String::new(),
        })?;
        let data = mapped_file_data(pid, first)?;
        ElfFile::parse(first.path.clone(), data, mappings)
    }

    /// Read the object in `data` as mapped at `mappings`: the one parser `open` uses, for
    /// files already in memory (fuzzing, saved binaries). Never panics on any bytes.
    pub fn parse(path: String, data: ElfData, mappings: &[&Mapping]) -> Result<ElfFile, ElfError> {
        ElfFile::parse_at(path, data, Some(mappings))
    }

    /// Read an ELF file nothing maps (a separate debug file): its load bias is 0.
    pub fn parse_unmapped(path: String, data: ElfData) -> Result<ElfFile, ElfError> {
        ElfFile::parse_at(path, data, None)
    }

    fn parse_at(
        path: String,
        data: ElfData,
        mappings: Option<&[&Mapping]>,
    ) -> Result<ElfFile, ElfError> {
        let parsed = parse_tables(&data).map_err(|reason| ElfError::Parse {
            path: path.clone(),
            reason,
        })?;
        let load_bias = match mappings {
            Some(mappings) => load_bias(&parsed.program_headers, mappings)
                .ok_or_else(|| ElfError::NotMapped { path: path.clone() })?,
            None => 0,
        };
        let mut symbols = HashMap::new();
        for (sym, name) in parsed.symbols(&data) {
            if sym.st_shndx == SHN_UNDEF as usize || sym.st_value == 0 || name.is_empty() {
                continue;
            }
            symbols.entry(name.to_string()).or_insert(Symbol {
                value: sym.st_value,
                size: sym.st_size,
            });
        }
        let sections = parsed
            .section_headers
            .iter()
            .filter_map(|sh| {
                Some(Section {
                    name: string_at(&data, parsed.shstrtab?, sh.sh_name)?.to_string(),
                    addr: sh.sh_addr,
                    offset: sh.sh_offset,
                    size: sh.sh_size,
                })
            })
            .collect();
        Ok(ElfFile {
            path,
            load_bias,
            symbols,
            sections,
            data,
        })
    }

    /// A defined symbol by exact name.
    pub fn symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols.get(name).copied()
    }

    /// The address of a defined symbol in the target.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.symbol(name)
            .map(|s| s.value.wrapping_add(self.load_bias))
    }

    /// Defined symbols whose names satisfy `pred` (for local clones like `take_gil.constprop.0`).
    pub fn symbols_matching<'a>(
        &'a self,
        pred: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a str, Symbol)> + 'a {
        self.symbols
            .iter()
            .filter(move |(name, _)| pred(name))
            .map(|(name, sym)| (name.as_str(), *sym))
    }

    /// The whole file, as mapped (native unwinding reads its sections in place).
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Defined function symbols of .symtab and .dynsym: (name, link-time address, size).
    pub fn function_symbols(&self) -> Vec<(&str, u64, u64)> {
        let Ok(tables) = parse_tables(&self.data) else {
            return Vec::new();
        };
        tables
            .symbols(&self.data)
            .into_iter()
            .filter(|(sym, name)| sym.is_function() && sym.st_value != 0 && !name.is_empty())
            .map(|(sym, name)| (name, sym.st_value, sym.st_size))
            .collect()
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section that holds link-time address `vaddr`, if any.
    pub fn section_at(&self, vaddr: u64) -> Option<&Section> {
        self.sections
            .iter()
            .filter(|s| s.addr != 0)
            .find(|s| (s.addr..s.addr.saturating_add(s.size)).contains(&vaddr))
    }

    /// `len` file bytes at link-time address `vaddr` (code of a function, say), if the file
    /// has them.
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(file_offset(&self.data, vaddr)?).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// The file bytes of a section (empty if it has none or lies outside the file).
    pub fn section_data(&self, name: &str) -> &[u8] {
        let Some(section) = self.section(name) else {
            return &[];
        };
        let (Ok(start), Ok(size)) = (
            usize::try_from(section.offset),
            usize::try_from(section.size),
        ) else {
            return &[];
        };
        start
            .checked_add(size)
            .and_then(|end| self.data.get(start..end))
            .unwrap_or(&[])
    }
}

/// How long opening and reading one of the target's files may take: a file the target
/// controls may sit on a file system that never answers (FUSE).
pub const OPEN_TIME_LIMIT: Duration = Duration::from_secs(10);
/// Largest file read into memory (one that the target's user could change under a map).
const MAX_READ_FILE: u64 = 1 << 30;
/// FUSE's magic number (statfs(2)): its files answer as their daemon pleases. (nix's typed
/// constant: the raw field is signed in glibc and unsigned in musl.)
const FUSE_SUPER_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FUSE_SUPER_MAGIC;

/// The bytes of the file behind a mapping, as the target sees it: the very file mapped
/// (/proc/PID/map_files), else the path in its root (/proc/PID/root, containers) if that is
/// still the file mapped. The target's user may have put anything at that path since: a
/// FIFO would block an open for good and a device would be opened as root, so nothing is
/// opened until an O_PATH handle shows a regular file with the mapped inode. A file its
/// user could truncate is read into memory rather than mapped (a truncated map faults with
/// SIGBUS), and all of it happens within [`OPEN_TIME_LIMIT`].
fn mapped_file_data(pid: i32, mapping: &Mapping) -> Result<ElfData, ElfError> {
    let mapping_copy = mapping.clone();
    within_time_limit(&mapping.path, move || open_and_read(pid, &mapping_copy))
}

/// `open` on a thread of its own, given up after [`OPEN_TIME_LIMIT`] (a file system that does
/// not answer); errors name `path`.
fn within_time_limit(
    path: &str,
    open: impl FnOnce() -> std::io::Result<ElfData> + Send + 'static,
) -> Result<ElfData, ElfError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("gilscope-open".into())
        .spawn(move || {
            let _ = tx.send(open());
        });
    let open_error = |source| ElfError::Open {
        path: path.to_string(),
        source,
    };
    spawned.map_err(open_error)?;
    match rx.recv_timeout(OPEN_TIME_LIMIT) {
        Ok(result) => result.map_err(open_error),
        // The thread is left to its fate: it holds nothing of ours.
        Err(_) => Err(open_error(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {} s (is its file system responding?)",
                OPEN_TIME_LIMIT.as_secs()
            ),
        ))),
    }
}

/// A file gilscope chose by name rather than by mapping (a separate debug file): `relative`
/// resolved inside `root` (a target's /proc/PID/root, or the host's /) as the target would,
/// never through /proc's magic links, and read only if it is a regular file, as
/// [`mapped_file_data`] reads the target's files (a FIFO there would block an open for good,
/// a device would be read as root, a file its owner truncates would fault a map).
pub fn read_file_under(root: &Path, relative: &Path) -> Result<ElfFile, ElfError> {
    let shown = root.join(relative).display().to_string();
    let (root, relative) = (root.to_path_buf(), relative.to_path_buf());
    let data = within_time_limit(&shown, move || {
        let root = nix::fcntl::open(
            root.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let relative = relative.strip_prefix("/").unwrap_or(&relative);
        // Links are followed (build-id entries are links), inside the root.
        let handle = open_in_root(&root, relative, true)?;
        let stat = nix::sys::stat::fstat(&handle)?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(std::io::Error::other("not a regular file"));
        }
        read_regular(&handle, &stat)
    })?;
    ElfFile::parse_unmapped(shown, data)
}

fn open_and_read(pid: i32, mapping: &Mapping) -> std::io::Result<ElfData> {
    let handle = mapped_handle(pid, mapping)?;
    let stat = nix::sys::stat::fstat(&handle)?;
    read_regular(&handle, &stat)
}

/// The bytes of the regular file behind the O_PATH `handle` (whose `stat` was taken): mapped
/// if only root can change it, else read into memory (at most [`MAX_READ_FILE`]).
fn read_regular(handle: &OwnedFd, stat: &nix::sys::stat::FileStat) -> std::io::Result<ElfData> {
    // A handle opened with O_PATH reads nothing: open the same inode again, for reading.
    let file = File::from(nix::fcntl::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let fuse =
        nix::sys::statfs::fstatfs(&file).is_ok_and(|s| s.filesystem_type() == FUSE_SUPER_MAGIC);
    let only_root_writes = stat.st_uid == 0 && stat.st_mode & 0o022 == 0;
    if only_root_writes && !fuse {
        // SAFETY: read-only and private, of a file only root can change: the map cannot be
        // truncated under us by the target's user.
        return Ok(ElfData::Mapped(unsafe { Mmap::map(&file) }?));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if size > MAX_READ_FILE {
        return Err(std::io::Error::other(format!(
            "{size} bytes, more than gilscope reads from a file its target's user can change"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, MAX_READ_FILE), &mut bytes)?;
    Ok(ElfData::Owned(bytes))
}

/// An O_PATH handle on the regular file with the mapping's inode: through map_files (the
/// kernel's own link to the mapped file), else through the target's root, where links are
/// resolved inside that root and never through /proc's magic links.
fn mapped_handle(pid: i32, mapping: &Mapping) -> std::io::Result<OwnedFd> {
    let pid = crate::target::process::memory_task(pid);
    let via_map_files = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    let first = nix::fcntl::open(
        via_map_files.as_str(),
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .and_then(|fd| is_mapped_file(fd, mapping));
    let first_error = match first {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let root = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let relative = mapping.path.trim_start_matches('/');
    match open_in_root(&root, relative, false) {
        Ok(fd) => is_mapped_file(fd, mapping),
        // Where map_files said why (permission, say), that is the better reason.
        Err(_) => Err(first_error),
    }
}

/// An O_PATH handle on `relative` resolved inside the directory `root` as if it were `/`, never
/// through /proc's magic links; a last component that is a link is followed (inside the root)
/// only if `follow_last`. Without openat2 (before Linux 5.6) no link is followed at all.
fn open_in_root<P: ?Sized + nix::NixPath>(
    root: &OwnedFd,
    relative: &P,
    follow_last: bool,
) -> nix::Result<OwnedFd> {
    let nofollow = match follow_last {
        true => OFlag::empty(),
        false => OFlag::O_NOFOLLOW,
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | nofollow | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match nix::fcntl::openat2(root, relative, how) {
        Err(Errno::ENOSYS) => nix::fcntl::openat(
            root,
            relative,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        other => other,
    }
}

/// `fd` if it is a regular file with the mapping's inode.
fn is_mapped_file(fd: OwnedFd, mapping: &Mapping) -> std::io::Result<OwnedFd> {
    let stat = nix::sys::stat::fstat(&fd)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(std::io::Error::other(
            "not a regular file (the target's file was replaced)",
        ));
    }
    if stat.st_ino != mapping.inode {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no longer on disk",
        ));
    }
    Ok(fd)
}

/// The load bias: where the first PT_LOAD segment landed minus where the file says it goes.
/// Works alike for PIE and non-PIE executables (bias 0) and shared objects.
fn load_bias(program_headers: &[ProgramHeader], mappings: &[&Mapping]) -> Option<u64> {
    let first_load = program_headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .min_by_key(|ph| ph.p_vaddr)?;
    let file_page = first_load.p_offset & PAGE_MASK;
    let mapping = mappings.iter().find(|m| m.offset == file_page)?;
    Some(mapping.start.wrapping_sub(first_load.p_vaddr & PAGE_MASK))
}

/// Defined function symbols (name, link-time address) of the ELF file in `data`.
pub fn function_symbols(data: &[u8]) -> Result<Vec<(String, u64)>, String> {
    let tables = parse_tables(data)?;
    Ok(tables
        .symbols(data)
        .into_iter()
        .filter(|(sym, _)| sym.is_function() && sym.st_value != 0)
        .map(|(sym, name)| (name.to_string(), sym.st_value))
        .collect())
}

/// The file offset of link-time address `vaddr` (what uprobes are placed by).
pub fn file_offset(data: &[u8], vaddr: u64) -> Option<u64> {
    parse_tables(data)
        .ok()?
        .program_headers
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD)
        .find(|ph| (ph.p_vaddr..ph.p_vaddr.saturating_add(ph.p_filesz)).contains(&vaddr))
        .and_then(|ph| (vaddr - ph.p_vaddr).checked_add(ph.p_offset))
}

/// Longest symbol or section name accepted; anything longer is garbage.
const MAX_NAME: usize = 4096;
/// Most symbols read from one table (libpython has ~20,000).
const MAX_SYMBOLS: usize = 2_000_000;
/// Size of an ELF64 symbol table entry.
const SYM_BYTES: usize = 24;

/// The parts of an ELF file gilscope reads, parsed so that one bad string or table costs only
/// itself: patched binaries (patchelf, Nix) may carry odd bytes in places nobody else reads.
struct Tables {
    program_headers: Vec<ProgramHeader>,
    section_headers: Vec<SectionHeader>,
    /// (offset, size) of the section-name string table.
    shstrtab: Option<(u64, u64)>,
    /// (symbol table section, its string table (offset, size)).
    symtab: Option<(SectionHeader, (u64, u64))>,
    dynsym: Option<(SectionHeader, (u64, u64))>,
    ctx: Ctx,
}

fn parse_tables(data: &[u8]) -> Result<Tables, String> {
    let header = Elf::parse_header(data).map_err(|e| e.to_string())?;
    use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB};
    if header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let program_headers =
        ProgramHeader::parse(data, header.e_phoff as usize, header.e_phnum as usize, ctx)
            .map_err(|e| format!("program headers: {e}"))?;
    let section_headers =
        SectionHeader::parse(data, header.e_shoff as usize, header.e_shnum as usize, ctx)
            .unwrap_or_default();
    let table = |index: usize| {
        section_headers
            .get(index)
            .map(|sh| (sh.sh_offset, sh.sh_size))
    };
    let shstrtab = table(header.e_shstrndx as usize);
    let find = |kind: u32| {
        section_headers
            .iter()
            .find(|sh| sh.sh_type == kind)
            .and_then(|sh| Some((sh.clone(), table(sh.sh_link as usize)?)))
    };
    Ok(Tables {
        symtab: find(SHT_SYMTAB),
        dynsym: find(SHT_DYNSYM),
        program_headers,
        section_headers,
        shstrtab,
        ctx,
    })
}

impl Tables {
    /// Every readable (symbol, name) of .symtab, then of .dynsym.
    fn symbols<'a>(&self, data: &'a [u8]) -> Vec<(Sym, &'a str)> {
        let mut out = Vec::new();
        for (section, strings) in [&self.symtab, &self.dynsym].into_iter().flatten() {
            let entry = section.sh_entsize.max(1);
            // A garbage size must not size the allocation: no more entries than the file holds.
            let count = ((section.sh_size / entry) as usize)
                .min(MAX_SYMBOLS)
                .min(data.len() / SYM_BYTES);
            let Ok(syms) = Sym::parse(data, section.sh_offset as usize, count, self.ctx) else {
                continue;
            };
            for sym in syms {
                if let Some(name) = string_at(data, *strings, sym.st_name) {
                    out.push((sym, name));
                }
            }
        }
        out
    }
}

/// The NUL-terminated string at `index` of the string table at (offset, size), if it is
/// inside the table and valid UTF-8.
fn string_at(data: &[u8], (offset, size): (u64, u64), index: usize) -> Option<&str> {
    let start = usize::try_from(offset).ok()?.checked_add(index)?;
    let table_end = usize::try_from(offset.checked_add(size)?)
        .ok()?
        .min(data.len());
    let bytes = data.get(start..table_end)?;
    let len = bytes.iter().take(MAX_NAME).position(|&b| b == 0)?;
    std::str::from_utf8(&bytes[..len]).ok()
}

/// Group the target's file mappings by file, in order of first appearance.
pub fn mapped_files(mappings: &[Mapping]) -> Vec<Vec<&Mapping>> {
    let mut order: Vec<(u64, &str)> = Vec::new();
    let mut groups: HashMap<(u64, &str), Vec<&Mapping>> = HashMap::new();
    for m in mappings.iter().filter(|m| m.is_file()) {
        let key = (m.inode, m.path.as_str());
        groups.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        if let Some(group) = groups.get_mut(&key) {
            group.push(m);
        }
    }
    order
        .into_iter()
        .filter_map(|key| groups.remove(&key))
        .collect()
}

/// The file name part of a target path.
pub fn file_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}
