//! The session loader under hostile input, as a stable test: replays the committed corpus
//! `fuzz/corpus/session/` (written by `scripts/make_session_corpus.py`) and a bounded
//! number of seeded mutations of it through `parse_session_bytes`, which is what
//! `SessionStore::load` runs on a file's bytes and what the cargo-fuzz target
//! `fuzz/fuzz_targets/session.rs` calls.
//!
//! Every input must give a session or a one-line error, never a panic. `ok-*.json` files
//! must load, every other corpus file must be refused, and whatever loads must save and
//! load back unchanged with its sampling values in range. A failure prints the input's
//! origin (file, mutation seed) and its first bytes, so it can be added to the corpus.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use nemo::chat::session_store::{parse_session_bytes, SessionFile};
use serde_json::Value;

/// Mutations per corpus file; the whole test stays within a few seconds in debug.
const MUTATIONS_PER_FILE: usize = 300;
/// Longest error message accepted (serde's own messages are short; echoed text is cut).
const MAX_ERROR_CHARS: usize = 600;

/// xorshift64*: a small seeded generator, so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Text that has broken JSON loaders: limits of number parsing, escapes, nesting.
const TOKENS: &[&str] = &[
    "1e999",
    "-1e999",
    "1e-999",
    "-1",
    "-0",
    "0.0000000000000000000000000000001",
    "18446744073709551616",
    "4294967296",
    "9007199254740993",
    "NaN",
    "Infinity",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\uZZZZ\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":{\"a\":{\"a\":{\"a\":",
    "\"\n\"",
    "\u{feff}",
    "\u{202e}",
];

/// Leaf values for structure-aware mutation of the files that load.
fn hostile_values() -> Vec<Value> {
    let mut v: Vec<Value> = [
        "null",
        "true",
        "-1",
        "0",
        "1",
        "2",
        "5.000001",
        "-5",
        "1e30",
        "1e38",
        "3.5e38",
        "1e300",
        "18446744073709551615",
        "-9223372036854775808",
        "0.1",
        "[]",
        "{}",
        "\"\"",
        "\"off\"",
        "\"unlimited\"",
        "\"lots\\nof\\nlines\"",
        "\"../../etc/passwd\"",
        "[1, [2, [3]]]",
        "{\"version\": 2}",
    ]
    .iter()
    .map(|t| serde_json::from_str(t).unwrap())
    .collect();
    v.push(Value::String("x".repeat(5000)));
    v
}

fn check(origin: &str, bytes: &[u8]) -> Result<bool, String> {
    let show = || {
        let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into();
        format!("{origin} ({} bytes): {head:?}", bytes.len())
    };
    let r = catch_unwind(AssertUnwindSafe(|| parse_session_bytes(bytes)))
        .map_err(|_| format!("panicked on {}", show()))?;
    match r {
        Ok(s) => {
            if let Err(e) = s.sampling.validate() {
                return Err(format!("accepted out-of-range sampling ({e}): {}", show()));
            }
            round_trip(&s).map_err(|e| format!("{e}: {}", show()))?;
            Ok(true)
        }
        Err(e) => {
            let text = e.to_string();
            if text.contains(['\n', '\r']) || text.chars().count() > MAX_ERROR_CHARS {
                let head: String = text.chars().take(200).collect();
                return Err(format!(
                    "error is not one short line ({} chars): {head:?}…: {}",
                    text.chars().count(),
                    show()
                ));
            }
            Ok(false)
        }
    }
}

/// What loads can be saved and loaded back unchanged.
fn round_trip(s: &SessionFile) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(s).map_err(|e| format!("does not serialize: {e}"))?;
    match parse_session_bytes(&bytes) {
        Ok(back) if &back == s => Ok(()),
        Ok(_) => Err("loads back different".into()),
        Err(e) => Err(format!("its own save does not load: {e}")),
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let at = rng.below(b.len() + 1);
        match rng.below(8) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = *rng.pick(b"\x00\xff\"{}[]\\\n-9e.,:");
            }
            2 => {
                let end = (at + 1 + rng.below(32)).min(b.len());
                b.drain(at.min(end)..end);
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let copy = b[at.min(end)..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, copy);
            }
            4 => b.truncate(at),
            5 | 6 => {
                let t = rng.pick(TOKENS).as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            _ => {
                // Splice: this file's head, another's tail.
                let from = rng.below(other.len() + 1);
                b.truncate(at);
                b.extend_from_slice(&other[from..]);
            }
        }
    }
    b
}

