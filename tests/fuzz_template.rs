//! The chat-template fuzz target's stable replay: every file of `fuzz/corpus/chat_template/`
//! (the runaway templates of issue #10 and the committed fixtures' real templates, made by
//! `seeds()` below) and a bounded number of seeded mutations of each go through
//! `nemo::fuzzing::chat_template` with this build's `nemo` registered as the template
//! helper, as in the real binary: compile check and render in a helper process under the
//! step budget, the memory cap and the time limit. Each must give Ok or a one-line error,
//! within a generous time, and this process must stay small (the work happens in the
//! helper).
//!
//! `committed_seeds_are_what_this_file_makes` keeps `fuzz/corpus/chat_template/` equal to
//! `seeds()` (regenerate with `cargo test --test fuzz_template -- --ignored write_seeds`);
//! other files there (what `cargo fuzz run` adds) are replayed as they are.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{fixture, nemo_bin, root};

fn corpus() -> PathBuf {
    root().join("fuzz/corpus/chat_template")
}

/// Seeds: (file name, bytes).
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut s: Vec<(String, Vec<u8>)> = vec![
        (
            "nested-loops-1e10".into(),
            b"{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}"
                .to_vec(),
        ),
        (
            "repeat-100mb".into(),
            b"{{ 'x' * 100000000 }}{{ messages[0].content }}".to_vec(),
        ),
        (
            "doubling".into(),
            b"{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
                .to_vec(),
        ),
        (
            "folded-constants".into(),
            format!("{{{{ {} }}}}", ["('y' * 50000000)"; 8].join(" ~ ")).into_bytes(),
        ),
        (
            "recursive-macro".into(),
            b"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}".to_vec(),
        ),
        (
            "raise".into(),
            b"{{ raise_exception('no system messages\nplease') }}".to_vec(),
        ),
        (
            "syntax-error".into(),
            b"{% for m in messages %}{{ m.content }".to_vec(),
        ),
        (
            "custom-messages".into(),
            [
                &b"{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"[..],
                b"\0",
                br#"[{"role":"user","content":"hi"},{"role":"tool","content":"42","tool_call_id":"c1","name":"f"}]"#,
            ]
            .concat(),
        ),
    ];
    // The real templates of the committed fixtures.
    for (name, file) in [
        ("nemotron-h", "nemotron_h_f16/chat_template.jinja"),
        ("nemotron3", "nemotron3_tiny/chat_template.jinja"),
        ("llama", "llama_tied/chat_template.jinja"),
    ] {
        s.push((name.into(), std::fs::read(fixture(file)).unwrap()));
    }
    s
}

/// xorshift64*: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Template-shaped mutations: byte flips, cuts, and template tokens or digits spliced in
/// (a loop bound grows, a block is left open, a filter is added).
fn mutate(b: &[u8], rng: &mut Rng) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"{%",
        b"%}",
        b"{{",
        b"}}",
        b"{% endfor %}",
        b"{% for x in range(99999) %}",
        b"9999",
        b" ~ ",
        b" * ",
        b"|tojson",
        b"|join",
        b"(",
        b")",
        b"'",
        b"\"",
        b"\0",
    ];
    let mut m = b.to_vec();
    if m.is_empty() {
        return TOKENS[rng.below(TOKENS.len())].to_vec();
    }
    match rng.below(3) {
        0 => {
            let at = rng.below(m.len());
            m[at] ^= 1 << rng.below(8);
        }
        1 => m.truncate(rng.below(m.len())),
        _ => {
            let at = rng.below(m.len() + 1);
            let t = TOKENS[rng.below(TOKENS.len())];
            m.splice(at..at, t.iter().copied());
        }
    }
    m
}

fn replay_one(name: &str, data: &[u8]) {
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(|| nemo::fuzzing::chat_template(data));
    let took = t0.elapsed();
    match r {
        Err(_) => panic!("{name}: panicked"),
        Ok(Err(e)) => assert!(
            !e.trim().is_empty() && !e.contains('\n'),
            "{name}: not one line: {e:?}"
        ),
        Ok(Ok(())) => {}
    }
    // The step budget stops a spinning template in about a second; the helper's time
    // limit (10 s) bounds the rest. A generous bound for a loaded 2-core machine.
    assert!(took < Duration::from_secs(30), "{name}: took {took:?}");
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(target_os = "linux")]
#[test]
fn the_corpus_and_mutations_render_or_fail_in_one_line_within_bounds() {
    nemo::chat::template_sandbox::set_helper_exe(nemo_bin());
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(corpus()).unwrap() {
        let p = e.unwrap().path();
        inputs.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&p).unwrap(),
        ));
    }
    inputs.sort();
    assert!(inputs.len() >= seeds().len(), "the corpus is missing seeds");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut mutated = Vec::new();
    // Each input starts a helper (~30 ms in a debug build): a few per seed keeps this
    // a few seconds.
    for (name, data) in &inputs {
        for k in 0..8 {
            mutated.push((format!("{name}~{k}"), mutate(data, &mut rng)));
        }
    }
    for (name, data) in inputs.iter().chain(&mutated) {
        replay_one(name, data);
    }
    // The doubling and repetition seeds would take gigabytes in this process; in the
    // helper they cannot touch it.
    let peak = resident_kib();
    assert!(peak < 1 << 20, "this process peaked at {peak} KiB");
}

#[test]
fn committed_seeds_are_what_this_file_makes() {
    for (name, bytes) in seeds() {
        let p = corpus().join(&name);
        assert!(
            std::fs::read(&p).unwrap_or_default() == bytes,
            "{} differs from what tests/fuzz_template.rs makes; run \
             `cargo test --test fuzz_template -- --ignored write_seeds`",
            p.display()
        );
    }
}

/// Writes `seeds()` into `fuzz/corpus/chat_template/` (by hand, when the seeds change).
#[test]
#[ignore]
fn write_seeds() {
    std::fs::create_dir_all(corpus()).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(corpus().join(name), bytes).unwrap();
    }
}
