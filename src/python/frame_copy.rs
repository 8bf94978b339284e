//! A thread's chain of Python frames at one moment: copied in as few remote reads as the
//! layout allows, walked locally, and believed only when a second copy confirms it. It knows
//! thread states and frames; code objects, lines and names are stack.rs's.
//!
//! How a chain is read. Each thread state has a plan learned from its last walk: the blocks
//! its stack lived in (3.11+: the used part of its data-stack chunk, with room to grow; the
//! frames outside it, such as generators' and C-stack entry frames; before 3.11 every frame
//! object) and the code objects it ran. One `process_vm_readv` reads the thread state's
//! frame pointers and every planned block twice over, then the code objects' headers.
//!
//! What confirms a chain. The thread state of the second copy is read after every block of
//! the first and before any other of the second: at a moment T inside every frame's two
//! copies. A frame that reads the same in both copies (link, code, instruction; the innermost
//! frame's instruction excepted, as it runs) was so at T, short of changing and changing back
//! in between. So the chain is walked from the innermost frame that thread state names, over
//! the frames of the first copy, and believed where every frame reads the same in the second
//! and was part of the stack at T: below the data stack's top (3.11+) and, on 3.6-3.10,
//! marked running (the innermost frame may be being entered or left). A chain that needed
//! frames the plan lacked is fetched, then confirmed by a read of the thread state and every
//! block, which must show the same thread state. A thread that moved under the read is read
//! again by the caller, with a plan this attempt brought up to date.

use std::collections::{HashMap, HashSet};

use super::layout::{EvalCalls, FrameFields, StackLayout};
use super::stack::{StackError, MAX_FRAMES};
use crate::target::memory::{check_pointer, i32_at, u64_at, Memory, ReadError, MAX_READ};

/// Thread states with a plan; past this the plans start over.
const MAX_PLANS: usize = 65_536;
/// Frames whose caller was seen, for predicting chains of frames outside chunks; past this
/// the predictions start over.
const MAX_SUCCESSORS: usize = 65_536;
/// Code objects read ahead per thread state (those a stack lacks are read by stack.rs).
const MAX_PLANNED_CODES: usize = 512;
/// Frames read ahead of a frame the copy lacked, along the chain seen before.
const MAX_PREDICTED: usize = 64;
/// Bytes copied past the used part of a data-stack chunk, for a stack that grows between
/// two reads (about 20 frames of a small function).
const CHUNK_SLACK: usize = 2048;
/// The smallest page size: memory is mapped in whole pages of it.
const PAGE: u64 = 4096;
/// 3.6-3.10: pages read whole in a long copy (see [`CopyWays`]), and recent frames read
/// beside them that no such page holds.
const MAX_PAGES: usize = 8;
const MAX_LONE_FRAMES: usize = 16;
/// Frames outside chunks remembered per thread state ([`Plan::recent`]), and for how many
/// walks.
const MAX_RECENT: usize = 64;
const RECENT_WALKS: u8 = 32;
/// `_PyStackChunk`: `previous`, `size`, `top`, then the frames.
const CHUNK_HEADER: usize = 24;
/// `owner` of an interpreter frame (3.11+, the same values in every version): held by a
/// generator or coroutine object, and copied into a frame object that outlived its call.
const OWNED_BY_GENERATOR: u8 = 1;
const OWNED_BY_FRAME_OBJECT: u8 = 2;

/// What a frame holds that the walk uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameRecord {
    /// The next frame outwards (0: none).
    pub previous: u64,
    pub code: u64,
    /// 3.11+ a pointer to the instruction; before, its byte offset.
    pub instr: u64,
    /// Whether it is a frame to show (not a C-stack shim).
    pub shown: bool,
    /// Free-threaded 3.14+: which copy of the bytecode `instr` points into (0: the code
    /// object's own).
    pub tlbc_index: i32,
    /// 3.11+: who holds the frame's memory (`owner`); 3.6-3.10: [`OWNED_BY_GENERATOR`] for
    /// a frame with a generator (`f_gen`), else 0.
    pub owner: u8,
    /// 3.6-3.10: the evaluation loop is running it; true where the version does not say.
    pub running: bool,
    /// 3.11: the first frame its call of the evaluation loop runs (`is_entry`); false in
    /// other versions, whose calls [`EvalCalls`] tells otherwise.
    pub is_entry: bool,
}

/// A thread's frames at one moment, innermost first, with the headers of the code objects
/// read alongside (for stack.rs, which checks them).
pub(super) struct Chain {
    pub frames: Vec<(u64, FrameRecord)>,
    /// [`MAX_FRAMES`] frames were read and there were more.
    pub truncated: bool,
    codes: Copied,
}

impl Chain {
    /// The first `len` bytes of the code object at `addr`, if they were read with the chain.
    pub fn code_header(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.codes.get(addr, len)
    }
}

/// What a thread state said about its stack, in one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Head {
    /// 3.11-3.12: the `_PyCFrame` the thread state points at (0: none).
    cframe: u64,
    /// The innermost frame (0: no Python frame).
    frame: u64,
    /// 3.11+: the data-stack chunk of the newest frames, and the end of its used part.
    chunk: u64,
    chunk_top: u64,
}

