//! The target's executable modules and the CFI unwind of a stack copy through them (framehop
//! reads `.eh_frame`; nothing here interprets DWARF). It must never trust the stack bytes: every
//! address came from a target that kept running, and every loop here is bounded.

use std::collections::HashSet;
use std::ops::{Deref, Range};
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use super::{NativeFrame, Registers, StackEnd, MAX_NATIVE_FRAMES};
use crate::target::elf::{mapped_files, ElfData, ElfFile};
use crate::target::maps::{read_maps, Mapping};
use crate::target::memory::Memory;

/// Least time between two readings of /proc/PID/maps prompted by an unknown address (ns):
/// a frame in memory nothing maps (JIT code, a torn stack) must not cost a read per tick.
const REFRESH_EVERY_NS: u64 = 1_000_000_000;
/// Largest `[vdso]` believed (it is two pages on x86_64).
const MAX_VDSO: u64 = 1 << 16;

/// A section's bytes inside a mapped file, handed to framehop without copying.
#[derive(Clone)]
pub struct SectionBytes {
    file: Arc<ElfFile>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.file.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

/// One executable file mapped by the target (the interpreter, libpython, an extension, libc).
pub struct LoadedModule {
    /// The path as the target sees it.
    pub path: String,
    /// The file name, as frames show it ("libc.so.6", "_zlib.cpython-312.so").
    pub name: Arc<str>,
    /// Where its code is mapped in the target.
    pub code: Range<u64>,
    pub file: Arc<ElfFile>,
    /// (inode, first mapping's start): the same file mapped again elsewhere is another module.
    key: (u64, u64),
}

impl LoadedModule {
    /// The link-time address (as symbol tables and DWARF give them) of a target address.
    pub fn link_address(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.file.load_bias)
    }
}

/// The target's modules and an unwinder over them.
pub struct Modules {
    pid: i32,
    unwinder: UnwinderX86_64<SectionBytes>,
    cache: CacheX86_64,
    /// Sorted by code start.
    modules: Vec<LoadedModule>,
    /// The target's memory map when last read: stack bounds come from it.
    maps: Vec<Mapping>,
    refreshed_ns: Option<u64>,
    /// Files that could not be opened or parsed, not tried again.
    failed: HashSet<(u64, u64)>,
    /// Readings of /proc/PID/maps so far (for `--stats`).
    pub refreshes: u64,
}

impl Modules {
    /// The modules the process maps now; `memory` reads its `[vdso]`.
    pub fn new(pid: i32, memory: &dyn Memory, now_ns: u64) -> std::io::Result<Modules> {
        let mut modules = Modules {
            pid,
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            modules: Vec::new(),
            maps: Vec::new(),
            refreshed_ns: None,
            failed: HashSet::new(),
            refreshes: 0,
        };
        modules.refresh(memory, now_ns)?;
        Ok(modules)
    }

    /// Read the memory map again: add modules mapped since, drop those unmapped.
    pub fn refresh(&mut self, memory: &dyn Memory, now_ns: u64) -> std::io::Result<()> {
        self.refreshed_ns = Some(now_ns);
        self.refreshes += 1;
        let maps = read_maps(self.pid)?;
        let mut present = HashSet::new();
        for group in mapped_files(&maps) {
            let Some(code) = code_range(&group) else {
                continue;
            };
            let key = (group[0].inode, group[0].start);
            present.insert(key);
            if self.modules.iter().any(|m| m.key == key) || self.failed.contains(&key) {
                continue;
            }
            match ElfFile::open(self.pid, &group) {
                Ok(file) => self.add(group[0].path.clone(), code, key, file),
                Err(_) => {
                    self.failed.insert(key);
                }
            }
        }
        if let Some(vdso) = maps.iter().find(|m| m.path == "[vdso]") {
            let key = (0, vdso.start);
            present.insert(key);
            let known = self.modules.iter().any(|m| m.key == key) || self.failed.contains(&key);
            if !known {
                match read_vdso(memory, vdso) {
                    Some(file) => self.add("[vdso]".into(), vdso.start..vdso.end, key, file),
                    None => {
                        self.failed.insert(key);
                    }
                }
            }
        }
        let gone: Vec<u64> = self
            .modules
            .iter()
            .filter(|m| !present.contains(&m.key))
            .map(|m| m.code.start)
            .collect();
        for start in gone {
            self.unwinder.remove_module(start);
        }
        self.modules.retain(|m| present.contains(&m.key));
        self.failed.retain(|k| present.contains(k));
        self.maps = maps;
        Ok(())
    }

