//! Native stacks of threads on a CPU: perf `task-clock` sampling of each followed thread with
//! its user registers and the top of its user stack copied by the kernel at the sample (as
//! `perf record --call-graph dwarf`), and the same at each of its context switches (as
//! `perf record -e context-switches`), so that a thread preempted or asleep has a sample of
//! where it stopped. Nothing is stopped; each sample costs the target the copy, in its own
//! timer interrupt or context switch. Samples are kept a short while and matched to ticks by
//! their CLOCK_MONOTONIC time.

use crate::target::perf_event::{
    PerfEventAttr, PERF_ATTR_SIZE_VER3, PERF_COUNT_SW_TASK_CLOCK, PERF_TYPE_SOFTWARE,
};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use super::unwind::Modules;
use super::{Capture, CaptureError, NativeStack, Registers};

pub(super) const PERF_COUNT_SW_CONTEXT_SWITCHES: u64 = 3;
/// `PERF_EVENT_IOC_SET_OUTPUT`: write an event's records into another event's ring.
const PERF_EVENT_IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
pub(super) const SAMPLE_TID: u64 = 1 << 1;
pub(super) const SAMPLE_TIME: u64 = 1 << 2;
pub(super) const SAMPLE_REGS_USER: u64 = 1 << 12;
pub(super) const SAMPLE_STACK_USER: u64 = 1 << 13;
/// x86_64 perf register numbers: BP, SP, IP (the sample lists them in this order).
pub(super) const REGS_BP_SP_IP: u64 = (1 << 6) | (1 << 7) | (1 << 8);
pub(super) const FLAG_SAMPLE_ID_ALL: u64 = 1 << 18;
pub(super) const FLAG_USE_CLOCKID: u64 = 1 << 25;
pub(super) const PERF_RECORD_LOST: u32 = 2;
pub(super) const PERF_RECORD_SAMPLE: u32 = 9;
const PERF_SAMPLE_REGS_ABI_64: u64 = 2;
/// Where `data_head` and `data_tail` are in `struct perf_event_mmap_page`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;
/// Samples kept per thread (unread, in its ring): the newest taken by the tick being read and
/// those taken since, a few at most.
const KEPT_PER_THREAD: usize = 4;
/// Samples a ring holds between two readings (a thread switching often fills it fastest).
const RING_SAMPLES: usize = 16;
/// Largest stack copy the kernel accepts (it must fit a 16-bit record size with the rest).
pub const MAX_STACK_COPY: u32 = 65_000 & !7;

/// One perf sample of a followed thread, left in its ring until no tick can want it: the stack
/// copy is kilobytes, cold in the cache (the kernel wrote it on another CPU), and an unwind
/// reads a few hundred bytes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSample {
    /// CLOCK_MONOTONIC (ns).
    pub time_ns: u64,
    pub regs: Registers,
    /// Where the record begins in the ring, and where its stack bytes (`stack_len` of them,
    /// from `regs.sp` up) are.
    record_at: u64,
    stack_at: u64,
    pub stack_len: usize,
}

/// One perf sample: a thread's user registers and the top of its stack at `time_ns`.
#[derive(Debug, Clone)]
pub struct UserSample {
    pub tid: i32,
    /// CLOCK_MONOTONIC (ns).
    pub time_ns: u64,
    pub regs: Registers,
    /// The stack from `regs.sp` up, as much as the kernel copied.
    pub stack: Vec<u8>,
}

/// A perf ring buffer mapped from the kernel.
pub(super) struct Ring {
    fd: OwnedFd,
    /// The context-switch event, whose samples go to this ring too (None where it could
    /// not be opened: samples on the timer only).
    _switches: Option<OwnedFd>,
    base: *mut u8,
    len: usize,
    page: usize,
    /// Records before this position were listed by [`Ring::pending`] already (the tail may
    /// lag behind: records kept in the ring until they are read).
    seen: u64,
}