/// The blocks to read for a thread state's stack, learned from its last walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Plan {
    cframe: u64,
    /// 3.11+: the data-stack chunk and the bytes of it to copy.
    chunk: Option<(u64, usize)>,
    /// Frames outside the chunk (every frame before 3.11), innermost first.
    frames: Vec<u64>,
    /// Frames outside chunks that recent walks met, with the walks since. A thread that
    /// calls fast reuses a few dozen frames in ever new orders (before 3.11 each code
    /// object's own frame, then the free list's), allocated together (the allocator's pools).
    recent: Vec<(u64, u8)>,
    /// 3.6-3.10: the pages that hold two of the recent frames, most recent first, read whole
    /// by a long copy ([`CopyWays`]) in place of the frames in them (the other recent frames
    /// beside them, one by one): a page gives in one
    /// piece every frame in it, those the next call will take included. Without them, a
    /// walk that met a frame the plan lacked fetched it and then confirmed the chain by
    /// another read, too late for a stack that changes every microsecond.
    pages: Vec<u64>,
    /// 3.6-3.10: the recent frames that neither the last walk met nor a page of `pages`
    /// holds, read one by one by a long copy (on 3.6 and 3.10 a walk of nested data lost
    /// 2.4-12% of its samples without them, 1.0-2.1% with).
    lone: Vec<u64>,
    codes: Vec<u64>,
}

/// 3.6-3.10: how often each of a thread state's two ways to copy its frames was confirmed.
/// The short copy (the last chain's frames, one by one) confirms a stack that changes every
/// 100 ns more often: a recursion up and down 20 levels on 3.10 lost 11% of its samples
/// when every attempt read the pages too, almost none without. The long one (the pages of
/// the frames met recently, [`Plan::pages`]) finds the frames a new call took: pure Python
/// pickle on 3.8 lost 25% of its samples without it, 0.1% with. Each attempt takes the way
/// confirmed more often lately, and every [`EXPLORE_EVERY`]th the other, so that a thread
/// whose calls change is followed.
#[derive(Debug, Default)]
struct CopyWays {
    /// Attempts and confirmations of each way (short, long), halved past [`WAYS_WINDOW`].
    tried: [u32; 2],
    confirmed: [u32; 2],
    attempts: u32,
}

const EXPLORE_EVERY: u32 = 8;
const WAYS_WINDOW: u32 = 64;

impl CopyWays {
    /// Whether the next attempt takes the long copy.
    fn choose(&mut self) -> bool {
        self.attempts = self.attempts.wrapping_add(1);
        // (confirmed + 1) / (tried + 2) of each, compared without division.
        let rate = |i: usize| {
            (
                u64::from(self.confirmed[i]) + 1,
                u64::from(self.tried[i]) + 2,
            )
        };
        let ((c0, t0), (c1, t1)) = (rate(0), rate(1));
        let long = c1 * t0 > c0 * t1;
        long != (self.attempts % EXPLORE_EVERY == 0)
    }

    fn count(&mut self, long: bool, confirmed: bool) {
        let i = usize::from(long);
        self.tried[i] += 1;
        self.confirmed[i] += u32::from(confirmed);
        if self.tried[i] > WAYS_WINDOW {
            self.tried[i] /= 2;
            self.confirmed[i] /= 2;
        }
    }
}

/// Blocks of the target's memory as reads saw them, looked up by address.
#[derive(Debug, Default)]
struct Copied {
    /// (address, length, where its bytes start in `bytes`).
    blocks: Vec<(u64, usize, usize)>,
    /// The blocks that start at each address, oldest first: a deep stack's copy has thousands
    /// of frames, each looked up once per walk, which a scan of every block made quadratic.
    starts: HashMap<u64, Vec<usize>>,
    bytes: Vec<u8>,
}

impl Copied {
    /// `blocks` read one after the other into `bytes` (as `Memory::read_many` does).
    fn from_parts(blocks: &[(u64, usize)], bytes: &[u8]) -> Copied {
        let mut copied = Copied::default();
        copied.push(blocks, bytes);
        copied
    }

    fn push(&mut self, blocks: &[(u64, usize)], bytes: &[u8]) {
        let mut at = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        for &(addr, len) in blocks {
            self.starts.entry(addr).or_default().push(self.blocks.len());
            self.blocks.push((addr, len, at));
            at += len;
        }
    }

    /// Read `blocks` together and keep them.
    fn fetch(&mut self, memory: &dyn Memory, blocks: &[(u64, usize)]) -> Result<(), ReadError> {
        let mut bytes = Vec::new();
        memory.read_many(blocks, &mut bytes)?;
        self.push(blocks, &bytes);
        Ok(())
    }

    /// The bytes at `addr..addr + len`: from the latest block that starts there and holds
    /// them all, else from the latest block that holds them all. (Blocks of one copy that
    /// overlap hold the same moment, but for the thread state a copy re-reads at its end,
    /// which starts where the first read of it did.)
    fn get(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let bytes = |&(_, length, at): &(u64, usize, usize)| {
            (len <= length)
                .then(|| self.bytes.get(at..at + len))
                .flatten()
        };
        let exact = self.starts.get(&addr).and_then(|indices| {
            indices
                .iter()
                .rev()
                .find_map(|&i| self.blocks.get(i).and_then(bytes))
        });
        if exact.is_some() {
            return exact;
        }
        self.blocks.iter().rev().find_map(|&(start, length, at)| {
            let offset = usize::try_from(addr.checked_sub(start)?).ok()?;
            if offset.checked_add(len)? > length {
                return None;
            }
            self.bytes.get(at + offset..at + offset + len)
        })
    }
}

