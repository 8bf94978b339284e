//! The perf_event_open(2) system call and its attribute struct, shared by the task-clock
//! counters (cpu_clock.rs) and the native stack sampler (native/perf.rs). Opening only:
//! what an event counts or samples is each caller's business.

use std::os::fd::{FromRawFd, OwnedFd};

pub const PERF_TYPE_SOFTWARE: u32 = 1;
pub const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
/// The first published size of `struct perf_event_attr`: every kernel accepts it.
pub const PERF_ATTR_SIZE_VER0: u32 = 64;
/// The size up to `clockid`.
pub const PERF_ATTR_SIZE_VER3: u32 = 96;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `struct perf_event_attr` up to PERF_ATTR_SIZE_VER3; the kernel reads `size` bytes of it.
#[repr(C)]
#[derive(Default)]
pub struct PerfEventAttr {
    pub kind: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    pub config1: u64,
    pub config2: u64,
    pub branch_sample_type: u64,
    pub sample_regs_user: u64,
    pub sample_stack_user: u32,
    pub clockid: i32,
}

/// Open `attr` on thread `tid` (any CPU, no group), close-on-exec; the errno on failure.
pub fn open(attr: &PerfEventAttr, tid: i32) -> Result<OwnedFd, i32> {
    // SAFETY: perf_event_open with a valid attr of at least its declared size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            tid,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
