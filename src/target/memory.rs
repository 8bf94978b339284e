//! Reads of the target's memory: the one bounded, typed path every remote read goes through.
//! It must not interpret what it reads (python/ does) and must never panic on a bad address.

use std::cell::Cell;
use std::fmt;

/// Largest single read gilscope ever asks for; anything bigger is a garbage length.
pub const MAX_READ: usize = 1 << 20;

/// The lowest address a valid object can live at (the zero page is never mapped).
const MIN_USER_ADDR: u64 = 0x1000;
/// x86_64 user space ends below the canonical hole.
const MAX_USER_ADDR: u64 = 0x0000_8000_0000_0000;

/// Why a remote read failed. A moving target makes these routine, not exceptional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The address cannot point at a live object (null, kernel half, misaligned).
    BadPointer { addr: u64 },
    /// The length read from the target is beyond any sane bound.
    TooLarge { addr: u64, len: usize },
    /// The kernel refused the read: unmapped memory, or the mapping went away.
    Fault { addr: u64, len: usize, errno: i32 },
    /// The target has exited.
    Gone,
    /// We may not read the target's memory.
    Denied,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::BadPointer { addr } => write!(f, "{addr:#x} is not a valid pointer"),
            ReadError::TooLarge { addr, len } => {
                write!(f, "refused to read {len} bytes at {addr:#x}")
            }
            ReadError::Fault { addr, len, errno } => write!(
                f,
                "could not read {len} bytes at {addr:#x}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            ReadError::Gone => write!(f, "the target process has exited"),
            ReadError::Denied => write!(f, "permission denied reading the target's memory"),
        }
    }
}

impl std::error::Error for ReadError {}

/// True if `addr` could be the address of an object in user space.
pub fn is_user_address(addr: u64) -> bool {
    (MIN_USER_ADDR..MAX_USER_ADDR).contains(&addr)
}

/// A source of target memory. The live process implements it; tests and fuzzers use images.
pub trait Memory {
    /// Fill all of `buf` from `addr`, or fail: a short read is a failure.
    fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;

    /// Reads that went to the target so far (for `--stats`; 0 where nothing is counted).
    fn reads(&self) -> u64 {
        0
    }

    fn read_bytes(&self, addr: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        if len > MAX_READ {
            return Err(ReadError::TooLarge { addr, len });
        }
        if !is_user_address(addr) || addr.checked_add(len as u64).is_none() {
            return Err(ReadError::BadPointer { addr });
        }
        let mut buf = vec![0u8; len];
        self.read_exact(addr, &mut buf)?;
        Ok(buf)
    }

