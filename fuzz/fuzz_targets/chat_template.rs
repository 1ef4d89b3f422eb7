//! cargo-fuzz target for chat templates: `NEMO_FUZZ_HELPER=target/release/nemo cargo fuzz
//! run chat_template corpus/chat_template`. The bytes are a template (and optional
//! messages) compiled and rendered the way a downloaded model's template is, in the
//! helper process named by `$NEMO_FUZZ_HELPER` (a `nemo` binary) so the render's memory
//! cap and time limit hold; without it renders run in-process with the step budget only.
//! `tests/fuzz_template.rs` replays the corpus on every `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(exe) = std::env::var_os("NEMO_FUZZ_HELPER") {
        nemo::chat::template_sandbox::set_helper_exe(exe);
    }
    nemo::fuzzing::check(nemo::fuzzing::chat_template, data);
});