// SAFETY: the mapping belongs to this ring alone and is read and written only through
// `&mut self`; moving it to another thread (the sampler's) moves that ownership whole.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what mmap returned; nothing points into it afterwards.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
        let _ = self.fd.as_raw_fd();
    }
}

impl Ring {
    /// Map `data_pages` (a power of two) of ring buffer for the perf event `fd`.
    pub(super) fn map(fd: OwnedFd, data_pages: usize) -> Result<Ring, i32> {
        let page = page_size();
        let len = page * (1 + data_pages);
        // SAFETY: mapping a perf fd as perf_event_open(2) describes; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(errno());
        }
        Ok(Ring {
            fd,
            _switches: None,
            base: base.cast(),
            len,
            page,
            seen: 0,
        })
    }

    fn data_size(&self) -> usize {
        self.len - self.page
    }

    /// Every record written since the last call, to `each`, read in place: a record's bytes
    /// are copied out only as its reader asks for them. The space is given back at once.
    pub(super) fn drain(&mut self, mut each: impl FnMut(&Record<'_>)) {
        let mut records = Vec::new();
        let head = self.pending(&mut records);
        for record in &records {
            each(record);
        }
        drop(records);
        self.seen = head;
        self.consume(head);
    }

    /// The kernel's write position (bytes ever written) and our read position.
    fn head_tail(&self) -> (u64, u64) {
        // SAFETY: the metadata page is mapped for as long as `self`; the kernel writes
        // data_head, we write data_tail, as perf_event_open(2) prescribes, with the fences it
        // asks for.
        let head = unsafe { std::ptr::read_volatile(self.base.add(DATA_HEAD) as *const u64) };
        fence(Ordering::Acquire);
        let tail = unsafe { std::ptr::read_volatile(self.base.add(DATA_TAIL) as *const u64) };
        (head, tail)
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data area follows the metadata page, inside the mapping.
        unsafe { self.base.add(self.page) }
    }

    /// The records written since the last call, oldest first, into `out`; returns the head to
    /// give back to (with [`Ring::consume`]) once they are read. The caller marks them seen
    /// (`seen = head`) when it is done with the list.
    pub(super) fn pending<'a>(&'a self, out: &mut Vec<Record<'a>>) -> u64 {
        let (head, tail) = self.head_tail();
        let size = self.data_size() as u64;
        // The kernel never writes more than the buffer holds between two reads; a head that
        // says otherwise is not believed (nor a tail outside what we have seen).
        if head.wrapping_sub(tail) > size || self.seen < tail || self.seen > head {
            return head;
        }
        let mut at = self.seen;
        while at < head {
            let mut record = Record {
                data: self.data(),
                area: size as usize,
                at,
                len: 8,
                _ring: std::marker::PhantomData,
            };
            let mut header = [0u8; 8];
            record.read(0, &mut header);
            let len = u16::from_le_bytes([header[6], header[7]]) as u64;
            if len < 8 || at + len > head {
                break;
            }
            record.len = len as usize;
            out.push(record);
            at += len;
        }
        head
    }

    /// Bytes `at..at + len` of the ring, if they are in the part not given back yet and seen.
    pub(super) fn bytes_at(&self, at: u64, len: usize) -> Option<Record<'_>> {
        let (_, tail) = self.head_tail();
        let end = at.checked_add(len as u64)?;
        (at >= tail && end <= self.seen && len <= self.data_size()).then(|| Record {
            data: self.data(),
            area: self.data_size(),
            at,
            len,
            _ring: std::marker::PhantomData,
        })
    }

    /// Give the kernel back the space before `tail` (at most what was seen): records there
    /// must not be read after this.
    pub(super) fn consume(&self, tail: u64) {
        let tail = tail.min(self.seen);
        fence(Ordering::Release);
        // SAFETY: see `head_tail`; the tail tells the kernel the space is free again.
        unsafe { std::ptr::write_volatile(self.base.add(DATA_TAIL) as *mut u64, tail) };
    }
}

