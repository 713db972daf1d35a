//! cargo-fuzz target: see docs/security.md. The body is shared with the
//! property tests of tests/hostile_input.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dnd_cache::hostile::config_file(data));
