//! Fuzz target: the ELF reader (symbols, sections, file offsets, version helpers) over any
//! bytes (src/fuzzing.rs); it drives the library and must not check anything itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gilscope::dev::fuzzing::read_elf_bytes(data);
});