/// Bytes of one perf record, wherever they lie: in a ring (where a record may wrap around the
/// end of the data area) or in a slice (tests).
pub(super) trait RecordBytes {
    fn len(&self) -> usize;
    /// Copy `out.len()` bytes from `offset` of the record; false (and nothing copied) if they
    /// are not all inside it.
    fn read(&self, offset: usize, out: &mut [u8]) -> bool;

    /// Replace `out`'s bytes with `len` bytes from `offset`; false if they are not all inside
    /// the record.
    fn read_vec(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.resize(len, 0);
        self.read(offset, out)
    }

    fn u64_at(&self, offset: usize) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(offset, &mut b).then(|| u64::from_le_bytes(b))
    }

    fn u32_at(&self, offset: usize) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b).then(|| u32::from_le_bytes(b))
    }
}

impl RecordBytes for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        match offset
            .checked_add(out.len())
            .and_then(|end| self.get(offset..end))
        {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// One record in a mapped ring, valid while the ring's tail has not passed it (for the call
/// of [`Ring::drain`]'s `each` that receives it).
pub(super) struct Record<'a> {
    data: *const u8,
    area: usize,
    /// Where the record begins, as a count of bytes the ring has ever held.
    at: u64,
    len: usize,
    _ring: std::marker::PhantomData<&'a Ring>,
}

impl RecordBytes for Record<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        // At most two runs of bytes: to the end of the data area, then from its start (a
        // record wraps around at most once: none is larger than the area). A byte at a time,
        // with a division each, was four tenths of gilscope's CPU time with --native at 1 kHz.
        let start = ((self.at + offset as u64) % self.area as u64) as usize;
        let whole = out.len().min(self.area);
        let first = whole.min(self.area - start);
        // SAFETY: `start + first <= area` and `whole - first <= start <= area`: both runs lie
        // in the mapped data area, which outlives `self`, and `out` holds `whole` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr().add(first), whole - first);
        }
        true
    }

    fn read_vec(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return false;
        }
        let start = ((self.at + offset as u64) % self.area as u64) as usize;
        let whole = len.min(self.area);
        let first = whole.min(self.area - start);
        out.clear();
        // SAFETY: as in `read`: both runs lie in the mapped data area, which outlives `self`.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(self.data.add(start), first));
            out.extend_from_slice(std::slice::from_raw_parts(self.data, whole - first));
        }
        true
    }
}

/// perf sampling of the followed threads of one process.
pub struct PerfStacks {
    period_ns: u64,
    stack_bytes: u32,
    data_pages: usize,
    rings: HashMap<i32, Ring>,
    /// Oldest first; each in its thread's ring, which is given back only up to the oldest.
    samples: HashMap<i32, VecDeque<RingSample>>,
    /// When the kernel last dropped samples of each thread (a full ring): its samples from
    /// before then may not be its latest (CLOCK_MONOTONIC ns).
    lost_at: HashMap<i32, u64>,
    /// perf_event_open was refused for a reason that will not change: do not retry.
    pub unavailable: Option<i32>,
    /// Samples read, and samples the kernel dropped because a ring was full (for `--stats`).
    pub read: u64,
    pub lost: u64,
}

impl PerfStacks {
    /// Sample each followed thread every `period_ns` of its CPU time, copying `stack_bytes`
    /// of its stack (rounded down to 8, at most [`MAX_STACK_COPY`]).
    pub fn new(period_ns: u64, stack_bytes: u32) -> PerfStacks {
        let stack_bytes = (stack_bytes & !7).clamp(8, MAX_STACK_COPY);
        let want = RING_SAMPLES * (stack_bytes as usize + 128);
        let page = page_size();
        let data_pages = want.div_ceil(page).next_power_of_two();
        PerfStacks {
            period_ns: period_ns.max(10_000),
            stack_bytes,
            data_pages,
            rings: HashMap::new(),
            samples: HashMap::new(),
            lost_at: HashMap::new(),
            unavailable: None,
            read: 0,
            lost: 0,
        }
    }