    fn add(&mut self, path: String, code: Range<u64>, key: (u64, u64), file: ElfFile) {
        let file = Arc::new(file);
        let section = |name: &str| {
            let s = file.section(name)?;
            let start = usize::try_from(s.offset).ok()?;
            let end = start.checked_add(usize::try_from(s.size).ok()?)?;
            (end <= file.bytes().len() && s.size > 0).then(|| {
                (
                    s.addr..s.addr + s.size,
                    SectionBytes {
                        file: file.clone(),
                        range: start..end,
                    },
                )
            })
        };
        let (text_svma, text) = section(".text").unzip();
        let (eh_frame_svma, eh_frame) = section(".eh_frame").unzip();
        let (eh_frame_hdr_svma, eh_frame_hdr) = section(".eh_frame_hdr").unzip();
        let info = ExplicitModuleSectionInfo {
            text_svma,
            text,
            got_svma: file.section(".got").map(|s| s.addr..s.addr + s.size),
            eh_frame_svma,
            eh_frame,
            eh_frame_hdr_svma,
            eh_frame_hdr,
            debug_frame: section(".debug_frame").map(|(_, bytes)| bytes),
            base_svma: 0,
            stubs_svma: None,
            stub_helper_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        };
        let name: Arc<str> = crate::target::elf::file_name(&path).into();
        let module = Module::new(path.clone(), code.clone(), file.load_bias, info);
        self.unwinder.add_module(module);
        let at = self.modules.partition_point(|m| m.code.start < code.start);
        self.modules.insert(
            at,
            LoadedModule {
                path,
                name,
                code,
                file,
                key,
            },
        );
    }

    /// The module whose code holds `addr`.
    pub fn module_at(&self, addr: u64) -> Option<&LoadedModule> {
        let at = self.modules.partition_point(|m| m.code.start <= addr);
        let module = self.modules.get(at.checked_sub(1)?)?;
        module.code.contains(&addr).then_some(module)
    }

    pub fn modules(&self) -> &[LoadedModule] {
        &self.modules
    }