/// Reads chains of frames of one interpreter's threads.
pub(super) struct FrameReader {
    layout: StackLayout,
    /// Bytes read of each frame, and of each code object's header.
    frame_size: usize,
    code_size: usize,
    /// 3.11+: where the last field the walk decodes ends, which every frame holds: a frame
    /// of a function with no variables and no value stack (3.12's `return CONSTANT`) is no
    /// longer than its fields, shorter than `frame_size` (read as whole words).
    frame_fields_end: u64,
    /// The part of a thread state the walk reads: its first offset and length.
    head: (u64, usize),
    plans: HashMap<u64, Plan>,
    copies: HashMap<u64, CopyWays>,
    /// Each frame outside chunks, and the frame that came after it (its caller) last time.
    successors: HashMap<u64, u64>,
    /// What a walk that failed had walked: it teaches the next attempt's plan too (a
    /// generator's frames met in a walk that then found one cut from its caller are the
    /// frames the next attempt needs in its copies; without them every attempt fetched
    /// them after the moment it read, and 3.12 lost 2% of a pipeline's samples).
    partial: Option<(Head, Vec<(u64, FrameRecord)>)>,
}

impl FrameReader {
    pub fn new(layout: StackLayout, code_size: usize) -> FrameReader {
        let frame_size = match layout.frame {
            FrameFields::Object {
                back,
                code,
                lasti,
                executing,
                ..
            } => back
                .max(code)
                .max(lasti)
                .max(executing.map_or(0, |e| e.offset)),
            FrameFields::Interpreter {
                previous,
                code,
                instr,
                owner,
                tlbc_index,
                ..
            } => previous
                .max(code)
                .max(instr)
                .max(owner)
                .max(tlbc_index.unwrap_or(0))
                .max(match layout.eval_calls {
                    EvalCalls::EntryFlag { is_entry, .. } => is_entry,
                    _ => 0,
                }),
        } as usize
            + 8;
        let frame_fields_end = match layout.frame {
            FrameFields::Interpreter {
                previous,
                code,
                instr,
                owner,
                tlbc_index,
                ..
            } => (previous + 8)
                .max(code + 8)
                .max(instr + 8)
                .max(owner + 1)
                .max(tlbc_index.map_or(0, |t| t + 4))
                .max(match layout.eval_calls {
                    EvalCalls::EntryFlag { is_entry, .. } => is_entry + 1,
                    _ => 0,
                }),
            FrameFields::Object { .. } => frame_size as u64,
        };
        // The frame pointer, and 3.11+ `datastack_chunk` and `datastack_top`.
        let fields = [
            Some((layout.tstate_frame, 8)),
            layout.datastack.map(|offset| (offset, 16)),
        ];
        let first = fields.iter().flatten().map(|f| f.0).min().unwrap_or(0);
        let end = fields
            .iter()
            .flatten()
            .map(|f| f.0 + f.1)
            .max()
            .unwrap_or(8);
        FrameReader {
            layout,
            frame_size,
            code_size,
            frame_fields_end,
            head: (first, (end - first) as usize),
            plans: HashMap::new(),
            copies: HashMap::new(),
            successors: HashMap::new(),
            partial: None,
        }
    }

    /// One attempt at the chain of the thread state at `tstate`. `StackError::Moved`: the
    /// copies disagreed (the thread moved under the read); the caller may try again, with a
    /// plan that this attempt brought up to date.
    pub fn read(&mut self, memory: &dyn Memory, tstate: u64) -> Result<Chain, StackError> {
        // 3.11+ keeps most frames in data-stack chunks, read whole already.
        let objects = matches!(self.layout.frame, FrameFields::Object { .. });
        if !objects {
            return self.attempt(memory, tstate, false);
        }
        if self.copies.len() >= MAX_PLANS {
            self.copies.clear();
        }
        let stats = self.copies.entry(tstate).or_default();
        let long = stats.choose();
        let read = self.attempt(memory, tstate, long);
        if let Some(stats) = self.copies.get_mut(&tstate) {
            stats.count(long, read.is_ok());
        }
        read
    }