    /// Start sampling thread `tid` (no-op if it is sampled already).
    pub fn follow(&mut self, tid: i32) -> Result<(), CaptureError> {
        if let Some(errno) = self.unavailable {
            return Err(CaptureError::PerfUnavailable(errno));
        }
        if self.rings.contains_key(&tid) {
            return Ok(());
        }
        match self.open(tid) {
            Ok(ring) => {
                self.rings.insert(tid, ring);
                Ok(())
            }
            Err(errno) => {
                if matches!(
                    errno,
                    libc::EACCES | libc::EPERM | libc::ENOSYS | libc::ENOENT
                ) {
                    self.unavailable = Some(errno);
                    return Err(CaptureError::PerfUnavailable(errno));
                }
                if errno == libc::ESRCH {
                    return Err(CaptureError::Gone);
                }
                Err(CaptureError::Failed(format!(
                    "perf_event_open for thread {tid}: {}",
                    std::io::Error::from_raw_os_error(errno)
                )))
            }
        }
    }

    /// Stop sampling threads not in `alive` (sorted).
    pub fn retain(&mut self, alive: &[i32]) {
        self.rings.retain(|t, _| alive.binary_search(t).is_ok());
        self.samples.retain(|t, _| alive.binary_search(t).is_ok());
        self.lost_at.retain(|t, _| alive.binary_search(t).is_ok());
    }

    /// Stop sampling thread `tid`.
    pub fn forget(&mut self, tid: i32) {
        self.rings.remove(&tid);
        self.samples.remove(&tid);
        self.lost_at.remove(&tid);
    }

    pub fn followed(&self) -> usize {
        self.rings.len()
    }