/// Replaces one value anywhere in the tree (object members and array items alike): half
/// the time with a value of the same kind (a number for a number), which keeps more
/// documents loadable and reaches the checks behind the parser.
fn replace_random_leaf(rng: &mut Rng, v: &mut Value, values: &[Value]) {
    let descend = rng.below(4) != 0;
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let i = rng.below(m.len());
            if let Some(child) = m.values_mut().nth(i) {
                replace_random_leaf(rng, child, values);
            }
        }
        Value::Array(a) if descend && !a.is_empty() => {
            let i = rng.below(a.len());
            replace_random_leaf(rng, &mut a[i], values);
        }
        _ => {
            let kind = std::mem::discriminant(v);
            let same: Vec<&Value> = values
                .iter()
                .filter(|x| std::mem::discriminant(*x) == kind)
                .collect();
            *v = if !same.is_empty() && rng.below(2) == 0 {
                (*rng.pick(&same)).clone()
            } else {
                rng.pick(values).clone()
            };
        }
    }
}

#[test]
fn session_loader_survives_the_corpus_and_seeded_mutations() {
    let dir = common::root().join("fuzz/corpus/session");
    let mut corpus: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    corpus.sort();
    assert!(corpus.len() >= 40, "corpus has {} files", corpus.len());

    let mut failures = Vec::new();
    // The corpus itself: each file's verdict is known from its name.
    for (name, bytes) in &corpus {
        match check(name, bytes) {
            Ok(loaded) if loaded == name.starts_with("ok-") => {}
            Ok(loaded) => failures.push(format!(
                "{name}: {} but the corpus says it must {}",
                if loaded { "loaded" } else { "was refused" },
                if loaded { "be refused" } else { "load" }
            )),
            Err(e) => failures.push(e),
        }
    }
    // Byte-level mutations, seeded per file.
    let mut tried = 0;
    let mut loaded = 0;
    for (i, (name, bytes)) in corpus.iter().enumerate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491));
        for m in 0..MUTATIONS_PER_FILE {
            let other = &corpus[rng.below(corpus.len())].1;
            let input = mutate(&mut rng, bytes, other);
            match check(&format!("{name} mutation {m}"), &input) {
                Ok(l) => loaded += usize::from(l),
                Err(e) => failures.push(e),
            }
            tried += 1;
        }
    }
    // Structure-aware: one hostile value somewhere in a session that loads.
    let values = hostile_values();
    let (tried_bytes, loaded_bytes) = (tried, loaded);
    let mut rng = Rng(0x5eed);
    for (name, bytes) in corpus.iter().filter(|(n, _)| n.starts_with("ok-")) {
        let tree: Value = serde_json::from_slice(bytes).unwrap();
        for m in 0..MUTATIONS_PER_FILE {
            let mut t = tree.clone();
            replace_random_leaf(&mut rng, &mut t, &values);
            let input = serde_json::to_vec(&t).unwrap();
            match check(&format!("{name} value mutation {m}"), &input) {
                Ok(l) => loaded += usize::from(l),
                Err(e) => failures.push(e),
            }
            tried += 1;
        }
    }
    let (tried_values, loaded_values) = (tried - tried_bytes, loaded - loaded_bytes);
    eprintln!(
        "byte mutations: {loaded_bytes} of {tried_bytes} loaded; value mutations: {loaded_values} of {tried_values} loaded"
    );
    // Mutators that broke every input (or none) would test little past the parser.
    assert!(
        loaded_bytes > 0 && loaded_bytes < tried_bytes,
        "byte mutations"
    );
    assert!(
        loaded_values > tried_values / 10 && loaded_values < tried_values,
        "value mutations"
    );
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed; the first ones:\n{}",
        failures.len(),
        corpus.len() + tried,
        failures[..failures.len().min(20)].join("\n")
    );
}
