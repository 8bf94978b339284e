//! Names for native code addresses: the module, the function (from DWARF where the module or
//! its separate debug file has it, else .symtab, else .dynsym) and file:line. DWARF is read by
//! addr2line from bytes gilscope read itself; debug files are found by build-id and
//! .gnu_debuglink as gdb finds them, and opened as the target's own files are (regular files
//! only, inside the target's root, within a time limit). Split DWARF (.dwo, .dwp files named
//! by the target's debug information) is never followed: the target would choose what root
//! opens.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::unwind::{LoadedModule, Modules};
use crate::target::elf::ElfFile;

/// DWARF sections: in place in their file, or decompressed into memory of their own.
type DwarfReader = gimli::EndianReader<gimli::RunTimeEndian, DwarfBytes>;

/// One DWARF section's bytes.
#[derive(Clone)]
enum DwarfBytes {
    /// Uncompressed, in the file as gilscope read or mapped it: nothing copied.
    InFile(Arc<ElfFile>, std::ops::Range<usize>),
    /// Decompressed (SHF_COMPRESSED), or empty.
    Owned(Arc<[u8]>),
}

impl std::ops::Deref for DwarfBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            DwarfBytes::InFile(file, range) => file.bytes().get(range.clone()).unwrap_or(&[]),
            DwarfBytes::Owned(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for DwarfBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DwarfBytes({} bytes)", self.len())
    }
}

// SAFETY: the bytes live in an `Arc` (the file's data, never moved or changed while the file
// is alive, or a slice of their own) that every clone shares: dereferencing a moved or cloned
// value gives the same address.
unsafe impl stable_deref_trait::StableDeref for DwarfBytes {}
// SAFETY: as above; a clone shares the same allocation.
unsafe impl stable_deref_trait::CloneStableDeref for DwarfBytes {}

/// Addresses whose names are remembered; past this the memory starts over.
const MAX_REMEMBERED: usize = 1 << 18;
/// Inlined calls shown at one address at most.
const MAX_INLINED: usize = 32;
/// Longest function name kept (C++ templates can run to kilobytes).
const MAX_NAME: usize = 1024;

/// What an address is, one entry per function at it: the outermost is the real function,
/// those before it were inlined into it (innermost first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NativeSymbol {
    /// The file name of the module ("libc.so.6"); "?" where no module maps the address.
    pub module: Arc<str>,
    /// The (demangled) function, if any table names it.
    pub function: Option<Arc<str>>,
    /// Source file and line, where debug information has them (line 0: none).
    pub file: Option<Arc<str>>,
    pub line: u32,
    /// Offset of the address in its module (for frames without a function name).
    pub module_offset: u64,
    /// This function was inlined into the next entry.
    pub inlined: bool,
}

/// One module's symbol tables, loaded on first use.
struct ModuleSymbols {
    /// (link-time start, end, name), sorted by start.
    functions: Vec<(u64, u64, Arc<str>)>,
    /// DWARF, from the module itself or its debug file; None if it has none.
    dwarf: Option<addr2line::Context<DwarfReader>>,
}

/// Names for the addresses of one process, remembered across ticks.
#[derive(Default)]
pub struct Symbols {
    /// By module path and load address (a file loaded again elsewhere is read again).
    modules: HashMap<(String, u64), ModuleSymbols>,
    names: HashMap<u64, Arc<[NativeSymbol]>>,
    /// The process's root (/proc/PID/root), under which its debug files are looked for
    /// before the host's.
    root: Option<PathBuf>,
}

impl Symbols {
    pub fn new(pid: i32) -> Symbols {
        Symbols {
            root: Some(PathBuf::from(format!("/proc/{pid}/root"))),
            ..Symbols::default()
        }
    }

    /// What `addr` (a frame's lookup address) is.
    pub fn lookup(&mut self, modules: &Modules, addr: u64) -> Arc<[NativeSymbol]> {
        if let Some(known) = self.names.get(&addr) {
            return known.clone();
        }
        let symbols: Arc<[NativeSymbol]> = match modules.module_at(addr) {
            Some(module) => self.lookup_in(module, addr).into(),
            // Not remembered: the module may be one loaded since the map was read.
            None => {
                return vec![NativeSymbol {
                    module: "?".into(),
                    function: None,
                    file: None,
                    line: 0,
                    module_offset: addr,
                    inlined: false,
                }]
                .into()
            }
        };
        if self.names.len() >= MAX_REMEMBERED {
            self.names.clear();
        }
        self.names.insert(addr, symbols.clone());
        symbols
    }