    /// A sampling event of thread `tid`: `config` every `period` of it.
    fn open_event(&self, tid: i32, config: u64, period: u64) -> Result<OwnedFd, i32> {
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: PERF_ATTR_SIZE_VER3,
            config,
            sample_period: period,
            sample_type: SAMPLE_TID | SAMPLE_TIME | SAMPLE_REGS_USER | SAMPLE_STACK_USER,
            // Records of lost samples carry the thread and the time too.
            flags: FLAG_USE_CLOCKID | FLAG_SAMPLE_ID_ALL,
            sample_regs_user: REGS_BP_SP_IP,
            sample_stack_user: self.stack_bytes,
            clockid: libc::CLOCK_MONOTONIC,
            ..PerfEventAttr::default()
        };
        crate::target::perf_event::open(&attr, tid)
    }

    fn open(&self, tid: i32) -> Result<Ring, i32> {
        let fd = self.open_event(tid, PERF_COUNT_SW_TASK_CLOCK, self.period_ns)?;
        let mut ring = Ring::map(fd, self.data_pages)?;
        // Every switch: where a preempted thread waits for a CPU, or a thread went to sleep,
        // which no timer sample after it will show. Its samples go to the ring just mapped
        // (the kernel redirects only into a mapped one).
        ring._switches = self
            .open_event(tid, PERF_COUNT_SW_CONTEXT_SWITCHES, 1)
            .ok()
            .filter(|switches| {
                // SAFETY: both fds are perf events of the same thread, open for this call.
                let redirected = unsafe {
                    libc::ioctl(
                        switches.as_raw_fd(),
                        PERF_EVENT_IOC_SET_OUTPUT as _,
                        ring.fd.as_raw_fd(),
                    )
                };
                redirected == 0
            });
        Ok(ring)
    }

    /// Read every ring: the samples taken since the last call join those kept. `horizon_ns`
    /// is the time of the tick being read (CLOCK_MONOTONIC): no tick from now on asks for a
    /// thread's stack before it, so of its samples taken by then only the newest is kept.
    pub fn drain(&mut self, horizon_ns: u64) {
        self.drain_rings(None, horizon_ns);
    }

    /// Read the ring of thread `tid` only (just before its stack is wanted).
    pub fn drain_thread(&mut self, tid: i32, horizon_ns: u64) {
        self.drain_rings(Some(tid), horizon_ns);
    }

    fn drain_rings(&mut self, only: Option<i32>, horizon_ns: u64) {
        let mut lost = 0u64;
        let mut read = 0u64;
        for (&tid, ring) in self.rings.iter_mut() {
            if only.is_some_and(|only| only != tid) {
                continue;
            }
            let kept = self.samples.entry(tid).or_default();
            let mut records = Vec::new();
            let head = ring.pending(&mut records);
            for record in &records {
                match record_kind(record) {
                    Some(PERF_RECORD_SAMPLE) => {
                        read += 1;
                        if let Some(sample) = parse_sample_header(record).filter(|(t, _)| *t == tid)
                        {
                            kept.push_back(sample.1);
                        }
                    }
                    Some(PERF_RECORD_LOST) => {
                        if let Some((count, _, time)) = parse_lost(record) {
                            lost += count;
                            let at = self.lost_at.entry(tid).or_default();
                            *at = (*at).max(time);
                        }
                    }
                    _ => {}
                }
            }
            drop(records);
            ring.seen = head;
            // No tick from now on asks for a stack before the horizon: of the samples taken
            // by then only the newest can still be a thread's latest. Past the few kept, the
            // oldest go (the ring must keep room for new samples).
            let newest_by_horizon = kept
                .iter()
                .filter(|s| s.time_ns <= horizon_ns)
                .map(|s| s.time_ns)
                .max();
            kept.retain(|s| s.time_ns > horizon_ns || Some(s.time_ns) == newest_by_horizon);
            while kept.len() > KEPT_PER_THREAD {
                kept.pop_front();
            }
            ring.consume(kept.front().map_or(head, |s| s.record_at));
        }
        self.lost += lost;
        self.read += read;
    }

    /// The latest kept sample of `tid` taken by `now_ns`, if it was taken within `max_age_ns`
    /// of it and no sample was lost after it.
    ///
    /// A followed thread is sampled every period of its own CPU time and at each context
    /// switch, so its latest sample is where it stopped (preempted, or asleep), or at most
    /// one period of its running behind: its wall-clock age says little on a busy machine.
    pub fn latest(&self, tid: i32, now_ns: u64, max_age_ns: u64) -> Option<&RingSample> {
        let lost_at = self.lost_at.get(&tid).copied().unwrap_or(0);
        self.samples
            .get(&tid)?
            .iter()
            .filter(|s| s.time_ns <= now_ns)
            .max_by_key(|s| s.time_ns)
            .filter(|s| now_ns - s.time_ns <= max_age_ns && s.time_ns > lost_at)
    }

    /// Unwind `sample` of thread `tid` (from [`PerfStacks::latest`]), reading its stack copy
    /// where the kernel wrote it.
    pub fn unwind(&self, tid: i32, sample: &RingSample, modules: &mut Modules) -> NativeStack {
        let stack = self
            .rings
            .get(&tid)
            .and_then(|ring| ring.bytes_at(sample.stack_at, sample.stack_len));
        let base = sample.regs.sp;
        let (frames, end) = modules.unwind(sample.regs, &mut |addr| {
            let at = usize::try_from(addr.checked_sub(base)?).ok()?;
            stack.as_ref()?.u64_at(at)
        });
        NativeStack {
            frames,
            end,
            capture: Capture::Perf {
                time_ns: sample.time_ns,
            },
        }
    }

    /// The native stack of `tid` from its latest sample, if taken within `max_age_ns` of
    /// `now_ns`.
    pub fn capture(
        &self,
        tid: i32,
        now_ns: u64,
        max_age_ns: u64,
        modules: &mut Modules,
    ) -> Result<NativeStack, CaptureError> {
        let sample = self
            .latest(tid, now_ns, max_age_ns)
            .ok_or(CaptureError::Running)?;
        Ok(self.unwind(tid, sample, modules))
    }
}

pub(super) fn record_kind<R: RecordBytes + ?Sized>(record: &R) -> Option<u32> {
    record.u32_at(0)
}