    /// The mapping that holds `addr` (a thread's stack, say), as of the last reading.
    pub fn mapping_at(&self, addr: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| (m.start..m.end).contains(&addr))
    }

    /// Read the memory map again if an address was met that no module holds, at most once
    /// per [`REFRESH_EVERY_NS`]. True if it was read.
    pub fn refresh_for(&mut self, addr: u64, memory: &dyn Memory, now_ns: u64) -> bool {
        if self.module_at(addr).is_some() {
            return false;
        }
        let due = self
            .refreshed_ns
            .is_none_or(|t| now_ns.saturating_sub(t) >= REFRESH_EVERY_NS);
        due && self.refresh(memory, now_ns).is_ok()
    }

    /// Unwind from `regs`, reading the stack through `read` (8 bytes at an address, or None
    /// where the copy or the target has nothing). Innermost frame first.
    ///
    /// Without the frame pointer (a thread asleep in a system call: the kernel shows only its
    /// stack pointer and program counter), a function whose frame is found through `rbp` is
    /// reached with `rbp` unknown. Its frame record is then looked for on the stack: the
    /// lowest slot above its stack pointer that holds a return address just after a call
    /// instruction, believed only if the unwind from there goes on through known code.
    pub fn unwind(
        &mut self,
        regs: Registers,
        read: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> (Vec<NativeFrame>, StackEnd) {
        let mut frames = Vec::new();
        let start = FrameAddress::from_instruction_pointer(regs.pc);
        let Some(bp) = regs.bp else {
            let mut state = UnwindRegsX86_64::new(regs.pc, regs.sp, UNKNOWN_BP);
            let mut end = self.unwind_from(start, &mut state, read, &mut frames);
            for _ in 0..MAX_RECOVERIES {
                if end != Walk::NeedsFramePointer {
                    break;
                }
                end = self.recover_frame_pointer(read, &mut frames);
            }
            return (frames, end.into());
        };
        let mut state = UnwindRegsX86_64::new(regs.pc, regs.sp, bp);
        let end = self.unwind_from(start, &mut state, read, &mut frames);
        (frames, end.into())
    }

    /// Unwind from `address` with `state`, appending frames (the one at `address` first).
    fn unwind_from(
        &mut self,
        mut address: FrameAddress,
        state: &mut UnwindRegsX86_64,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        frames: &mut Vec<NativeFrame>,
    ) -> Walk {
        let mut needed_bp = false;
        let mut read_stack = |addr: u64| {
            if (UNKNOWN_BP..UNKNOWN_BP + 64).contains(&addr) {
                needed_bp = true;
                return Err(());
            }
            read(addr).ok_or(())
        };
        loop {
            let stack_pointer = state.sp();
            let frame = |frame_end| NativeFrame {
                address: address.address(),
                is_return: address.is_return_address(),
                stack_pointer,
                frame_end,
            };
            if frames.len() >= MAX_NATIVE_FRAMES {
                return Walk::Truncated;
            }
            let outcome =
                self.unwinder
                    .unwind_frame(address, state, &mut self.cache, &mut read_stack);
            match outcome {
                Ok(Some(return_address)) => {
                    // The stack grows down: a caller's frame lies above its callee's. A step
                    // that does not go up is a torn or garbage stack.
                    let caller_sp = state.sp();
                    if caller_sp <= stack_pointer {
                        frames.push(frame(None));
                        return Walk::Truncated;
                    }
                    frames.push(frame(Some(caller_sp)));
                    match FrameAddress::from_return_address(return_address) {
                        Some(next) => address = next,
                        None => return Walk::Root,
                    }
                }
                // The unknown frame pointer stands for 0 nowhere: framehop's "bp == 0 ends
                // the stack" cannot trigger on it.
                Ok(None) => {
                    frames.push(frame(None));
                    return Walk::Root;
                }
                Err(_) => {
                    frames.push(frame(None));
                    return if needed_bp {
                        Walk::NeedsFramePointer
                    } else {
                        Walk::Truncated
                    };
                }
            }
        }
    }

    /// The last frame of `frames` needs the frame pointer nobody gave: find its frame record
    /// on the stack and unwind on from there.
    fn recover_frame_pointer(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        frames: &mut Vec<NativeFrame>,
    ) -> Walk {
        let Some(last) = frames.last().copied() else {
            return Walk::Truncated;
        };
        let address = if last.is_return {
            FrameAddress::from_return_address(last.address)
        } else {
            Some(FrameAddress::from_instruction_pointer(last.address))
        };
        let Some(address) = address else {
            return Walk::Truncated;
        };
        let start = self.function_start(last.lookup_address());
        // Only a return address after a direct call to this very function is believed: a
        // stale return address left in the frame's locals by an earlier call is the usual
        // impostor, and its saved frame pointer looks as good as the real one. A function
        // entered elsewhere than where its unwind entry starts (a hot/cold split part, an
        // indirect call) is not recovered: the stack ends there, truncated, never made up.
        // Without unwind tables to say where functions start, the lowest slot whose saved
        // frame pointer points further up the stack is tried, and believed only if the
        // unwind from it ends at the stack's root.
        let strict = start.is_some();
        let mut tried = 0;
        for slot in (0..SCAN_SLOTS).map(|k| last.stack_pointer + 8 * k) {
            if tried == MAX_CANDIDATES {
                break;
            }
            let Some(ret) = read(slot + 8) else {
                break;
            };
            let Some(call) = self.call_before(ret) else {
                continue;
            };
            let calls_this = matches!(call, Call::Direct(target) if Some(target) == start);
            let saved = read(slot).unwrap_or(1);
            let chained = saved == 0 || saved > slot + 8;
            if (strict && !calls_this) || (!strict && !chained) {
                continue;
            }
            tried += 1;
            let mut state = UnwindRegsX86_64::new(last.address, last.stack_pointer, slot);
            let mut trial = frames[..frames.len() - 1].to_vec();
            let end = self.unwind_from(address, &mut state, read, &mut trial);
            let gained = trial.len() + 1 - frames.len();
            let believable = match end {
                Walk::Root => gained >= 2,
                _ => strict && gained >= CONFIRMING_FRAMES,
            } && trial[frames.len() - 1..]
                .iter()
                .all(|f| self.module_at(f.lookup_address()).is_some());
            if believable {
                *frames = trial;
                return end;
            }
        }
        Walk::Truncated
    }

    /// Where the function that holds target address `addr` starts, from its module's
    /// `.eh_frame_hdr` table (stripped modules have it too).
    fn function_start(&self, addr: u64) -> Option<u64> {
        use addr2line::gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
        let module = self.module_at(addr)?;
        let file = &module.file;
        let (hdr, eh) = (file.section(".eh_frame_hdr")?, file.section(".eh_frame")?);
        let text = file.section(".text").map_or(0, |s| s.addr);
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(hdr.addr)
            .set_eh_frame(eh.addr)
            .set_text(text);
        let hdr_data = EhFrameHdr::new(file.section_data(".eh_frame_hdr"), LittleEndian);
        let parsed = hdr_data.parse(&bases, 8).ok()?;
        let eh_frame = EhFrame::new(file.section_data(".eh_frame"), LittleEndian);
        let fde = parsed
            .table()?
            .fde_for_address(
                &eh_frame,
                &bases,
                module.link_address(addr),
                EhFrame::cie_from_offset,
            )
            .ok()?;
        Some(fde.initial_address().wrapping_add(file.load_bias))
    }

    /// The call instruction that `ret` would return from, if the bytes before it are one
    /// (as they are before a return address) in a module's code.
    fn call_before(&self, ret: u64) -> Option<Call> {
        let module = self.module_at(ret)?;
        let before = module
            .link_address(ret)
            .checked_sub(7)
            .and_then(|start| module.file.bytes_at(start, 7))?;
        if before[2] == 0xe8 {
            let offset = i32::from_le_bytes(before[3..7].try_into().ok()?);
            return Some(Call::Direct(ret.wrapping_add(offset as i64 as u64)));
        }
        // ff /2 (an indirect call) in its 2, 3, 4, 6 and 7 byte forms.
        let indirect = |at: usize| before[at] == 0xff && (before[at + 1] >> 3) & 7 == 2;
        [5, 4, 3, 1, 0]
            .into_iter()
            .any(indirect)
            .then_some(Call::Indirect)
    }
}