    fn lookup_in(&mut self, module: &LoadedModule, addr: u64) -> Vec<NativeSymbol> {
        let root = self.root.clone();
        let tables = self
            .modules
            .entry((module.path.clone(), module.code.start))
            .or_insert_with(|| ModuleSymbols::load(module, root.as_deref()));
        let probe = module.link_address(addr);
        let symbol = |function: Option<Arc<str>>, file, line, inlined| NativeSymbol {
            module: module.name.clone(),
            function,
            file,
            line,
            module_offset: addr.wrapping_sub(module.code.start),
            inlined,
        };
        let table_name = tables.function_at(probe);
        let mut found = Vec::new();
        if let Some(dwarf) = &tables.dwarf {
            if let Ok(mut frames) = dwarf.find_frames(probe).skip_all_loads() {
                while let Ok(Some(frame)) = frames.next() {
                    if found.len() == MAX_INLINED {
                        break;
                    }
                    let function = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.demangle().ok())
                        .map(|n| short(without_internal_alias(&n)));
                    let (file, line) = frame
                        .location
                        .map(|l| (l.file.map(Arc::from), l.line.unwrap_or(0)))
                        .unwrap_or((None, 0));
                    found.push(symbol(function, file, line, true));
                }
            }
        }
        if let Some(outermost) = found.last_mut() {
            outermost.inlined = false;
            // The symbol table names the real function (a `.cold` or `.constprop` clone of
            // it, say) where DWARF names only the source function.
            if outermost.function.is_none() {
                outermost.function = table_name;
            }
            return found;
        }
        vec![symbol(table_name, None, 0, false)]
    }
}

impl ModuleSymbols {
    fn load(module: &LoadedModule, root: Option<&Path>) -> ModuleSymbols {
        let debug = debug_file_for(&module.file, &module.path, root).map(Arc::new);
        let dwarf = match &debug {
            Some(debug) if has_dwarf(debug) => dwarf_of(debug),
            _ if has_dwarf(&module.file) => dwarf_of(&module.file),
            _ => None,
        };
        let mut functions: Vec<(u64, u64, Arc<str>)> = Vec::new();
        let mut add = |file: &ElfFile| {
            for (name, start, size) in file.function_symbols() {
                let name = short(&addr2line::demangle_auto(Cow::Borrowed(name), None));
                functions.push((start, start.saturating_add(size), name));
            }
        };
        add(&module.file);
        // A stripped module's .symtab lives in its debug file.
        if let Some(debug) = &debug {
            add(debug);
        }
        // Where several names share an address (aliases), keep the first: .symtab's.
        functions.sort_by_key(|f| f.0);
        functions.dedup_by_key(|f| f.0);
        ModuleSymbols { functions, dwarf }
    }

    /// The function whose code holds link-time address `probe`.
    fn function_at(&self, probe: u64) -> Option<Arc<str>> {
        let at = self.functions.partition_point(|f| f.0 <= probe);
        let (start, end, name) = self.functions.get(at.checked_sub(1)?)?;
        // A symbol of size 0 (hand-written assembly) is believed up to the next symbol.
        (probe >= *start && (probe < *end || end == start)).then(|| name.clone())
    }
}

/// glibc's DWARF names its functions by their internal aliases (`__GI___clock_nanosleep`
/// for `__clock_nanosleep`): the name without the `__GI_` prefix is the one its symbol
/// table and its users know.
fn without_internal_alias(name: &str) -> &str {
    name.strip_prefix("__GI_").unwrap_or(name)
}

/// A name cut to [`MAX_NAME`] characters.
fn short(name: &str) -> Arc<str> {
    match name.char_indices().nth(MAX_NAME) {
        Some((at, _)) => format!("{}…", &name[..at]).into(),
        None => name.into(),
    }
}

fn has_dwarf(file: &ElfFile) -> bool {
    file.section(".debug_info").is_some_and(|s| s.size > 0)
        && !file.section_data(".debug_info").is_empty()
}