/// A PERF_RECORD_LOST: how many samples the kernel dropped, and the thread and time of the
/// record (its sample_id fields: pid, tid, time, after the event id and the count).
pub(super) fn parse_lost<R: RecordBytes + ?Sized>(record: &R) -> Option<(u64, i32, u64)> {
    let count = record.u64_at(16)?;
    let tid = record.u32_at(28)? as i32;
    Some((count, tid, record.u64_at(32)?))
}

/// The thread of a PERF_RECORD_SAMPLE of this file's sample type, and the sample, its stack
/// left where the record is.
fn parse_sample_header(record: &Record<'_>) -> Option<(i32, RingSample)> {
    let (tid, time_ns, regs, _, dyn_size) = sample_fields(record)?;
    Some((
        tid,
        RingSample {
            time_ns,
            regs,
            record_at: record.at,
            stack_at: record.at + 64,
            stack_len: dyn_size,
        },
    ))
}

/// A sample's thread, time, registers, stack copy size and the part of it the kernel filled.
fn sample_fields<R: RecordBytes + ?Sized>(
    record: &R,
) -> Option<(i32, u64, Registers, usize, usize)> {
    let tid = record.u32_at(12)? as i32;
    let time_ns = record.u64_at(16)?;
    if record.u64_at(24)? != PERF_SAMPLE_REGS_ABI_64 {
        return None;
    }
    let (bp, sp, pc) = (record.u64_at(32)?, record.u64_at(40)?, record.u64_at(48)?);
    let size = usize::try_from(record.u64_at(56)?).ok()?;
    let end = 64usize.checked_add(size)?;
    if end > record.len() {
        return None;
    }
    let dyn_size = if size > 0 {
        usize::try_from(record.u64_at(end)?).ok()?.min(size)
    } else {
        0
    };
    let regs = Registers {
        pc,
        sp,
        bp: Some(bp),
    };
    Some((tid, time_ns, regs, size, dyn_size))
}