    /// One attempt, with the long copy (3.6-3.10, [`CopyWays`]) or the short one.
    fn attempt(
        &mut self,
        memory: &dyn Memory,
        tstate: u64,
        long: bool,
    ) -> Result<Chain, StackError> {
        check_pointer(tstate, 8)?;
        let plan = self.plans.remove(&tstate).unwrap_or_default();
        let blocks = self.blocks(tstate, &plan, long);
        let code_blocks: Vec<(u64, usize)> =
            plan.codes.iter().map(|&c| (c, self.code_size)).collect();
        // With a plan, one read gives the copy, its confirmation and the code headers.
        let twice = blocks.len() > 1;
        // The thread state's blocks (its frame pointers, 3.11-3.12 its cframe) come first.
        let heads = 1 + usize::from(self.layout.cframe_frame.is_some() && plan.cframe != 0);
        // The first copy reads the frames outermost first, the second innermost first (the
        // chunk, which holds the outer frames where there are generators' frames outside it,
        // first in the first copy and last in the second): the frames that change fastest
        // are read closest to the moment T between the copies, and a thread whose loop has
        // the period of one copy, which showed the same two moments in both copies of a
        // frame list read in the same order (an outer frame at one phase, its callees at
        // another), must now tear the opposite way in the second copy to be believed.
        let chunk_blocks = usize::from(plan.chunk.is_some());
        let chunked = self.layout.datastack.is_some();
        type Order = Vec<(u64, usize)>;
        let (outermost_first, innermost_first): (Order, Order) = match twice && chunked {
            true => {
                let (heads_and_chunk, frames) = blocks.split_at(heads + chunk_blocks);
                let (head_blocks, chunk) = heads_and_chunk.split_at(heads);
                let first = head_blocks
                    .iter()
                    .chain(chunk)
                    .chain(frames.iter().rev())
                    .copied()
                    .collect();
                let second = head_blocks
                    .iter()
                    .chain(frames)
                    .chain(chunk)
                    .copied()
                    .collect();
                (first, second)
            }
            // Before 3.11 (frame objects) the same order twice: reversed, a busy recursion on
            // 3.8 lost 4-6% of its samples (frames recycled between calls are read further
            // apart), and its pipeline still tore as often.
            false => (blocks.clone(), blocks.clone()),
        };
        let mut all = outermost_first.clone();
        let head_len: usize = blocks[..heads].iter().map(|b| b.1).sum();
        if twice {
            all.extend_from_slice(&innermost_first);
            // The thread state once more, after the second copy (for chains through
            // generators, below).
            all.extend_from_slice(&blocks[..heads]);
        }
        all.extend_from_slice(&code_blocks);
        let mut bytes = Vec::new();
        // The thread state as the first copy saw it, before any of its frames, and as it
        // was after the second.
        let mut early = None;
        let mut late = None;
        let (mut first, mut second, mut codes) = match memory.read_many(&all, &mut bytes) {
            Ok(()) => {
                let copy_len: usize = blocks.iter().map(|b| b.1).sum();
                let mut first = Copied::from_parts(&outermost_first, &bytes[..copy_len]);
                early = self.head(&first, tstate).ok();
                if twice {
                    // The walk starts from the thread state as the second copy saw it: read
                    // after every frame of the first copy and before any of the second, at a
                    // moment when each frame that reads the same in both copies was as read.
                    let len: usize = blocks[..heads].iter().map(|b| b.1).sum();
                    first.push(&blocks[..heads], &bytes[copy_len..copy_len + len]);
                }
                let (second, rest) = match twice {
                    true => {
                        let after = Copied::from_parts(
                            &blocks[..heads],
                            &bytes[2 * copy_len..2 * copy_len + head_len],
                        );
                        late = self.head(&after, tstate).ok();
                        (
                            Some(Copied::from_parts(
                                &innermost_first,
                                &bytes[copy_len..2 * copy_len],
                            )),
                            2 * copy_len + head_len,
                        )
                    }
                    false => (None, copy_len),
                };
                (
                    first,
                    second,
                    Copied::from_parts(&code_blocks, &bytes[rest..]),
                )
            }
            Err(e @ (ReadError::Gone | ReadError::Denied)) => return Err(e.into()),
            // Something the plan named is gone (a chunk freed as the stack shrank, a
            // finished generator's memory returned): start from the thread state alone.
            Err(_) if all.len() > 1 => {
                let mut first = Copied::default();
                first.fetch(memory, &blocks[..1])?;
                (first, None, Copied::default())
            }
            Err(e) => return Err(e.into()),
        };
        let mut fetched = second.is_none();
        let walked = self.walk(memory, tstate, &mut first, &mut fetched);
        // What this attempt walked teaches the next one, confirmed or not.
        let partial = self.partial.take();
        let plan = match (&walked, partial) {
            (Ok((head, frames, _)), _) => self.plan(head, frames, &first, &plan),
            // Added to the last plan, not in its place: the frames past where the walk
            // stopped are still the stack's.
            (Err(_), Some((head, frames))) if !frames.is_empty() => {
                let mut learned = self.plan(&head, &frames, &first, &plan);
                let mut known: HashSet<u64> = learned.frames.iter().copied().collect();
                for &f in &plan.frames {
                    if learned.frames.len() >= MAX_FRAMES {
                        break;
                    }
                    if known.insert(f) {
                        learned.frames.push(f);
                    }
                }
                let mut known: HashSet<u64> = learned.codes.iter().copied().collect();
                for &c in &plan.codes {
                    if learned.codes.len() >= MAX_PLANNED_CODES {
                        break;
                    }
                    if known.insert(c) {
                        learned.codes.push(c);
                    }
                }
                learned
            }
            (Err(_), _) => plan,
        };
        if self.plans.len() >= MAX_PLANS {
            self.plans.clear();
        }
        self.plans.insert(tstate, plan);
        let (head, frames, truncated) = walked?;
        // A generator's frame is linked to its caller only while it runs, and a thread that
        // resumes and suspends it flat out shows the same two frames in both copies at the
        // same phases of its loop (the caller at a line past the call): a chain through one
        // also needs the same thread state before the first copy and after the second as at
        // T. (With the one before only, a pipeline of generators let 1-2 torn stacks in
        // 1,000 through on 3.13 and 3.14; with neither, 1-4 in 1,000 on 3.6-3.10.)
        let generator = frames.iter().any(|(_, r)| r.owner == OWNED_BY_GENERATOR);
        if generator && !fetched && (early != Some(head) || late != Some(head)) {
            return Err(StackError::Moved);
        }
        if fetched {
            let plan = self.plans.get(&tstate).cloned().unwrap_or_default();
            let blocks = self.blocks(tstate, &plan, false);
            let missing: Vec<(u64, usize)> = plan
                .codes
                .iter()
                .filter(|&&c| codes.get(c, self.code_size).is_none())
                .map(|&c| (c, self.code_size))
                .collect();
            let mut all = blocks.clone();
            all.extend_from_slice(&missing);
            let mut bytes = Vec::new();
            memory.read_many(&all, &mut bytes)?;
            let copy_len: usize = blocks.iter().map(|b| b.1).sum();
            second = Some(Copied::from_parts(&blocks, &bytes[..copy_len]));
            codes.push(&missing, &bytes[copy_len..]);
        }
        match second {
            // After a fetch the confirming read is the later moment.
            Some(second)
                if self.confirms(
                    tstate,
                    &head,
                    &frames,
                    &second,
                    (!fetched).then_some((early, late)),
                ) =>
            {
                Ok(Chain {
                    frames,
                    truncated,
                    codes,
                })
            }
            _ => Err(StackError::Moved),
        }
    }

