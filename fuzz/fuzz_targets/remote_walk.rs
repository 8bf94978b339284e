//! Fuzz target: the interpreter, thread, GIL, stack and thread-name walks over a snapshot of
//! target memory (src/fuzzing.rs); it drives the library and must not check anything itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gilscope::dev::fuzzing::walk_snapshot(data);
});
