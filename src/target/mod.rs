//! The process over there: its memory, its memory map, the ELF files it mapped, its OS threads.
//! Nothing here knows about Python.

pub mod cpu_clock;
pub mod elf;
pub mod fds;
pub(crate) mod maps;
pub mod memory;
pub mod namespace;
pub mod native;
pub mod perf_event;
pub mod process;
pub(crate) mod pthread;
pub mod pthread_sync;
pub mod task;