    /// The blocks a plan reads: the thread state's frame pointers first; `long`: the long
    /// copy of 3.6-3.10 ([`CopyWays`]).
    fn blocks(&self, tstate: u64, plan: &Plan, long: bool) -> Vec<(u64, usize)> {
        let mut blocks = vec![(tstate + self.head.0, self.head.1)];
        if let (Some(offset), true) = (self.layout.cframe_frame, plan.cframe != 0) {
            blocks.push((plan.cframe + offset, 8));
        }
        blocks.extend(plan.chunk);
        if !long {
            blocks.extend(plan.frames.iter().map(|&f| (f, self.frame_size)));
            return blocks;
        }
        // Innermost first: each frame, or the page that holds it where that is read whole,
        // then the other pages.
        let mut read: Vec<u64> = Vec::new();
        for &f in &plan.frames {
            match plan.pages.iter().find(|&&page| self.in_page(f, page)) {
                Some(&page) if !read.contains(&page) => {
                    read.push(page);
                    blocks.push((page, PAGE as usize));
                }
                Some(_) => {}
                None => blocks.push((f, self.frame_size)),
            }
        }
        for &page in &plan.pages {
            if !read.contains(&page) {
                blocks.push((page, PAGE as usize));
            }
        }
        blocks.extend(plan.lone.iter().map(|&f| (f, self.frame_size)));
        blocks
    }

    /// Does the page at `page` hold the fields of the frame at `frame`?
    fn in_page(&self, frame: u64, page: u64) -> bool {
        frame >= page && frame.saturating_add(self.frame_size as u64) <= page + PAGE
    }

    /// The thread state's frame pointers in `copy` (3.11-3.12: through its cframe, which the
    /// copy must hold too).
    fn head(&self, copy: &Copied, tstate: u64) -> Result<Head, StackError> {
        let block = copy
            .get(tstate + self.head.0, self.head.1)
            .ok_or(StackError::Moved)?;
        let field = |offset: u64| {
            u64_at(block, offset - self.head.0).ok_or(ReadError::BadPointer { addr: tstate })
        };
        let mut head = Head::default();
        if let Some(datastack) = self.layout.datastack {
            head.chunk = field(datastack)?;
            head.chunk_top = field(datastack + 8)?;
        }
        let first = field(self.layout.tstate_frame)?;
        head.frame = match self.layout.cframe_frame {
            None => first,
            Some(_) if first == 0 => 0,
            Some(offset) => {
                head.cframe = first;
                let current = copy.get(first + offset, 8).and_then(|b| u64_at(b, 0));
                current.ok_or(StackError::Moved)?
            }
        };
        Ok(head)
    }

    /// Walk the chain in `copy` from the thread state's innermost frame, fetching what the
    /// copy lacks (and saying so in `fetched`). Checks what one copy can show: every
    /// pointer plausible, no frame twice, every frame running where the version says, none
    /// copied into a frame object, and the outermost frame not a generator's (a generator's
    /// frame that yielded is cut from its caller).
    #[allow(clippy::type_complexity)]
    fn walk(
        &mut self,
        memory: &dyn Memory,
        tstate: u64,
        copy: &mut Copied,
        fetched: &mut bool,
    ) -> Result<(Head, Vec<(u64, FrameRecord)>, bool), StackError> {
        if let Some(offset) = self.layout.cframe_frame {
            // 3.11-3.12: the innermost frame is in the cframe the thread state points at.
            let cframe = copy
                .get(tstate + self.layout.tstate_frame, 8)
                .and_then(|b| u64_at(b, 0))
                .ok_or(StackError::Moved)?;
            if cframe != 0 && copy.get(cframe + offset, 8).is_none() {
                check_pointer(cframe, 8)?;
                copy.fetch(memory, &[(cframe + offset, 8)])?;
                *fetched = true;
            }
        }
        let head = self.head(copy, tstate)?;
        if head.chunk != 0 {
            check_pointer(head.chunk, 8)?;
            let used = head
                .chunk_top
                .checked_sub(head.chunk)
                .filter(|&u| (CHUNK_HEADER as u64..=MAX_READ as u64).contains(&u))
                .ok_or(StackError::Moved)? as usize;
            if copy.get(head.chunk, used).is_none() {
                copy.fetch(memory, &[(head.chunk, used)])?;
                *fetched = true;
            }
        }
        let mut frames: Vec<(u64, FrameRecord)> = Vec::new();
        let mut seen = HashSet::new();
        let mut frame = head.frame;
        while frame != 0 {
            if frames.len() == MAX_FRAMES {
                return Ok((head, frames, true));
            }
            check_pointer(frame, 8)?;
            if !seen.insert(frame) {
                return Err(StackError::Moved);
            }
            if copy.get(frame, self.frame_size).is_none() {
                let predicted = self.predicted(frame, copy);
                if copy.fetch(memory, &predicted).is_err() {
                    copy.fetch(memory, &[(frame, self.frame_size)])?;
                }
                *fetched = true;
            }
            let block = copy
                .get(frame, self.frame_size)
                .ok_or(ReadError::BadPointer { addr: frame })?;
            let record = self.decode(frame, block)?;
            // The innermost frame may be between its call and its first instruction, or
            // between its last one and its caller's taking over: not marked running, and
            // still the thread state's frame (which `confirms` checks).
            // One with no caller is a generator's frame between its caller's unlinking and
            // its own end of run: never a stack on its own.
            let innermost = frames.is_empty() && record.previous != 0;
            if (!record.running && !innermost) || record.owner == OWNED_BY_FRAME_OBJECT {
                self.partial = Some((head, frames));
                return Err(StackError::Moved);
            }
            frames.push((frame, record));
            frame = record.previous;
        }
        let generator_last = matches!(self.layout.frame, FrameFields::Interpreter { .. })
            && frames
                .last()
                .is_some_and(|(_, r)| r.owner == OWNED_BY_GENERATOR);
        if generator_last {
            self.partial = Some((head, frames));
            return Err(StackError::Moved);
        }
        Ok((head, frames, false))
    }

