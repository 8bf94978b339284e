//! gilscope: attach to a running CPython process and measure, thread by thread, who holds the
//! GIL, who waits for it, and who runs without it. docs/ARCHITECTURE.md draws the layers.
//!
//! Data flows one way, each layer importing only from those before it:
//! `stack` -> `target` -> `python` -> `sample` -> `model` -> `recorder` -> `formats`, `output`,
//! `exporter` -> `commands`. `error` and `cli` serve every layer that needs them.

pub mod cli;
pub mod commands;
pub mod error;
pub(crate) mod exporter;
pub mod formats;
pub mod model;
pub mod output;
pub mod python;
pub mod recorder;
pub mod sample;
pub mod stack;
pub mod target;

#[cfg(feature = "dev")]
pub mod dev;
