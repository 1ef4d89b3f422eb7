//! `nemo::fuzzing::safetensors_index`: see src/fuzzing.rs for what it covers and the contract it keeps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nemo::fuzzing::check(nemo::fuzzing::safetensors_index, data);
});