    /// `frame`, and the frames that followed it the last time it was seen, as far as the
    /// copy lacks them; for a frame never seen before, the whole pages it lies in.
    fn predicted(&self, frame: u64, copy: &Copied) -> Vec<(u64, usize)> {
        let mut next = self.successors.get(&frame).copied();
        if next.is_none() {
            // Nothing known of its callers (a first read, a new call): the pages that hold
            // the frame are mapped if it is, and hold its neighbours, on 3.11+ the frames
            // of its data-stack chunk below it (its callers), before 3.11 frame objects
            // allocated together. A deep stack read for the first time then takes one read
            // per page, not one per frame.
            let start = frame & !(PAGE - 1);
            let end = (frame + self.frame_size as u64).next_multiple_of(PAGE);
            return vec![(start, (end - start) as usize)];
        }
        let mut blocks = vec![(frame, self.frame_size)];
        while let Some(f) = next.filter(|&f| f != 0) {
            if blocks.len() == MAX_PREDICTED
                || check_pointer(f, 8).is_err()
                || copy.get(f, self.frame_size).is_some()
                || blocks.iter().any(|b| b.0 == f)
            {
                break;
            }
            blocks.push((f, self.frame_size));
            next = self.successors.get(&f).copied();
        }
        blocks
    }

    /// The plan for the next read of a thread state, from what this one walked.
    fn plan(
        &mut self,
        head: &Head,
        frames: &[(u64, FrameRecord)],
        copy: &Copied,
        last: &Plan,
    ) -> Plan {
        let chunk = (head.chunk != 0).then(|| {
            let used = head.chunk_top.saturating_sub(head.chunk) as usize;
            // Copy a little more than is used now (the stack may grow by the next read),
            // never past the chunk's end (the memory after it may not be mapped).
            let size = copy
                .get(head.chunk, CHUNK_HEADER)
                .and_then(|b| u64_at(b, 8))
                .map_or(used, |s| (s as usize).clamp(used, MAX_READ));
            let grown = match last.chunk {
                Some((chunk, len)) if chunk == head.chunk => len.max(used + CHUNK_SLACK),
                _ => used + CHUNK_SLACK,
            };
            (head.chunk, grown.min(size))
        });
        let in_chunk = |f: u64| {
            chunk.is_some_and(|(c, len)| f >= c && f + self.frame_size as u64 <= c + len as u64)
        };
        if self.successors.len() >= MAX_SUCCESSORS {
            self.successors.clear();
        }
        // Every frame the walk took (at most MAX_FRAMES): the confirming copy must hold them
        // all, and a plan that kept only some lost every stack deeper than it kept.
        let mut outside = Vec::new();
        for &(addr, record) in frames.iter().filter(|(f, _)| !in_chunk(*f)) {
            self.successors.insert(addr, record.previous);
            outside.push(addr);
        }
        // 3.6-3.10: this walk's frames, then those of the last plan's recent ones it did not
        // meet; and the pages that hold two of them.
        let mut recent: Vec<(u64, u8)> = Vec::new();
        let mut pages: Vec<u64> = Vec::new();
        let mut lone: Vec<u64> = Vec::new();
        if matches!(self.layout.frame, FrameFields::Object { .. }) {
            let met: HashSet<u64> = outside.iter().copied().collect();
            recent.extend(outside.iter().take(MAX_RECENT).map(|&f| (f, 0)));
            for &(f, age) in &last.recent {
                if recent.len() == MAX_RECENT {
                    break;
                }
                if age + 1 < RECENT_WALKS && !met.contains(&f) {
                    recent.push((f, age + 1));
                }
            }
            let mut held: HashMap<u64, usize> = HashMap::new();
            for &(f, _) in &recent {
                let page = f & !(PAGE - 1);
                if self.in_page(f, page) {
                    *held.entry(page).or_default() += 1;
                }
            }
            for &(f, _) in &recent {
                let page = f & !(PAGE - 1);
                if pages.len() < MAX_PAGES && held.get(&page) >= Some(&2) && !pages.contains(&page)
                {
                    pages.push(page);
                }
            }
            lone.extend(
                recent
                    .iter()
                    .map(|&(f, _)| f)
                    .filter(|f| !met.contains(f) && !pages.iter().any(|&p| self.in_page(*f, p)))
                    .take(MAX_LONE_FRAMES),
            );
        }
        let mut codes: Vec<u64> = Vec::new();
        for (_, record) in frames {
            if record.shown && record.code != 0 && !codes.contains(&record.code) {
                codes.push(record.code);
                if codes.len() == MAX_PLANNED_CODES {
                    break;
                }
            }
        }
        Plan {
            cframe: head.cframe,
            chunk,
            frames: outside,
            pages,
            lone,
            recent,
            codes,
        }
    }