    fn read_u64(&self, addr: u64) -> Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.read_checked(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> Result<u32, ReadError> {
        let mut b = [0u8; 4];
        self.read_checked(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_i32(&self, addr: u64) -> Result<i32, ReadError> {
        Ok(self.read_u32(addr)? as i32)
    }

    /// Read a pointer and check it could point at an object aligned to `align`.
    fn read_pointer(&self, addr: u64, align: u64) -> Result<u64, ReadError> {
        let value = self.read_u64(addr)?;
        check_pointer(value, align)?;
        Ok(value)
    }

    /// Read several blocks, `(address, length)` each, into `out` one after the other: all of
    /// them or an error. A live process answers with one system call (where an image reads
    /// block by block), which is what makes it worth asking for blocks together.
    fn read_many(&self, blocks: &[(u64, usize)], out: &mut Vec<u8>) -> Result<(), ReadError> {
        out.clear();
        for &(addr, len) in blocks {
            let at = out.len();
            out.resize(at + checked_len(addr, len)?, 0);
            self.read_checked(addr, &mut out[at..])?;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes after checking the address is plausible.
    fn read_checked(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if !is_user_address(addr) || addr.checked_add(buf.len() as u64).is_none() {
            return Err(ReadError::BadPointer { addr });
        }
        self.read_exact(addr, buf)
    }
}

/// `len` if a read of it at `addr` is within bounds: a user address, not too long.
fn checked_len(addr: u64, len: usize) -> Result<usize, ReadError> {
    if len > MAX_READ {
        return Err(ReadError::TooLarge { addr, len });
    }
    if !is_user_address(addr) || addr.checked_add(len as u64).is_none() {
        return Err(ReadError::BadPointer { addr });
    }
    Ok(len)
}

/// Check that `addr` could be a pointer to an object aligned to `align` (a power of two).
pub fn check_pointer(addr: u64, align: u64) -> Result<(), ReadError> {
    if !is_user_address(addr) || (align > 1 && addr % align != 0) {
        return Err(ReadError::BadPointer { addr });
    }
    Ok(())
}

/// Little-endian field access into a block read in one go.
pub fn u64_at(block: &[u8], offset: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let bytes = block.get(start..start.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

pub fn u32_at(block: &[u8], offset: u64) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let bytes = block.get(start..start.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

pub fn i32_at(block: &[u8], offset: u64) -> Option<i32> {
    u32_at(block, offset).map(|v| v as i32)
}

/// The memory of a live process, read with process_vm_readv through remoteprocess.
pub struct ProcessMemory {
    pid: i32,
    /// The task the reads go through: the process, or one of its threads once its main
    /// thread has exited (the kernel finds no memory through that one then).
    through: Cell<i32>,
    reads: Cell<u64>,
}

impl ProcessMemory {
    pub fn new(pid: i32) -> ProcessMemory {
        ProcessMemory {
            pid,
            through: Cell::new(crate::target::process::memory_task(pid)),
            reads: Cell::new(0),
        }
    }

    /// Run `read` through the current task; if that task is gone but the process lives on
    /// (its main thread, or the thread used, exited), once more through another.
    fn with_task<T>(
        &self,
        mut read: impl FnMut(i32) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        match read(self.through.get()) {
            Err(ReadError::Gone) => {
                let other = crate::target::process::memory_task(self.pid);
                if other == self.through.get() {
                    return Err(ReadError::Gone);
                }
                self.through.set(other);
                read(other)
            }
            result => result,
        }
    }
}

impl Memory for ProcessMemory {
    fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        use remoteprocess::ProcessMemory as _;
        if buf.len() > MAX_READ {
            return Err(ReadError::TooLarge {
                addr,
                len: buf.len(),
            });
        }
        let Ok(address) = usize::try_from(addr) else {
            return Err(ReadError::BadPointer { addr });
        };
        self.reads.set(self.reads.get() + 1);
        let len = buf.len();
        self.with_task(|pid| {
            remoteprocess::Process { pid }
                .read(address, buf)
                .map_err(|e| classify_read_error(addr, len, &e))
        })
    }

    fn reads(&self) -> u64 {
        self.reads.get()
    }

    fn read_many(&self, blocks: &[(u64, usize)], out: &mut Vec<u8>) -> Result<(), ReadError> {
        out.clear();
        let mut total = 0usize;
        for &(addr, len) in blocks {
            total = total
                .checked_add(checked_len(addr, len)?)
                .filter(|&t| t <= MAX_BATCH)
                .ok_or(ReadError::TooLarge { addr, len })?;
        }
        out.resize(total, 0);
        let mut done = 0;
        for chunk in blocks.chunks(IOV_PER_CALL) {
            let local: Vec<libc::iovec> = chunk
                .iter()
                .scan(done, |at, &(_, len)| {
                    let start = *at;
                    *at += len;
                    Some(libc::iovec {
                        // SAFETY: start + len <= total = out.len(): inside the buffer.
                        iov_base: unsafe { out.as_mut_ptr().add(start) }.cast(),
                        iov_len: len,
                    })
                })
                .collect();
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|&(addr, len)| libc::iovec {
                    iov_base: addr as usize as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            let want: usize = chunk.iter().map(|&(_, len)| len).sum();
            self.reads.set(self.reads.get() + 1);
            // SAFETY: every local iovec lies inside `out`; remote addresses are only read by
            // the kernel, which checks them.
            let got = self.with_task(|pid| {
                let got = unsafe {
                    libc::process_vm_readv(
                        pid,
                        local.as_ptr(),
                        local.len() as libc::c_ulong,
                        remote.as_ptr(),
                        remote.len() as libc::c_ulong,
                        0,
                    )
                };
                if got < 0 {
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    let (addr, len) = chunk[0];
                    return Err(read_error(addr, len, errno));
                }
                Ok(got)
            })?;
            if got as usize != want {
                // A partial read stops at the first block that faulted: name it.
                let mut at = 0;
                for &(addr, len) in chunk {
                    if at + len > got as usize {
                        return Err(ReadError::Fault {
                            addr,
                            len,
                            errno: libc::EFAULT,
                        });
                    }
                    at += len;
                }
            }
            done += want;
        }
        Ok(())
    }
}

/// Blocks per process_vm_readv call (the kernel's UIO_MAXIOV).
const IOV_PER_CALL: usize = 1024;
/// Bytes one `read_many` may ask for in all.
const MAX_BATCH: usize = 16 << 20;

fn classify_read_error(addr: u64, len: usize, error: &remoteprocess::Error) -> ReadError {
    let errno = match error {
        remoteprocess::Error::IOError(e) => e.raw_os_error(),
        remoteprocess::Error::NixError(e) => Some(*e as i32),
        _ => None,
    };
    read_error(addr, len, errno)
}

/// The error of a read of `len` bytes at `addr` that failed with `errno`.
fn read_error(addr: u64, len: usize, errno: Option<i32>) -> ReadError {
    match errno {
        Some(libc::ESRCH) => ReadError::Gone,
        Some(libc::EPERM) => ReadError::Denied,
        Some(errno) => ReadError::Fault { addr, len, errno },
        None => ReadError::Fault {
            addr,
            len,
            errno: libc::EIO,
        },
    }
}

/// A memory image for tests and fuzzing: regions of bytes at fixed addresses. Where regions
/// overlap, the one added first answers.
#[derive(Default, Clone)]
pub struct MemoryImage {
    regions: Vec<(u64, Vec<u8>)>,
    /// (start, index in `regions`), sorted: a snapshot has thousands of regions.
    by_start: Vec<(u64, usize)>,
    longest: u64,
}

impl MemoryImage {
    pub fn new() -> MemoryImage {
        MemoryImage::default()
    }

    pub fn add(&mut self, addr: u64, bytes: Vec<u8>) {
        let key = (addr, self.regions.len());
        let at = self.by_start.partition_point(|k| *k < key);
        self.by_start.insert(at, key);
        self.longest = self.longest.max(bytes.len() as u64);
        self.regions.push((addr, bytes));
    }
}

impl Memory for MemoryImage {
    fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        // Only regions starting at most `longest` bytes below `addr` can hold it.
        let end = self.by_start.partition_point(|&(start, _)| start <= addr);
        let lowest = addr.saturating_sub(self.longest);
        let begin = self.by_start[..end].partition_point(|&(start, _)| start < lowest);
        let holder = self.by_start[begin..end]
            .iter()
            .filter_map(|&(start, index)| {
                let offset = usize::try_from(addr - start).ok()?;
                let bytes = &self.regions[index].1;
                let src = bytes.get(offset..offset.checked_add(buf.len())?)?;
                Some((index, src))
            })
            .min_by_key(|(index, _)| *index);
        match holder {
            Some((_, src)) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(ReadError::Fault {
                addr,
                len: buf.len(),
                errno: libc::EFAULT,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_reads_inside_regions_and_faults_outside() {
        let mut image = MemoryImage::new();
        image.add(0x10000, (0u8..32).collect());
        assert_eq!(
            image.read_u32(0x10004).unwrap(),
            u32::from_le_bytes([4, 5, 6, 7])
        );
        assert!(matches!(
            image.read_u64(0x1001c),
            Err(ReadError::Fault { .. })
        ));
        assert!(matches!(
            image.read_u64(0x10),
            Err(ReadError::BadPointer { .. })
        ));
    }

    #[test]
    fn the_region_added_first_answers_where_regions_overlap() {
        let mut image = MemoryImage::new();
        image.add(0x10000, vec![1; 64]);
        image.add(0x10008, vec![2; 8]);
        image.add(0x8000, vec![3; 0x9000]);
        assert_eq!(image.read_u64(0x10008).unwrap(), 0x0101_0101_0101_0101);
        assert_eq!(image.read_u64(0x8000).unwrap(), 0x0303_0303_0303_0303);
        assert_eq!(image.read_u64(0x11000 - 8).unwrap(), 0x0303_0303_0303_0303);
        assert!(image.read_u64(0x11000 - 4).is_err());
    }

    #[test]
    fn pointers_must_be_user_space_and_aligned() {
        assert!(check_pointer(0x7f00_0000_1000, 8).is_ok());
        assert!(check_pointer(0x7f00_0000_1004, 8).is_err());
        assert!(check_pointer(0, 8).is_err());
        assert!(check_pointer(0xffff_8000_0000_0000, 8).is_err());
    }

    #[test]
    fn oversized_reads_are_refused_before_allocating() {
        let image = MemoryImage::new();
        assert!(matches!(
            image.read_bytes(0x10000, MAX_READ + 1),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_batch_reads_every_block_in_order_or_names_the_one_that_faulted() {
        let here = ProcessMemory::new(std::process::id() as i32);
        let a = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let b = vec![9u8; 3000];
        let blocks = [
            (a.as_ptr() as u64 + 2, 4),
            (b.as_ptr() as u64, b.len()),
            (a.as_ptr() as u64, 1),
        ];
        let mut out = Vec::new();
        here.read_many(&blocks, &mut out).unwrap();
        assert_eq!(&out[..4], &[3, 4, 5, 6]);
        assert!(out[4..3004].iter().all(|&x| x == 9));
        assert_eq!(out[3004..], [1]);
        assert_eq!(here.reads(), 1);
        // A page nobody maps (the first above the null guard): the batch fails there.
        let blocks = [(a.as_ptr() as u64, 8), (0x1000, 8)];
        assert!(matches!(
            here.read_many(&blocks, &mut out),
            Err(ReadError::Fault { addr: 0x1000, .. })
        ));
        assert!(matches!(
            here.read_many(&[(0x10, 8)], &mut out),
            Err(ReadError::BadPointer { .. })
        ));
        // An image answers the same way, block by block.
        let mut image = MemoryImage::new();
        image.add(0x10000, (0u8..32).collect());
        image
            .read_many(&[(0x10004, 2), (0x10000, 1)], &mut out)
            .unwrap();
        assert_eq!(out, [4, 5, 0]);
        assert!(image.read_many(&[(0x20000, 1)], &mut out).is_err());
    }

    #[test]
    fn block_accessors_never_read_past_the_end() {
        let block = [1u8; 10];
        assert_eq!(u64_at(&block, 2), Some(0x0101_0101_0101_0101));
        assert_eq!(u64_at(&block, 3), None);
        assert_eq!(u32_at(&block, u64::MAX), None);
    }
}