/// A call instruction, as read before a return address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `call rel32`, to this target address.
    Direct(u64),
    /// `call *...`: the target is not in the instruction.
    Indirect,
}

/// The frame pointer given to framehop when it is not known: no stack holds it, so a rule
/// that uses it reads nothing and says so.
const UNKNOWN_BP: u64 = 0x0000_8000_0000_0000;
/// Slots above a frame's stack pointer searched for its frame record.
const SCAN_SLOTS: u64 = 512;
/// Return-address-looking slots tried per frame.
const MAX_CANDIDATES: usize = 8;
/// Frame records recovered per stack.
const MAX_RECOVERIES: usize = 8;
/// Frames an unwind from a recovered frame record must reach (through known code) to be
/// believed when it does not end at the stack's root.
const CONFIRMING_FRAMES: usize = 3;

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    Root,
    Truncated,
    /// The last frame's rule needs the frame pointer, which is unknown.
    NeedsFramePointer,
}

impl From<Walk> for StackEnd {
    fn from(walk: Walk) -> StackEnd {
        match walk {
            Walk::Root => StackEnd::Root,
            _ => StackEnd::Truncated,
        }
    }
}

/// The span of a file's executable mappings.
fn code_range(group: &[&Mapping]) -> Option<Range<u64>> {
    let code = group.iter().filter(|m| m.executable);
    let start = code.clone().map(|m| m.start).min()?;
    let end = code.map(|m| m.end).max()?;
    Some(start..end)
}

/// The `[vdso]` image, read from the target (it has no file; its unwind tables are inside).
fn read_vdso(memory: &dyn Memory, vdso: &Mapping) -> Option<ElfFile> {
    let len = vdso.end.checked_sub(vdso.start)?;
    if len > MAX_VDSO {
        return None;
    }
    let bytes = memory.read_bytes(vdso.start, len as usize).ok()?;
    ElfFile::parse("[vdso]".into(), ElfData::Owned(bytes), &[vdso]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::memory::ProcessMemory;

    /// This test binary unwinding its own sleeping thread, by way of its syscall file: the
    /// frames found lie in its modules, each caller above its callee.
    #[test]
    #[inline(never)]
    fn a_sleeping_thread_of_this_process_unwinds_to_its_start() {
        let pid = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let memory = ProcessMemory::new(pid);
        let mut modules = Modules::new(pid, &memory, 0).unwrap();
        let mut stack = None;
        for _ in 0..200 {
            match super::super::syscall::capture(pid, tid, &memory, &mut modules) {
                Ok(s) => {
                    stack = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        done_tx.send(()).unwrap();
        sleeper.join().unwrap();
        let stack = stack.expect("the thread was never seen asleep");
        // Rust's std keeps frame pointers, which a sleeping thread does not show: past the
        // libc wrapper the stack goes on only where a frame record is vouched for, and a
        // stack that reaches the thread's start has its whole depth.
        assert!(stack.frames.len() >= 2, "{stack:?}");
        if stack.end == StackEnd::Root {
            assert!(stack.frames.len() > 5, "{stack:?}");
        }
        assert!(stack
            .frames
            .windows(2)
            .all(|w| w[0].stack_pointer < w[1].stack_pointer));
        // Every frame lies in a module this process maps.
        assert!(stack
            .frames
            .iter()
            .all(|f| modules.module_at(f.lookup_address()).is_some()));
    }
}