    /// Does `second` confirm the chain walked in the first copy? See the module's comment.
    fn confirms(
        &self,
        tstate: u64,
        head: &Head,
        frames: &[(u64, FrameRecord)],
        second: &Copied,
        around: Option<(Option<Head>, Option<Head>)>,
    ) -> bool {
        let Ok(now) = self.head(second, tstate) else {
            return false;
        };
        if now.chunk != head.chunk {
            return false;
        }
        for (i, &(addr, was)) in frames.iter().enumerate() {
            let Some(Ok(is)) = second
                .get(addr, self.frame_size)
                .map(|b| self.decode(addr, b))
            else {
                return false;
            };
            let same = (
                is.previous,
                is.code,
                is.shown,
                is.tlbc_index,
                is.owner,
                is.is_entry,
            ) == (
                was.previous,
                was.code,
                was.shown,
                was.tlbc_index,
                was.owner,
                was.is_entry,
            );
            if !same || is.running != was.running || (i > 0 && is.instr != was.instr) {
                return false;
            }
            // 3.6-3.10: an innermost frame not running in either copy was called and left
            // between them, if it ran at T at all: no copy saw its call, and its callers',
            // read at other moments, may show them past it (a frame of a fast call tree
            // under its caller's line that calls its sibling: 1-2 torn stacks in 1,000).
            if i == 0 && !is.running && !was.running {
                return false;
            }
            // A frame of the newest chunk must still be below its top: a frame the thread
            // returned from keeps its bytes until another call writes over them. (Its fields
            // must be: a frame may end where they do, short of the words `frame_size` reads,
            // and then ends at the top when it is the innermost. Checked against the read
            // length, 3.12 rejected every such frame: a tree whose leaves `return 0` lost
            // 4-13% of its samples.)
            let in_chunk = head.chunk != 0 && addr >= head.chunk && addr < head.chunk_top;
            if in_chunk && addr + self.frame_fields_end > now.chunk_top {
                return false;
            }
            // And a caller in it must have been below the top when each copy was read (the
            // thread state read just before the first and just after the second): a frame
            // returned from keeps its last instruction, so a recursion that was shallow at
            // both copies and deep at T showed its returned frames, the same in both, under
            // T's innermost frame (on 3.13, 27 torn stacks in 5,000 under load).
            if let (true, true, Some((early, late))) = (in_chunk, i > 0, around) {
                let live = |h: Option<Head>| {
                    h.is_some_and(|h| {
                        h.chunk == head.chunk && addr + self.frame_fields_end <= h.chunk_top
                    })
                };
                if !live(early) || !live(late) {
                    return false;
                }
            }
        }
        // The thread state must read as the walk saw it: then it was read at a moment inside
        // every frame's two copies (in one read, the second copy's first block; after a
        // fetch, the confirming read's first block), when the chain it starts was the stack.
        now == *head
    }