/// The DWARF of an ELF file, read in place (sections the file compresses are decompressed
/// into memory). None where it does not parse.
fn dwarf_of(file: &Arc<ElfFile>) -> Option<addr2line::Context<DwarfReader>> {
    use object::{Object, ObjectSection};
    let object = object::File::parse(file.bytes()).ok()?;
    let endian = match object.is_little_endian() {
        true => gimli::RunTimeEndian::Little,
        false => gimli::RunTimeEndian::Big,
    };
    let load = |id: gimli::SectionId| -> Result<DwarfReader, gimli::Error> {
        let bytes = object.section_by_name(id.name()).and_then(|section| {
            let compressed = section
                .compressed_file_range()
                .is_ok_and(|r| r.format != object::CompressionFormat::None);
            match (compressed, section.file_range()) {
                (false, Some((offset, size))) => {
                    let start = usize::try_from(offset).ok()?;
                    let end = start.checked_add(usize::try_from(size).ok()?)?;
                    (end <= file.bytes().len())
                        .then(|| DwarfBytes::InFile(file.clone(), start..end))
                }
                _ => Some(DwarfBytes::Owned(Arc::from(
                    &*section.uncompressed_data().ok()?,
                ))),
            }
        });
        let bytes = bytes.unwrap_or_else(|| DwarfBytes::Owned(Arc::from(&[][..])));
        Ok(gimli::EndianReader::new(bytes, endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// The GNU build id of an ELF file (the `.note.gnu.build-id` descriptor).
pub fn build_id(file: &ElfFile) -> Option<Vec<u8>> {
    let note = file.section_data(".note.gnu.build-id");
    let word = |at: usize| Some(u32::from_le_bytes(note.get(at..at + 4)?.try_into().ok()?));
    let (name_size, desc_size, kind) = (word(0)? as usize, word(4)? as usize, word(8)?);
    const NT_GNU_BUILD_ID: u32 = 3;
    if kind != NT_GNU_BUILD_ID || desc_size == 0 || desc_size > 64 {
        return None;
    }
    let desc = 12 + name_size.next_multiple_of(4);
    note.get(desc..desc + desc_size).map(<[u8]>::to_vec)
}

/// The file name in `.gnu_debuglink`.
fn debug_link(file: &ElfFile) -> Option<String> {
    let data = file.section_data(".gnu_debuglink");
    let name = data.split(|&b| b == 0).next()?;
    let name = std::str::from_utf8(name).ok()?;
    // A bare file name: a path here would let the target point gilscope anywhere.
    (!name.is_empty() && !name.contains('/') && name != "..").then(|| name.to_string())
}

/// The separate debug file of a module, where there is one whose build id matches (or, for
/// a module without a build id, whose name its debug link gives): the places gdb looks, under
/// the target's root first, then the host's. Each is opened by
/// [`crate::target::elf::read_file_under`]: a regular file, resolved inside its root.
fn debug_file_for(file: &ElfFile, path: &str, root: Option<&Path>) -> Option<ElfFile> {
    let id = build_id(file);
    let link = debug_link(file);
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let dir = dir.strip_prefix("/").unwrap_or(dir);
    let mut candidates: Vec<(&Path, PathBuf)> = Vec::new();
    let roots: Vec<&Path> = root.into_iter().chain([Path::new("/")]).collect();
    for base in roots {
        if let Some(id) = id.as_ref().filter(|id| id.len() >= 2) {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            candidates.push((
                base,
                Path::new("usr/lib/debug/.build-id")
                    .join(&hex[..2])
                    .join(format!("{}.debug", &hex[2..])),
            ));
        }
        if let Some(link) = &link {
            candidates.push((base, dir.join(link)));
            candidates.push((base, dir.join(".debug").join(link)));
            candidates.push((base, Path::new("usr/lib/debug").join(dir).join(link)));
        }
        // `objcopy --only-keep-debug prog prog.debug` beside the program.
        candidates.push((
            base,
            PathBuf::from(format!("{}.debug", path.trim_start_matches('/'))),
        ));
    }
    // Every look, even a stat, goes through `read_file_under`'s time limit: a file system
    // that does not answer (a FUSE mount the target made) must not stall gilscope, and after
    // one such answer the rest of that root is not tried.
    let mut unanswered: Vec<&Path> = Vec::new();
    for (base, relative) in candidates {
        if unanswered.contains(&base) {
            continue;
        }
        let debug = match crate::target::elf::read_file_under(base, &relative) {
            Ok(debug) => debug,
            Err(crate::target::elf::ElfError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::TimedOut =>
            {
                unanswered.push(base);
                continue;
            }
            Err(_) => continue,
        };
        let matches = match (&id, build_id(&debug)) {
            (Some(want), Some(have)) => *want == have,
            // Without build ids, the name the module links to is all there is to go by.
            (None, _) => link
                .as_deref()
                .is_some_and(|l| relative.file_name().is_some_and(|n| n == l)),
            (Some(_), None) => false,
        };
        if matches {
            return Some(debug);
        }
    }
    None
}

/// The separate debug file of the module at `path` (as the target `pid` sees it), if one is
/// found: for the GIL's symbols of a stripped interpreter whose debug file is installed.
pub fn debug_file(pid: i32, file: &ElfFile, path: &str) -> Option<ElfFile> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    debug_file_for(file, path, Some(&root))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary, as an ELF file with a build id.
    fn this_binary() -> ElfFile {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        let file = ElfFile::parse_unmapped(
            "/proc/self/exe".into(),
            crate::target::elf::ElfData::Owned(bytes),
        )
        .unwrap();
        assert!(build_id(&file).is_some(), "the test binary has no build id");
        file
    }

    #[test]
    fn a_debug_file_planted_in_the_targets_root_is_read_only_if_it_is_a_regular_file_inside_it() {
        let exe = this_binary();
        let hex: String = build_id(&exe)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("usr/lib/debug/.build-id").join(&hex[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        let entry = dir.join(format!("{}.debug", &hex[2..]));
        let program = "/opt/app/bin/app";
        let look = |root: &Path| {
            let (tx, rx) = std::sync::mpsc::channel();
            let root = root.to_path_buf();
            let exe = this_binary();
            std::thread::spawn(move || {
                let _ = tx.send(debug_file_for(&exe, program, Some(&root)).is_some());
            });
            // A hang is the failure looked for; the bound only keeps the suite from hanging.
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("looking for a debug file hung")
        };
        // A FIFO where the build id points: opened, it would block root's gilscope for good.
        nix::unistd::mkfifo(&entry, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(!look(root.path()));
        // A link out of the root: resolved inside it, where nothing is.
        std::fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink("/proc/self/exe", &entry).unwrap();
        assert!(!look(root.path()));
        // A device.
        std::fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &entry).unwrap();
        assert!(!look(root.path()));
        // The real thing: a regular file with the build id, through a link inside the root.
        std::fs::remove_file(&entry).unwrap();
        std::fs::copy("/proc/self/exe", root.path().join("copy.debug")).unwrap();
        std::os::unix::fs::symlink("/copy.debug", &entry).unwrap();
        assert!(look(root.path()));
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_NAME + 10);
        let cut = short(&long);
        assert_eq!(cut.chars().count(), MAX_NAME + 1);
        assert_eq!(&*short("compress_block"), "compress_block");
        assert_eq!(
            without_internal_alias("__GI___clock_nanosleep"),
            "__clock_nanosleep"
        );
        assert_eq!(without_internal_alias("__GIANT"), "__GIANT");
    }

    #[test]
    fn a_function_is_found_by_any_address_inside_it_and_not_past_its_end() {
        let tables = ModuleSymbols {
            functions: vec![
                (0x1000, 0x1010, "first".into()),
                (0x1020, 0x1020, "assembly".into()),
                (0x1100, 0x1180, "last".into()),
            ],
            dwarf: None,
        };
        assert_eq!(tables.function_at(0x1000).as_deref(), Some("first"));
        assert_eq!(tables.function_at(0x100f).as_deref(), Some("first"));
        assert_eq!(tables.function_at(0x1010), None);
        assert_eq!(tables.function_at(0x1050).as_deref(), Some("assembly"));
        assert_eq!(tables.function_at(0x1180), None);
        assert_eq!(tables.function_at(0xfff), None);
    }
}
