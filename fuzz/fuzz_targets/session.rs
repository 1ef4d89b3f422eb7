//! cargo-fuzz target for the session loader: `cargo fuzz run session fuzz/corpus/session`.
//! The bytes of a session file go through what `SessionStore::load` runs on them; any
//! input must give a session or a one-line error, and a session must load back unchanged
//! from its own save. `tests/fuzz_session.rs` replays the corpus on every `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nemo::chat::session_store::parse_session_bytes;

fuzz_target!(|data: &[u8]| {
    match parse_session_bytes(data) {
        Ok(s) => {
            assert!(s.sampling.validate().is_ok());
            let bytes = serde_json::to_vec_pretty(&s).expect("a loaded session serializes");
            let back = parse_session_bytes(&bytes).expect("its own save loads");
            assert_eq!(back, s);
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains(['\n', '\r']), "{text:?}");
        }
    }
});
