//! One configuration path: `nemo run` (and `chat`, `bench`, `debug`) reads its settings as
//! built-in defaults < config.toml < `NEMO_*` < flags (README, `nemo::config`), an explicit
//! flag always wins, a bad `NEMO_*` value is a usage error naming the variable, and `run`
//! never takes `approval = "auto"` from config.toml or the environment.
//!
//! Each run's text is compared with what the engine itself generates with the settings it
//! should have used (`common::engine_text`), at a seed for which the cache dtypes involved
//! give different texts, so a setting that was not applied shows.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{engine_text, fixture, nemo_command};

/// A config.toml in a temp dir of its own.
struct Settings {
    dir: tempfile::TempDir,
}

impl Settings {
    fn new(toml: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        Settings { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// `nemo run ARGS hi` on the CPU with this config.toml and `env` set.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = nemo_command();
        cmd.env("NEMO_CONFIG", self.file())
            .env("NEMO_DEVICE", "cpu")
            .arg("run")
            .args(args)
            .arg("hi")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The reasoning and answer of a `--json` run, as `engine_text` writes them.
fn generated(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let mut got = String::new();
    for line in text(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        match e["event"].as_str() {
            Some("reasoning") => got.push_str(&format!("R{}", e["text"].as_str().unwrap())),
            Some("content") => got.push_str(&format!("C{}", e["text"].as_str().unwrap())),
            _ => {}
        }
    }
    got
}

/// The bf16 fixture and a seed at which the engine's texts with the KV caches `auto`
/// (bf16), `f32` and `fp8_e5m2` all differ.
fn model_and_seed() -> (PathBuf, u64) {
    let dir = fixture("nemotron_h_bf16");
    let seed = (1..=20)
        .find(|&seed| {
            let t = |kv: &str| engine_text(&dir, kv, "f32", seed);
            let (auto, f32, fp8) = (t("auto"), t("f32"), t("fp8_e5m2"));
            auto != f32 && auto != fp8 && f32 != fp8
        })
        .expect("no seed in 1..=20 where the three KV caches give three texts");
    (dir, seed)
}

/// config.toml naming the cache, sampling and length settings `engine_text` uses.
fn config_for(dir: &Path, seed: u64, kv: &str) -> Settings {
    Settings::new(&format!(
        "model = {model:?}\nkv_cache_dtype = \"{kv}\"\ntemperature = 1.0\nseed = {seed}\nmax_tokens = 32\n",
        model = dir.display().to_string()
    ))
}

#[test]
fn run_reads_its_settings_from_config_toml() {
    let (dir, seed) = model_and_seed();
    let cfg = config_for(&dir, seed, "fp8_e5m2");
    assert_eq!(
        generated(&cfg.run(&["--json"], &[])),
        engine_text(&dir, "fp8_e5m2", "f32", seed),
        "model, kv_cache_dtype, temperature, seed and max_tokens from config.toml"
    );
}

#[test]
fn an_explicit_flag_wins_over_config_toml_even_at_its_default_value() {
    let (dir, seed) = model_and_seed();
    let cfg = config_for(&dir, seed, "fp8_e5m2");
    // `auto` is the flag's default: a layering that compares with the default string
    // could not tell it from an absent flag, and the file's fp8_e5m2 won.
    assert_eq!(
        generated(&cfg.run(&["--json", "--kv-cache-dtype", "auto"], &[])),
        engine_text(&dir, "auto", "f32", seed)
    );
    assert_eq!(
        generated(&cfg.run(&["--json", "--kv-cache-dtype", "f32"], &[])),
        engine_text(&dir, "f32", "f32", seed)
    );
}

#[test]
fn the_environment_lies_between_config_toml_and_the_flags() {
    let (dir, seed) = model_and_seed();
    let cfg = config_for(&dir, seed, "fp8_e5m2");
    let env = [("NEMO_KV_CACHE_DTYPE", "f32")];
    assert_eq!(
        generated(&cfg.run(&["--json"], &env)),
        engine_text(&dir, "f32", "f32", seed),
        "NEMO_KV_CACHE_DTYPE over config.toml"
    );
    assert_eq!(
        generated(&cfg.run(&["--json", "--kv-cache-dtype", "auto"], &env)),
        engine_text(&dir, "auto", "f32", seed),
        "--kv-cache-dtype over NEMO_KV_CACHE_DTYPE"
    );
    // An empty variable counts as unset.
    assert_eq!(
        generated(&cfg.run(&["--json"], &[("NEMO_KV_CACHE_DTYPE", "")])),
        engine_text(&dir, "fp8_e5m2", "f32", seed)
    );
}

#[test]
fn a_bad_environment_value_is_a_usage_error_naming_the_variable() {
    let cfg = Settings::new("");
    let tiny = fixture("nemotron_h_tiny").display().to_string();
    for (var, value) in [
        ("NEMO_TEMPERATURE", "hot"),
        ("NEMO_KV_CACHE_DTYPE", "int3"),
        ("NEMO_MAX_TOKENS", "-1"),
    ] {
        let out = cfg.run(&["--model", &tiny], &[(var, value)]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(var) && err.contains(value), "{err}");
    }
}

#[test]
fn run_never_takes_approval_auto_from_config_toml_or_the_environment() {
    let cfg = Settings::new("approval = \"auto\"\n");
    let tiny = fixture("nemotron_h_tiny").display().to_string();
    let ws = tempfile::tempdir().unwrap();
    let ws = ws.path().display().to_string();
    let args = [
        "--model",
        &tiny,
        "--workspace",
        &ws,
        "--tools",
        "write_file",
    ];
    // write_file cannot run in run's default read-only mode: refused before the model loads.
    for env in [&[][..], &[("NEMO_APPROVAL", "auto")][..]] {
        let out = cfg.run(&args, env);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(
            err.contains("write_file") && err.contains("only with --approval auto"),
            "{err}"
        );
    }
}