/// A PERF_RECORD_SAMPLE of this file's sample type: pid, tid, time, abi, bp, sp, ip, size,
/// stack bytes, dyn_size. The stack bytes the kernel filled (dyn_size of them) go to `stack`,
/// whose allocation is used again. None if it does not parse (a sample with no user
/// registers: the thread was in the kernel on behalf of nobody).
pub(super) fn parse_sample<R: RecordBytes + ?Sized>(
    record: &R,
    mut stack: Vec<u8>,
) -> Option<UserSample> {
    let (tid, time_ns, regs, _, dyn_size) = sample_fields(record)?;
    if !record.read_vec(64, dyn_size, &mut stack) {
        return None;
    }
    Some(UserSample {
        tid,
        time_ns,
        regs,
        stack,
    })
}

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record(tid: u32, time: u64, abi: u64, stack: &[u8], dyn_size: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(PERF_RECORD_SAMPLE.to_le_bytes());
        r.extend(0u16.to_le_bytes());
        r.extend(0u16.to_le_bytes()); // size, patched below
        r.extend(7u32.to_le_bytes());
        r.extend(tid.to_le_bytes());
        r.extend(time.to_le_bytes());
        r.extend(abi.to_le_bytes());
        for reg in [0x10u64, 0x7ffd_0000, 0x40_1000] {
            r.extend(reg.to_le_bytes());
        }
        r.extend((stack.len() as u64).to_le_bytes());
        r.extend(stack);
        if !stack.is_empty() {
            r.extend(dyn_size.to_le_bytes());
        }
        let len = r.len() as u16;
        r[6..8].copy_from_slice(&len.to_le_bytes());
        r
    }

    /// A ring over an anonymous mapping (a metadata page and `data_pages` of data) whose
    /// data area holds `records` written from byte `start` on, wrapping at its end.
    fn ring_holding(data_pages: usize, start: u64, records: &[Vec<u8>]) -> Ring {
        let page = page_size();
        let len = page * (1 + data_pages);
        // SAFETY: a fresh private anonymous mapping; the ring unmaps it when dropped.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base.cast::<u8>();
        let size = (len - page) as u64;
        let mut at = start;
        for record in records {
            for &byte in record {
                // SAFETY: reduced modulo the data area's size, inside the mapping.
                unsafe { *base.add(page + (at % size) as usize) = byte };
                at += 1;
            }
        }
        // SAFETY: the metadata page is the mapping's first.
        unsafe {
            std::ptr::write(base.add(DATA_TAIL) as *mut u64, start);
            std::ptr::write(base.add(DATA_HEAD) as *mut u64, at);
        }
        let fd = std::fs::File::open("/dev/null").unwrap().into();
        Ring {
            fd,
            _switches: None,
            base,
            len,
            page,
            seen: start,
        }
    }

    #[test]
    fn records_that_wrap_around_the_ring_are_read_whole() {
        let page = page_size() as u64;
        let stack: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let records: Vec<Vec<u8>> = (0..3)
            .map(|i| sample_record(40 + i, 100 + i as u64, 2, &stack, 1000))
            .collect();
        // The second record straddles the end of the data area; then one fits exactly.
        for start in [page - 1100, page - 8, page * 2 - 10] {
            let mut ring = ring_holding(1, start, &records[..2]);
            let mut read = Vec::new();
            ring.drain(|r| {
                let mut whole = vec![0u8; r.len()];
                assert!(r.read(0, &mut whole));
                read.push(whole);
            });
            assert_eq!(read, records[..2].to_vec(), "from {start}");
            let s = parse_sample(&read[1][..], Vec::new()).unwrap();
            assert_eq!((s.tid, s.time_ns, s.stack), (41, 101, stack.clone()));
        }
        // A head further on than the area can hold is not believed.
        let mut ring = ring_holding(1, 0, &records);
        // SAFETY: the metadata page of the test's own mapping.
        unsafe { std::ptr::write(ring.base.add(DATA_HEAD) as *mut u64, page * 3) };
        let mut read = 0;
        ring.drain(|_| read += 1);
        assert_eq!(read, 0);
    }

    /// The words of a sample's stack, read where the kernel left them.
    fn stack_of(perf: &PerfStacks, tid: i32, sample: &RingSample) -> Vec<u8> {
        let ring = &perf.rings[&tid];
        let bytes = ring.bytes_at(sample.stack_at, sample.stack_len).unwrap();
        let mut out = vec![0; sample.stack_len];
        assert!(bytes.read(0, &mut out));
        out
    }

    fn tail_of(ring: &Ring) -> u64 {
        ring.head_tail().1
    }

    #[test]
    fn samples_stay_in_the_ring_until_no_tick_can_want_them() {
        let stack: Vec<u8> = (0..=255u8).cycle().take(512).collect();
        let other: Vec<u8> = (0..=255u8).rev().cycle().take(512).collect();
        let records: Vec<Vec<u8>> = [100u64, 200, 300]
            .iter()
            .map(|&t| sample_record(7, t, 2, if t == 200 { &stack } else { &other }, 512))
            .collect();
        // A sample of another thread in its ring is not taken for this one's.
        let mut written = records.clone();
        written.insert(1, sample_record(8, 250, 2, &stack, 512));
        let mut perf = PerfStacks::new(1_000_000, 4096);
        let len = written[0].len() as u64;
        perf.rings.insert(7, ring_holding(2, 0, &written));
        perf.drain(250);
        let kept: Vec<u64> = perf.samples[&7].iter().map(|s| s.time_ns).collect();
        // 100 is older than 200, the newest by the tick at 250; 300 may be a later tick's.
        assert_eq!(kept, [200, 300]);
        assert_eq!(perf.read, 4);
        let latest = *perf.latest(7, 250, 1_000).unwrap();
        assert_eq!(stack_of(&perf, 7, &latest), stack);
        // The space before the oldest kept sample (the third record) is given back; the rest
        // is not.
        assert_eq!(tail_of(&perf.rings[&7]), 2 * len);
        assert_eq!(perf.latest(7, 350, 1_000).unwrap().time_ns, 300);
        // A tick at 350: 300 is its sample, 200 is no longer wanted and its space goes back.
        perf.drain_thread(7, 350);
        let kept: Vec<u64> = perf.samples[&7].iter().map(|s| s.time_ns).collect();
        assert_eq!(kept, [300]);
        assert_eq!(tail_of(&perf.rings[&7]), 3 * len);
        let latest = *perf.latest(7, 350, 1_000).unwrap();
        assert_eq!(stack_of(&perf, 7, &latest), other);
        // Bytes outside the part kept are not handed out.
        let ring = &perf.rings[&7];
        assert!(ring.bytes_at(0, 8).is_none());
        assert!(ring.bytes_at(4 * len, 8).is_none());
    }

    #[test]
    fn a_sample_record_gives_registers_and_the_stack_the_kernel_filled() {
        let stack: Vec<u8> = (0..64).collect();
        let s = parse_sample(&sample_record(42, 1234, 2, &stack, 16)[..], Vec::new()).unwrap();
        assert_eq!((s.tid, s.time_ns), (42, 1234));
        assert_eq!(
            s.regs,
            Registers {
                pc: 0x40_1000,
                sp: 0x7ffd_0000,
                bp: Some(0x10)
            }
        );
        assert_eq!(s.stack, (0..16).collect::<Vec<u8>>());
        // No user registers (a kernel-only moment), a cut record, a dyn_size past the copy.
        assert!(parse_sample(&sample_record(42, 1, 0, &stack, 16)[..], Vec::new()).is_none());
        let whole = sample_record(42, 1, 2, &stack, 16);
        assert!(parse_sample(&whole[..whole.len() - 20], Vec::new()).is_none());
        let s = parse_sample(&sample_record(42, 1, 2, &stack, 1 << 40)[..], vec![9; 3]).unwrap();
        assert_eq!(s.stack.len(), 64);
    }

    #[test]
    fn the_latest_sample_is_chosen_only_if_recent_enough() {
        let mut perf = PerfStacks::new(1_000_000, 4096);
        let kept = perf.samples.entry(5).or_default();
        for t in [1_000, 2_000, 3_000] {
            kept.push_back(RingSample {
                time_ns: t,
                regs: Registers {
                    pc: 1,
                    sp: 2,
                    bp: None,
                },
                record_at: 0,
                stack_at: 0,
                stack_len: 0,
            });
        }
        assert_eq!(perf.latest(5, 3_400, 500).unwrap().time_ns, 3_000);
        assert_eq!(perf.latest(5, 3_000, 0).unwrap().time_ns, 3_000);
        // Samples after the moment asked about are not the thread at that moment.
        assert_eq!(perf.latest(5, 2_500, 1_000).unwrap().time_ns, 2_000);
        assert!(perf.latest(5, 9_000, 500).is_none());
        assert!(perf.latest(6, 3_000, 500).is_none());
        // Samples were lost after its latest kept one: that one may not be its latest.
        perf.lost_at.insert(5, 3_100);
        assert!(perf.latest(5, 3_400, 500).is_none());
        perf.lost_at.insert(5, 2_900);
        assert_eq!(perf.latest(5, 3_400, 500).unwrap().time_ns, 3_000);
    }

    #[test]
    fn a_lost_record_says_whose_samples_were_dropped_and_when() {
        let mut r = Vec::new();
        r.extend(PERF_RECORD_LOST.to_le_bytes());
        r.extend(0u16.to_le_bytes());
        r.extend(40u16.to_le_bytes());
        r.extend(99u64.to_le_bytes());
        r.extend(3u64.to_le_bytes());
        r.extend(7u32.to_le_bytes());
        r.extend(42u32.to_le_bytes());
        r.extend(1234u64.to_le_bytes());
        assert_eq!(parse_lost(&r[..]), Some((3, 42, 1234)));
        assert_eq!(parse_lost(&r[..36]), None);
    }
}
