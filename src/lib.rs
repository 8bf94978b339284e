//! gilscope: attach to a running CPython process and measure, thread by thread, who holds the
//! GIL, who waits for it, and who runs without it. Data flows target -> python -> sample -> report.

pub mod cli;
pub mod dump;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod output;
pub mod python;
pub mod record;
pub mod reference;
pub mod report;
pub mod sample;
pub mod serve;
pub mod target;
pub mod top;
