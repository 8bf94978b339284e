//! ELF files mapped by the target: symbols (.dynsym and .symtab), sections and load bias.
//! Files are opened as the target sees them (/proc/PID/root, /proc/PID/map_files), never by guess.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD};
use goblin::elf::section_header::{SectionHeader, SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB};
use goblin::elf::sym::Sym;
use goblin::elf::Elf;
use memmap2::Mmap;

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
        let path = first.path.clone();
        let file = open_mapped_file(pid, first)?;
        // SAFETY: the map is read-only and private; if the file changes under us the worst
        // outcome is garbage symbols, which every reader already tolerates.
        let data = unsafe { Mmap::map(&file) }.map_err(|source| ElfError::Open {
            path: path.clone(),
            source,
        })?;
        ElfFile::parse(path, ElfData::Mapped(data), mappings)
    }

    /// Read the object in `data` as mapped at `mappings`: the one parser `open` uses, for
    /// files already in memory (fuzzing, saved binaries). Never panics on any bytes.
    pub fn parse(path: String, data: ElfData, mappings: &[&Mapping]) -> Result<ElfFile, ElfError> {
        let parsed = parse_tables(&data).map_err(|reason| ElfError::Parse {
            path: path.clone(),
            reason,
        })?;
        let load_bias = load_bias(&parsed.program_headers, mappings)
            .ok_or_else(|| ElfError::NotMapped { path: path.clone() })?;
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

/// Open the file behind a mapping as the target sees it: through its root (containers), and
/// if that is not the same file (replaced on disk, other namespace), through map_files.
fn open_mapped_file(pid: i32, mapping: &Mapping) -> Result<File, ElfError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let via_root = proc_dir
        .join("root")
        .join(mapping.path.trim_start_matches('/'));
    let via_map_files = proc_dir
        .join("map_files")
        .join(format!("{:x}-{:x}", mapping.start, mapping.end));
    let mut first_error = None;
    for candidate in [&via_root, &via_map_files] {
        match File::open(candidate) {
            Ok(file) => {
                let same_inode = file
                    .metadata()
                    .map(|m| m.ino() == mapping.inode)
                    .unwrap_or(false);
                if same_inode || candidate == &via_map_files {
                    return Ok(file);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(ElfError::Open {
        path: mapping.path.clone(),
        source: first_error.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no longer on disk")
        }),
    })
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