    /// A frame's fields from its bytes.
    fn decode(&self, frame: u64, block: &[u8]) -> Result<FrameRecord, ReadError> {
        let bad = ReadError::BadPointer { addr: frame };
        let at = |offset| u64_at(block, offset).ok_or(bad.clone());
        match self.layout.frame {
            FrameFields::Object {
                back,
                code,
                lasti,
                lasti_scale,
                executing,
                generator,
            } => {
                let lasti = i32_at(block, lasti).ok_or(bad.clone())?;
                let owner = match generator {
                    Some(offset) if at(offset)? != 0 => OWNED_BY_GENERATOR,
                    _ => 0,
                };
                let running = match executing {
                    Some(e) => {
                        let flag = *block.get(e.offset as usize).ok_or(bad.clone())? as i8;
                        e.running.contains(&flag)
                    }
                    None => true,
                };
                Ok(FrameRecord {
                    previous: at(back)?,
                    code: at(code)?,
                    // -1 before the first instruction runs.
                    instr: (lasti.max(0) as u64) * lasti_scale,
                    shown: true,
                    tlbc_index: 0,
                    owner,
                    running,
                    is_entry: false,
                })
            }
            FrameFields::Interpreter {
                previous,
                code,
                instr,
                owner,
                shim_owner,
                tagged_code,
                tlbc_index,
            } => {
                let mut code = at(code)?;
                if tagged_code {
                    code &= !7;
                }
                let owner = block.get(owner as usize).copied().unwrap_or(0);
                let tlbc_index = match tlbc_index {
                    Some(offset) => i32_at(block, offset).ok_or(bad.clone())?,
                    None => 0,
                };
                let is_entry = match self.layout.eval_calls {
                    EvalCalls::EntryFlag { is_entry, .. } => {
                        block.get(is_entry as usize).is_some_and(|&b| b != 0)
                    }
                    _ => false,
                };
                Ok(FrameRecord {
                    previous: at(previous)?,
                    code,
                    instr: at(instr)?,
                    shown: shim_owner != Some(owner),
                    tlbc_index,
                    owner,
                    running: true,
                    is_entry,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::table_for;
    use crate::python::version::Version;
    use crate::target::memory::MemoryImage;
    use std::cell::{Cell, RefCell};

    /// Memory whose contents a test changes between reads, counting the reads made of it
    /// (each `read_many` is one system call in the real one).
    struct Counted {
        image: RefCell<MemoryImage>,
        reads: Cell<usize>,
    }

    impl Memory for Counted {
        fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            self.image.borrow().read_exact(addr, buf)
        }

        fn read_many(&self, blocks: &[(u64, usize)], out: &mut Vec<u8>) -> Result<(), ReadError> {
            self.reads.set(self.reads.get() + 1);
            out.clear();
            for &(addr, len) in blocks {
                let at = out.len();
                out.resize(at + len, 0);
                self.read_exact(addr, &mut out[at..])?;
            }
            Ok(())
        }
    }

    const TSTATE: u64 = 0x10000;
    /// A page of frame objects, as the allocator's pools hold them.
    const POOL: u64 = 0x40000;
    const OUTER: u64 = POOL + 0x40;
    const MIDDLE: u64 = POOL + 0x240;
    const INNER: u64 = POOL + 0x440;
    const OTHER: u64 = POOL + 0x640;
    const CODE: u64 = 0x50000;

    /// A 3.8 thread whose innermost frame is `innermost`, its frames in one page: each at
    /// `(address, caller, running)`.
    fn thread_3_8(innermost: u64, frames: &[(u64, u64, bool)]) -> (StackLayout, MemoryImage) {
        let layout = table_for(&Version::new(3, 8, 18)).unwrap().stack.unwrap();
        let mut tstate = vec![0u8; 256];
        let at = layout.tstate_frame as usize;
        tstate[at..at + 8].copy_from_slice(&innermost.to_le_bytes());
        let mut page = vec![0u8; PAGE as usize];
        for &(frame, caller, running) in frames {
            let base = (frame - POOL) as usize;
            page[base + 24..base + 32].copy_from_slice(&caller.to_le_bytes());
            page[base + 32..base + 40].copy_from_slice(&CODE.to_le_bytes());
            page[base + 104..base + 108].copy_from_slice(&10i32.to_le_bytes());
            page[base + 116] = u8::from(running);
        }
        let mut image = MemoryImage::new();
        image.add(TSTATE, tstate);
        image.add(POOL, page);
        image.add(CODE, vec![0; 64]);
        (layout, image)
    }

    fn addresses(chain: &Chain) -> Vec<u64> {
        chain.frames.iter().map(|(a, _)| *a).collect()
    }

    fn counted(image: MemoryImage) -> Counted {
        Counted {
            image: RefCell::new(image),
            reads: Cell::new(0),
        }
    }

    /// A reader that has walked the thread at `INNER` a few times, and its memory.
    fn primed() -> (FrameReader, Counted) {
        let chain = [
            (OUTER, 0, true),
            (MIDDLE, OUTER, true),
            (INNER, MIDDLE, true),
        ];
        let (layout, image) = thread_3_8(INNER, &chain);
        let memory = counted(image);
        let mut reader = FrameReader::new(layout, 64);
        for _ in 0..3 {
            let read = reader.attempt(&memory, TSTATE, false).unwrap();
            assert_eq!(addresses(&read), vec![INNER, MIDDLE, OUTER]);
        }
        (reader, memory)
    }

    #[test]
    fn the_long_copy_finds_a_new_call_s_frame_in_the_pages_of_recent_ones() {
        // The thread returns from INNER and calls a function whose frame is new to the
        // reader, in the same page.
        let called = [
            (OUTER, 0, true),
            (MIDDLE, OUTER, true),
            (OTHER, MIDDLE, true),
        ];
        let (mut short, seen) = primed();
        *seen.image.borrow_mut() = thread_3_8(OTHER, &called).1;
        seen.reads.set(0);
        // The short copy lacked the frame: fetched, then confirmed by another read.
        let read = short.attempt(&seen, TSTATE, false).unwrap();
        assert_eq!(addresses(&read), vec![OTHER, MIDDLE, OUTER]);
        assert!(seen.reads.get() > 1, "{} reads", seen.reads.get());
        // The long copy holds it: one read gives the chain and its confirmation.
        let (mut long, memory) = primed();
        *memory.image.borrow_mut() = thread_3_8(OTHER, &called).1;
        memory.reads.set(0);
        let read = long.attempt(&memory, TSTATE, true).unwrap();
        assert_eq!(addresses(&read), vec![OTHER, MIDDLE, OUTER]);
        assert_eq!(memory.reads.get(), 1);
    }

    #[test]
    fn an_innermost_frame_not_running_in_either_copy_is_not_believed() {
        // INNER was called and left between the copies: both read it as returned.
        let frames = [
            (OUTER, 0, true),
            (MIDDLE, OUTER, true),
            (INNER, MIDDLE, false),
        ];
        let (layout, image) = thread_3_8(INNER, &frames);
        let memory = counted(image);
        let mut reader = FrameReader::new(layout, 64);
        for _ in 0..3 {
            assert!(matches!(
                reader.attempt(&memory, TSTATE, false),
                Err(StackError::Moved)
            ));
        }
        // Running, it is the stack.
        let frames = [
            (OUTER, 0, true),
            (MIDDLE, OUTER, true),
            (INNER, MIDDLE, true),
        ];
        *memory.image.borrow_mut() = thread_3_8(INNER, &frames).1;
        let read = reader.attempt(&memory, TSTATE, false).unwrap();
        assert_eq!(addresses(&read), vec![INNER, MIDDLE, OUTER]);
    }

    #[test]
    fn attempts_take_the_way_confirmed_more_often_and_now_and_then_the_other() {
        let mut ways = CopyWays::default();
        for _ in 0..40 {
            ways.count(true, true);
            ways.count(false, false);
        }
        let long: Vec<bool> = (0..EXPLORE_EVERY * 2).map(|_| ways.choose()).collect();
        assert_eq!(long.iter().filter(|&&l| !l).count(), 2, "{long:?}");
        // The other way starts being confirmed, the first no longer: the choice follows.
        for _ in 0..200 {
            ways.count(true, false);
            ways.count(false, true);
        }
        let long: Vec<bool> = (0..EXPLORE_EVERY * 2).map(|_| ways.choose()).collect();
        assert_eq!(long.iter().filter(|&&l| l).count(), 2, "{long:?}");
    }
}
