//! The real binary: `nemo run` output contract, `nemo debug logits` against the
//! reference, and bad input — each a one-line error naming the file, field or flag, a
//! non-zero exit, never a panic.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn nemo(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = common::nemo_command();
    // On a machine with an NVIDIA driver, `--device auto` adds a notice line to stderr.
    cmd.env("NEMO_DEVICE", "cpu");
    cmd.args(args)
        .env_remove("NEMO_MODEL")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        let mut s = child.stdin.take().unwrap();
        s.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn tiny() -> String {
    fixture("nemotron_h_tiny").display().to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the failure contract; returns the message.
fn fails_with_one_line(out: &Output, code: i32, must_contain: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for m in must_contain {
        assert!(err.contains(m), "`{m}` missing from: {err}");
    }
    assert!(
        out.stdout.is_empty(),
        "stdout must stay empty: {}",
        text(&out.stdout)
    );
    err
}

/// A copy of a fixture folder that a test may break.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

fn run_on(dir: &Path, extra: &[&str]) -> Output {
    let d = dir.display().to_string();
    let mut args = vec!["run", "--model", d.as_str(), "--max-tokens", "4"];
    args.extend_from_slice(extra);
    args.push("hello");
    nemo(&args, None)
}

#[test]
fn run_prints_only_the_answer_on_stdout() {
    let out = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--budget",
            "4",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "Hi",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Budget 4 of 12 tokens: the answer is at least 12 − 4 − the forced `</think>` tokens.
    assert!(
        !text(&out.stdout).trim().is_empty(),
        "no answer on stdout: {}",
        text(&out.stderr)
    );
    let with_thinking = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--budget",
            "4",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--show-thinking",
            "Hi",
        ],
        None,
    );
    assert_eq!(
        text(&out.stdout),
        text(&with_thinking.stdout),
        "--show-thinking changed stdout"
    );
    assert!(
        out.stderr.is_empty(),
        "stderr without --show-thinking: {}",
        text(&out.stderr)
    );
    assert!(
        !with_thinking.stderr.is_empty(),
        "reasoning was not shown on stderr"
    );
    assert!(!text(&out.stdout).contains("think>"));
}

#[test]
fn run_reads_the_prompt_from_stdin() {
    let a = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--no-think",
            "Why is the sky blue?",
        ],
        None,
    );
    let b = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--no-think",
        ],
        Some("Why is the sky blue?\n"),
    );
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    assert_eq!(b.status.code(), Some(0), "{}", text(&b.stderr));
    // Two empty answers would be equal too (8 tokens of reasoning would leave none for the
    // answer, hence --no-think): the greedy run answers something.
    assert!(!text(&a.stdout).trim().is_empty(), "no answer on stdout");
    assert_eq!(text(&a.stdout), text(&b.stdout));
}

/// `--budget off`, `--budget 0` and `--no-think` are one thing: no reasoning at all (the
/// fixture's template opens `<think>` when thinking is on); `unlimited` and a count think.
#[test]
fn run_budget_takes_off_unlimited_and_counts() {
    let reasoning_tokens = |flags: &[&str]| -> u64 {
        let model = tiny();
        let mut args = vec!["run", "--model", &model, "--json", "--max-tokens", "6"];
        args.extend_from_slice(flags);
        args.push("Hi");
        let out = nemo(&args, None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flags:?}: {}",
            text(&out.stderr)
        );
        let done: serde_json::Value =
            serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(done["event"], "done");
        done["usage"]["reasoning_tokens"].as_u64().unwrap()
    };
    assert_eq!(reasoning_tokens(&["--budget", "off"]), 0);
    assert_eq!(reasoning_tokens(&["--budget", "0"]), 0);
    assert_eq!(reasoning_tokens(&["--no-think"]), 0);
    assert!(reasoning_tokens(&["--budget", "unlimited"]) > 0);
    assert!(reasoning_tokens(&["--budget", "3"]) > 0);
}

#[test]
fn run_json_prints_one_event_per_line_ending_with_done() {
    let out = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--json",
            "--budget",
            "3",
            "--max-tokens",
            "10",
            "--temperature",
            "0",
            "Hi",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["event"] == "reasoning"));
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["finish_reason"], "length");
    for key in ["prompt_tokens", "reasoning_tokens", "completion_tokens"] {
        assert!(done["usage"][key].is_u64(), "usage.{key}");
    }
    for key in ["load_ms", "ttft_ms", "decode_tokens_per_s"] {
        assert!(done["timings"][key].is_number(), "timings.{key}");
    }
    assert!(done["reused_tokens"].is_u64());
    assert_eq!(done["usage"]["completion_tokens"], 10);
}

#[test]
fn debug_logits_matches_the_reference() {
    let reference = Reference::load("nemotron_h_tiny");
    let p = reference.prompt("short");
    let ids: Vec<String> = p.ids.iter().map(|i| i.to_string()).collect();
    let out = nemo(
        &[
            "debug",
            "logits",
            "--model",
            &tiny(),
            "--tokens",
            &ids.join(","),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), p.ids.len());
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let last: Vec<f32> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert!(max_abs_diff(&last, p.logits.last().unwrap()) < 2e-4);

    let all = nemo(
        &[
            "debug",
            "logits",
            "--model",
            &tiny(),
            "--tokens",
            &ids.join(","),
            "--all",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(v["logits"].as_array().unwrap().len(), p.ids.len());
}

#[test]
fn missing_model_folder_is_named() {
    let out = nemo(&["run", "--model", "/nonexistent/model", "hi"], None);
    fails_with_one_line(&out, 1, &["/nonexistent/model"]);
}

#[test]
fn missing_safetensors_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    fails_with_one_line(&run_on(&dir, &[]), 1, &["safetensors"]);
}

#[test]
fn missing_shard_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_bf16");
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    fails_with_one_line(&run_on(&dir, &[]), 1, &["model-00002-of-00003.safetensors"]);
}

#[test]
fn truncated_safetensors_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    let f = dir.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fails_with_one_line(&run_on(&dir, &[]), 1, &["model.safetensors", "truncated"]);
}

#[test]
fn tensor_of_the_wrong_shape_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    fails_with_one_line(
        &run_on(&dir, &[]),
        1,
        &["up_proj.weight", "[96, 64]", "model.safetensors"],
    );
}

#[test]
fn unknown_architecture_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("NemotronHForCausalLM", "MistralForCausalLM")
        .replace("\"nemotron_h\"", "\"mistral\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    fails_with_one_line(
        &run_on(&dir, &[]),
        1,
        &["MistralForCausalLM", "config.json"],
    );
}

#[test]
fn config_missing_a_field_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json"))
            .unwrap()
            .replace("Infinity", "null"),
    )
    .unwrap();
    v.as_object_mut().unwrap().remove("ssm_state_size");
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    fails_with_one_line(&run_on(&dir, &[]), 1, &["ssm_state_size", "config.json"]);
}

#[test]
fn broken_tokenizer_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    std::fs::write(
        dir.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": 42}",
    )
    .unwrap();
    fails_with_one_line(&run_on(&dir, &[]), 1, &["tokenizer.json"]);
}

#[test]
fn broken_template_is_named() {
    let (_t, dir) = copy_fixture("nemotron_h_f16");
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}{{ m.content }",
    )
    .unwrap();
    fails_with_one_line(&run_on(&dir, &[]), 1, &["chat_template.jinja"]);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let out = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--context",
            "8",
            "a prompt that is clearly longer than eight tokens",
        ],
        None,
    );
    fails_with_one_line(&out, 1, &["context of 8 tokens"]);
}

#[test]
fn bad_flags_are_usage_errors_with_exit_2() {
    fails_with_one_line(
        &nemo(
            &["run", "--model", &tiny(), "--kv-cache-dtype", "int3", "hi"],
            None,
        ),
        2,
        &["--kv-cache-dtype", "int3"],
    );
    fails_with_one_line(
        &nemo(
            &[
                "run",
                "--model",
                &tiny(),
                "--mamba-ssm-cache-dtype",
                "fp8",
                "hi",
            ],
            None,
        ),
        2,
        &["--mamba-ssm-cache-dtype"],
    );
    fails_with_one_line(
        &nemo(&["run", "--model", &tiny(), "--top-p", "1.5", "hi"], None),
        2,
        &["--top-p: 1.5 is outside 0..=1"],
    );
    // One range per sampling value (`SamplingParams::validate`), the same as `/set`.
    fails_with_one_line(
        &nemo(&["run", "--model", &tiny(), "--temperature=-5", "hi"], None),
        2,
        &["--temperature: -5 is outside 0..=5"],
    );
    // One budget dialect: off | unlimited | N (up to 1000000).
    fails_with_one_line(
        &nemo(&["run", "--model", &tiny(), "--budget", "lots", "hi"], None),
        2,
        &["--budget", "lots", "off", "unlimited"],
    );
    fails_with_one_line(
        &nemo(
            &[
                "run",
                "--model",
                &tiny(),
                "--no-think",
                "--budget",
                "8",
                "hi",
            ],
            None,
        ),
        2,
        &["--no-think", "--budget"],
    );
    fails_with_one_line(
        &nemo(&["run", "--model", &tiny(), "--frobnicate", "hi"], None),
        2,
        &["--frobnicate"],
    );
    fails_with_one_line(
        &nemo(&["run", "--model", &tiny()], Some("")),
        2,
        &["prompt is empty"],
    );
    fails_with_one_line(&nemo(&["run", "hi"], None), 2, &["--model"]);
    fails_with_one_line(
        &nemo(
            &["debug", "logits", "--model", &tiny(), "--tokens", "1,x"],
            None,
        ),
        2,
        &["--tokens", "`x`"],
    );
    let out = nemo(
        &["debug", "logits", "--model", &tiny(), "--tokens", "1,99999"],
        None,
    );
    fails_with_one_line(&out, 1, &["99999"]);
    let out = nemo(&["run", "--bogus"], None);
    assert_eq!(out.status.code(), Some(2));
}

// ---- Cache dtype flags: each one must change the cache the engine really uses. ----

const KV_DTYPES: [&str; 6] = ["auto", "f32", "bf16", "f16", "fp8_e4m3", "fp8_e5m2"];
const SSM_DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

/// Bytes per element of a cache dtype as the flag names it, on a bf16 model (`auto` is the
/// weights' dtype, README "Caches").
fn cache_elem_bytes(dtype: &str) -> usize {
    match dtype {
        "f32" => 4,
        "auto" | "bf16" | "f16" => 2,
        "fp8_e4m3" | "fp8_e5m2" => 1,
        other => panic!("{other}"),
    }
}

/// `nemo bench --json` reports the sequence state's bytes after its run (`cache_bytes`):
/// with every pair of flags it is what `nemotron_h_bf16`'s config and the two dtypes give —
/// per Mamba layer an f32 conv window and a heads × head_dim × d_state SSM state in the
/// SSM dtype; per attention layer V for every position and K in whole blocks of 16
/// positions (its transposed layout) in the KV dtype (FP8 adds an f32 scale per position
/// and KV head for each). A flag that was parsed and ignored leaves the f32 default's size.
#[test]
fn every_cache_dtype_flag_sets_the_size_of_the_cache_the_engine_allocates() {
    let dir = fixture("nemotron_h_bf16");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let kinds: Vec<&str> = c["layers_block_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mamba = kinds.iter().filter(|k| **k == "linear_attention").count();
    let attention = kinds.iter().filter(|k| **k == "full_attention").count();
    assert!(mamba > 0 && attention > 0, "{kinds:?}");
    let d_inner = u("mamba_num_heads") * u("mamba_head_dim");
    let conv_dim = d_inner + 2 * u("n_groups") * u("ssm_state_size");
    let ssm_elems = d_inner * u("ssm_state_size");
    let kv_heads = u("num_key_value_heads");
    let (prompt, gen) = (16, 8);
    let positions = prompt + gen;
    let d = dir.display().to_string();
    for kv in KV_DTYPES {
        for ssm in SSM_DTYPES {
            let out = nemo(
                &[
                    "bench",
                    "--model",
                    &d,
                    "--json",
                    "--runs",
                    "1",
                    "--prompt-tokens",
                    &prompt.to_string(),
                    "--gen-tokens",
                    &gen.to_string(),
                    "--kv-cache-dtype",
                    kv,
                    "--mamba-ssm-cache-dtype",
                    ssm,
                ],
                None,
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{kv}/{ssm}: {}",
                text(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let fp8_scales = if kv.starts_with("fp8") {
                2 * positions * kv_heads * 4
            } else {
                0
            };
            let want = mamba
                * (conv_dim * (u("conv_kernel") - 1) * 4 + ssm_elems * cache_elem_bytes(ssm))
                + attention
                    * ((positions + positions.next_multiple_of(16))
                        * kv_heads
                        * u("head_dim")
                        * cache_elem_bytes(kv)
                        + fp8_scales);
            assert_eq!(
                v["cache_bytes"], want,
                "--kv-cache-dtype {kv} --mamba-ssm-cache-dtype {ssm}"
            );
        }
    }
}

/// `nemo run` with each pair of cache flags writes exactly what the engine generates with
/// those caches, with a seed for which the engine's texts with bf16 (`auto`) and FP8 KV
/// caches and a bf16 SSM state differ from the f32 caches' text, so a flag that `run`
/// ignored shows.
#[test]
fn run_generates_with_the_caches_its_flags_name() {
    let dir = fixture("nemotron_h_bf16");
    let d = dir.display().to_string();
    let telling = [
        ("auto", "f32"),
        ("fp8_e4m3", "f32"),
        ("fp8_e5m2", "f32"),
        ("f32", "bf16"),
    ];
    let seed = (1..=10)
        .find(|&seed| {
            let f32_text = engine_text(&dir, "f32", "f32", seed);
            telling
                .iter()
                .all(|(kv, ssm)| engine_text(&dir, kv, ssm, seed) != f32_text)
        })
        .expect("no seed in 1..=10 where every telling pair changes the engine's text");
    let seed_arg = seed.to_string();
    for kv in KV_DTYPES {
        for ssm in SSM_DTYPES {
            let out = nemo(
                &[
                    "run",
                    "--model",
                    &d,
                    "--json",
                    "--temperature",
                    "1",
                    "--seed",
                    &seed_arg,
                    "--max-tokens",
                    "32",
                    "--kv-cache-dtype",
                    kv,
                    "--mamba-ssm-cache-dtype",
                    ssm,
                    "hi",
                ],
                None,
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{kv}/{ssm}: {}",
                text(&out.stderr)
            );
            let mut got = String::new();
            for line in text(&out.stdout).lines() {
                let e: serde_json::Value = serde_json::from_str(line).unwrap();
                match e["event"].as_str() {
                    Some("reasoning") => got.push_str(&format!("R{}", e["text"].as_str().unwrap())),
                    Some("content") => got.push_str(&format!("C{}", e["text"].as_str().unwrap())),
                    _ => {}
                }
            }
            assert!(!got.is_empty(), "{kv}/{ssm}: nothing generated");
            assert_eq!(
                got,
                engine_text(&dir, kv, ssm, seed),
                "--kv-cache-dtype {kv} --mamba-ssm-cache-dtype {ssm} --seed {seed}"
            );
        }
    }
}

/// `nemo debug logits --kv-cache-dtype X`: a prompt's attention reads its keys and values
/// back from the cache, so the logits are the engine's with a KV cache in X, bit for bit,
/// and differ between every two formats (`auto` is bf16 for these bf16 weights).
#[test]
fn debug_logits_follow_the_kv_cache_dtype_flag() {
    use nemo::model::Logits;
    let dir = fixture("nemotron_h_bf16");
    let folder = nemo::model::ModelFolder::open(&dir).unwrap();
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 500).collect();
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let mut seen: Vec<(&str, Vec<f32>)> = Vec::new();
    for kv in KV_DTYPES {
        let out = nemo(
            &[
                "debug",
                "logits",
                "--model",
                &dir.display().to_string(),
                "--tokens",
                &list.join(","),
                "--kv-cache-dtype",
                kv,
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "{kv}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got: Vec<f32> = v["logits"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let cache = nemo::state::CacheConfig {
            kv_dtype: kv
                .parse::<nemo::config::KvCacheDtype>()
                .unwrap()
                .resolve(folder.model.weight_dtype()),
            ..Default::default()
        };
        let mut state = folder.model.new_state(cache);
        let want = folder
            .model
            .forward(&ids, &mut state, Logits::Last)
            .unwrap();
        assert_eq!(got, want, "--kv-cache-dtype {kv}");
        for (other, logits) in &seen {
            if (*other, kv) != ("auto", "bf16") {
                assert_ne!(logits, &got, "{other} and {kv} give the same logits");
            }
        }
        seen.push((kv, got));
    }
}

#[test]
fn ctrl_c_stops_generation_cleanly_with_exit_130() {
    use std::io::Read;
    // SIGINT goes out once the first answer event is on stdout (the handler is in place and
    // generation is running). The random tiny model may still reach EOS before the signal
    // lands (a few hundred ms of tokens on a fast machine): such a run exits 0 with a done
    // event whose finish_reason is "stop" (a real EOS), and it is tried again with another
    // seed. Any other run that exits 0 fails at once (a handler that ended generation as if
    // finished, or ignored SIGINT until max-tokens); one that did not exist dies by the
    // signal and fails.
    for seed in 1..=6 {
        let mut child = common::nemo_command()
            .env("NEMO_DEVICE", "cpu")
            .args([
                "run",
                "--model",
                &tiny(),
                "--max-tokens",
                "100000",
                "--no-think",
                "--json",
                "--temperature",
                "1",
                "--seed",
                &seed.to_string(),
                "go on",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if all.is_empty() {
                            let _ = tx.send(());
                        }
                        all.extend_from_slice(&buf[..k]);
                    }
                }
            }
            all
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok(),
            "no answer text within 20 s"
        );
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed().as_secs() < 10,
                "nemo did not stop after SIGINT"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = text(&reader.join().unwrap());
        let mut err = Vec::new();
        child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
        let err = text(&err);
        let done: serde_json::Value = out
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        if status.code() == Some(0) {
            assert_eq!(
                (&done["event"], &done["finish_reason"]),
                (&"done".into(), &"stop".into()),
                "seed {seed}: exit 0 after SIGINT without reaching EOS; stdout ends {done}"
            );
            // A real EOS: the same seed without a signal stops at the same token with the
            // same text (a cancel reported as "stop" would not; a longer limit shows it).
            let n = done["usage"]["completion_tokens"].as_u64().unwrap();
            let again = nemo(
                &[
                    "run",
                    "--model",
                    &tiny(),
                    "--max-tokens",
                    &(n + 8).to_string(),
                    "--no-think",
                    "--json",
                    "--temperature",
                    "1",
                    "--seed",
                    &seed.to_string(),
                    "go on",
                ],
                None,
            );
            let events = |t: &str| -> Vec<serde_json::Value> {
                t.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .filter(|e| e["event"] != "done")
                    .collect()
            };
            let again_text = text(&again.stdout);
            let again_done: serde_json::Value =
                serde_json::from_str(again_text.lines().last().unwrap()).unwrap();
            assert_eq!(
                (&again_done["finish_reason"], &again_done["usage"]),
                (&done["finish_reason"], &done["usage"]),
                "seed {seed}: the run that exited 0 after SIGINT did not end at EOS"
            );
            assert_eq!(events(&again_text), events(&out), "seed {seed}");
            continue;
        }
        assert_eq!(status.code(), Some(130), "stderr: {err}");
        assert!(
            err.contains("interrupted") && !err.contains("panicked"),
            "{err}"
        );
        assert_eq!(
            (&done["event"], &done["finish_reason"]),
            (&"done".into(), &"cancelled".into()),
            "seed {seed}: stdout ends {done}"
        );
        return;
    }
    panic!("six runs ended normally: SIGINT did not stop any of them");
}

#[test]
fn corrupt_config_is_named_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.toml");
    std::fs::write(&cfg, "temprature = 0.5\n").unwrap();
    let out = common::nemo_command()
        .env("NEMO_DEVICE", "cpu")
        .args(["chat", "--model", &tiny()])
        .env("NEMO_CONFIG", &cfg)
        .env("NEMO_DATA_DIR", tmp.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_with_one_line(&out, 1, &["config.toml", "temprature"]);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "temprature = 0.5\n");
}

/// `nemo run` with `stdin` (None: a pipe left open), SIGINT sent `delay` after all of
/// `stdin` was taken; returns the exit code (None: killed by the signal) and stderr.
/// Panics if nemo is still running 20 s after the signal (no hang).
fn run_interrupted(stdin: Option<Vec<u8>>, delay: std::time::Duration) -> (Option<i32>, String) {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let mut child = common::nemo_command()
        .env("NEMO_DEVICE", "cpu")
        .env("NEMO_CONFIG", tmp.path().join("config.toml"))
        .env("NEMO_DATA_DIR", tmp.path().join("data"))
        .env_remove("NEMO_MODEL")
        // A context the 5 MB prompt fits by its byte bound, so the prompt really is
        // rendered and tokenized (seconds) instead of refused at once.
        .args([
            "run",
            "--model",
            &tiny(),
            "--max-tokens",
            "4",
            "--context",
            "2000000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    // Kept open until the end when there is nothing to write.
    let _open = match stdin {
        Some(bytes) => {
            // A broken pipe here means nemo exited early; its exit code tells the story.
            let _ = pipe.write_all(&bytes);
            drop(pipe);
            None
        }
        None => Some(pipe),
    };
    std::thread::sleep(delay);
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed().as_secs() >= 20 {
            let _ = child.kill();
            panic!("nemo run still running 20 s after SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    (status.code(), text(&err))
}

#[test]
fn ctrl_c_while_the_prompt_is_built_exits_130() {
    // 5 MB of prompt: rendering and tokenizing it takes seconds (the bug let that finish
    // and exited 1 seconds later).
    let prompt = "word ".repeat(1_000_000).into_bytes();
    let (code, err) = run_interrupted(Some(prompt), std::time::Duration::from_millis(500));
    assert_eq!(code, Some(130), "stderr: {err}");
    assert_eq!(err.trim_end(), "nemo: interrupted", "{err}");
}

#[test]
fn ctrl_c_while_stdin_is_read_exits_130() {
    let (code, err) = run_interrupted(None, std::time::Duration::from_secs(2));
    assert_eq!(code, Some(130), "stderr: {err}");
    assert_eq!(err.trim_end(), "nemo: interrupted", "{err}");
}

#[test]
fn threads_beyond_the_cores_are_clamped_with_one_note() {
    let out = nemo(
        &[
            "run",
            "--model",
            &tiny(),
            "--max-tokens",
            "4",
            "--threads",
            "5000",
            "hi",
        ],
        None,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains("--threads 5000") && err.contains("using"),
        "no clamp note: {err}"
    );
}

#[test]
fn chat_without_a_terminal_says_so_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::nemo_command()
        .env("NEMO_DEVICE", "cpu")
        .env("NEMO_CONFIG", tmp.path().join("config.toml"))
        .env("NEMO_DATA_DIR", tmp.path().join("data"))
        .env_remove("NEMO_MODEL")
        .args(["chat", "--model", &tiny()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    fails_with_one_line(&out, 2, &["needs a terminal", "nemo run"]);
}

/// `nemo bench` times the first token after each `--ttft` size, fresh and as a follow-up
/// restoring a checkpoint, every run kept; a size that is no count is refused in one line
/// naming the flag.
#[test]
fn bench_reports_ttft_at_each_size_fresh_and_as_a_follow_up() {
    let d = fixture("nemotron_h_tiny").display().to_string();
    let base = [
        "bench",
        "--model",
        d.as_str(),
        "--json",
        "--runs",
        "2",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
    ];
    let mut args = base.to_vec();
    args.extend(["--ttft", "3,16", "--follow-up", "5"]);
    let out = nemo(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["follow_up_tokens"], 5);
    let sizes = v["ttft_sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2, "{v}");
    for (t, want) in sizes.iter().zip([3, 16]) {
        assert_eq!(t["new_tokens"], want);
        for k in ["fresh", "follow_up"] {
            let runs = t[format!("{k}_runs_ms")].as_array().unwrap();
            assert_eq!(runs.len(), 2, "{k}: {t}");
            assert!(runs.iter().all(|r| r.as_f64().unwrap() > 0.0), "{k}: {t}");
            assert!(t[format!("{k}_ms")].as_f64().unwrap() > 0.0, "{k}: {t}");
        }
    }
    let mut args = base.to_vec();
    args.extend(["--ttft", ""]);
    let out = nemo(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("ttft_sizes").is_none(), "{v}");
    for bad in ["0", "16,x", "2.5"] {
        let mut args = base.to_vec();
        args.extend(["--ttft", bad]);
        let out = nemo(&args, None);
        let err = text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "--ttft {bad}");
        assert!(
            err.contains("--ttft") && err.trim().lines().count() == 1,
            "--ttft {bad}: {err}"
        );
    }
}
// ---- Model files that claim more than they are (issue #10: items 7, 8, 9, 14, 15) ----

/// Like `nemo`, with a deadline: a run still going after `secs` is killed and the test
/// fails (a hang fails instead of stalling the suite). Also returns the run's peak
/// resident memory in bytes, from `wait4`.
// The child is reaped by `wait4` (for its rusage), which clippy does not see.
#[allow(clippy::zombie_processes)]
fn nemo_bounded(args: &[&str], secs: u64) -> (Output, u64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = common::nemo_command()
        .env("NEMO_DEVICE", "cpu")
        .env_remove("NEMO_MODEL")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let t0 = std::time::Instant::now();
    let (status, maxrss) = loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter; `pid` is our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break (status, ru.ru_maxrss as u64 * 1024);
        }
        if t0.elapsed().as_secs() >= secs {
            let _ = child.kill();
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            panic!("`nemo {}` did not exit within {secs} s", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let output = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, maxrss)
}

fn run_bounded(model: &Path) -> Output {
    let m = model.display().to_string();
    nemo_bounded(&["run", "--model", &m, "--max-tokens", "4", "hello"], 60).0
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("Infinity", "null");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn bench_refuses_a_run_that_cannot_fit_before_allocating() {
    // 10^11 prompt ids alone are 400 GB: refused in one line, not an allocation abort.
    let (out, _) = nemo_bounded(
        &[
            "bench",
            "--shape",
            "tiny",
            "--prompt-tokens",
            "100000000000",
            "--gen-tokens",
            "1",
            "--runs",
            "1",
        ],
        60,
    );
    fails_with_one_line(&out, 1, &["needs about", "available", "--prompt-tokens"]);
    let (out, _) = nemo_bounded(
        &[
            "bench",
            "--model",
            &tiny(),
            "--prompt-tokens",
            "100000000000",
            "--runs",
            "1",
        ],
        60,
    );
    fails_with_one_line(&out, 1, &["needs about", "available", "--prompt-tokens"]);
}

#[test]
fn fifo_model_files_are_errors_not_hangs() {
    for (fixture_name, file) in [
        ("nemotron_h_tiny", "model.safetensors"),
        ("nemotron_h_tiny", "config.json"),
        ("nemotron_h_tiny", "tokenizer.json"),
        ("nemotron_h_tiny", "tokenizer_config.json"),
        ("nemotron_h_tiny", "generation_config.json"),
        ("nemotron_h_f16", "chat_template.jinja"),
        ("nemotron_h_bf16", "model.safetensors.index.json"),
        ("nemotron_h_bf16", "model-00002-of-00003.safetensors"),
    ] {
        let (_t, dir) = copy_fixture(fixture_name);
        mkfifo(&dir.join(file));
        let out = run_bounded(&dir);
        fails_with_one_line(&out, 1, &[file, "FIFO"]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("model.gguf");
    mkfifo(&gguf);
    fails_with_one_line(&run_bounded(&gguf), 1, &["model.gguf", "FIFO"]);
}

#[test]
fn index_shards_outside_the_model_folder_are_refused() {
    let (t, dir) = copy_fixture("nemotron_h_bf16");
    // The shard moved out of the folder, where `..` or an absolute path would find it.
    let outside = t.path().join("outside.safetensors");
    std::fs::rename(dir.join("model-00002-of-00003.safetensors"), &outside).unwrap();
    let index = dir.join("model.safetensors.index.json");
    let original = std::fs::read_to_string(&index).unwrap();
    for target in [
        "../outside.safetensors".to_string(),
        outside.display().to_string(),
    ] {
        let text = original.replace(
            "\"model-00002-of-00003.safetensors\"",
            &serde_json::Value::String(target.clone()).to_string(),
        );
        std::fs::write(&index, text).unwrap();
        let out = run_bounded(&dir);
        fails_with_one_line(
            &out,
            1,
            &[
                "model.safetensors.index.json",
                "weight_map",
                "outside.safetensors",
            ],
        );
    }
}

#[test]
fn bad_epsilon_and_rope_theta_are_named() {
    // Python writes NaN and Infinity bare; 0 and negative values are as wrong.
    for (fixture_name, field) in [
        ("nemotron_h_tiny", "layer_norm_epsilon"),
        ("llama_tiny", "rms_norm_eps"),
        ("llama_tiny", "rope_theta"),
    ] {
        for bad in ["NaN", "Infinity", "-Infinity", "0", "-1e-5"] {
            let (_t, dir) = copy_fixture(fixture_name);
            let cfg = dir.join("config.json");
            let text = std::fs::read_to_string(&cfg).unwrap();
            let at = text.find(&format!("\"{field}\"")).unwrap();
            let end = at + text[at..].find([',', '\n', '}']).unwrap();
            let text = format!("{}\"{field}\": {bad}{}", &text[..at], &text[end..]);
            std::fs::write(&cfg, text).unwrap();
            let e = fails_with_one_line(&run_bounded(&dir), 1, &["config.json", field]);
            assert!(e.contains("finite number greater than 0"), "{bad}: {e}");
        }
    }
}

#[test]
fn strings_where_numbers_belong_are_named() {
    for (fixture_name, file, field) in [
        ("llama_tiny", "config.json", "rms_norm_eps"),
        ("llama_tiny", "config.json", "num_key_value_heads"),
        ("nemotron_h_tiny", "config.json", "layer_norm_epsilon"),
        ("nemotron_h_tiny", "config.json", "hidden_size"),
        ("nemotron_h_tiny", "generation_config.json", "temperature"),
        ("nemotron_h_tiny", "generation_config.json", "top_p"),
    ] {
        let (_t, dir) = copy_fixture(fixture_name);
        edit_json(&dir.join(file), |o| {
            o.insert(field.into(), serde_json::json!("0.5"));
        });
        fails_with_one_line(&run_bounded(&dir), 1, &[file, field]);
    }
}

#[test]
fn token_ids_past_the_vocabulary_are_named() {
    for (fixture_name, file, field) in [
        ("nemotron_h_tiny", "config.json", "eos_token_id"),
        ("nemotron_h_tiny", "config.json", "bos_token_id"),
        ("llama_tiny", "config.json", "eos_token_id"),
        ("nemotron_h_tiny", "generation_config.json", "eos_token_id"),
    ] {
        let (_t, dir) = copy_fixture(fixture_name);
        edit_json(&dir.join(file), |o| {
            o.insert(field.into(), serde_json::json!([2, 512]));
        });
        fails_with_one_line(&run_bounded(&dir), 1, &[file, field, "512"]);
    }
}

#[test]
fn layers_past_the_config_are_named() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    edit_json(&dir.join("config.json"), |o| {
        o.insert("hybrid_override_pattern".into(), "M-M*-M*".into());
        o.insert("num_hidden_layers".into(), 7.into());
    });
    fails_with_one_line(
        &run_bounded(&dir),
        1,
        &["config.json", "hybrid_override_pattern", "layer 7"],
    );
    let (_t, dir) = copy_fixture("llama_tiny");
    edit_json(&dir.join("config.json"), |o| {
        o.insert("num_hidden_layers".into(), 2.into());
    });
    fails_with_one_line(
        &run_bounded(&dir),
        1,
        &["config.json", "num_hidden_layers", "layer 2"],
    );
}

/// Overwrites the first element of safetensors tensor `name` (F32) with `value`.
fn poke_f32(file: &Path, name: &str, value: f32) {
    let mut b = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    assert_eq!(header[name]["dtype"], "F32", "{name}");
    let at = 8 + n + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    b[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(file, b).unwrap();
}

#[test]
fn non_finite_logits_stop_with_an_error() {
    let (_t, dir) = copy_fixture("nemotron_h_tiny");
    poke_f32(
        &dir.join("model.safetensors"),
        "backbone.norm_f.weight",
        f32::NAN,
    );
    let e = fails_with_one_line(&run_bounded(&dir), 1, &["not finite"]);
    assert!(!e.contains("<unk>"), "{e}");
}

#[test]
fn a_large_gguf_metadata_array_costs_no_more_than_the_file() {
    // 50 MB of u8 elements: one decoded value per byte was 1.6 GB.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("big.gguf");
    let mut w = common::gguf_file::Writer::new();
    w.str("general.architecture", "nemotron_h")
        .zero_bytes("junk", 50_000_000);
    std::fs::write(&p, w.header()).unwrap();
    let m = p.display().to_string();
    let (out, maxrss) = nemo_bounded(&["run", "--model", &m, "hello"], 60);
    fails_with_one_line(&out, 1, &["big.gguf", "embedding_length"]);
    assert!(
        maxrss < 256 << 20,
        "peak RSS {} MiB for a 50 MB file",
        maxrss >> 20
    );
}

#[test]
fn a_sparse_gguf_claiming_a_huge_state_is_refused_before_running() {
    // Every shape agrees with every other and the data fits the file's (sparse) length,
    // but 64 heads × 64 × d_state 2^22 make a 64 GiB state per sequence from 400 MB of
    // claimed weights (a few KB on disk).
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sparse.gguf");
    let shape = common::gguf_file::MambaShape {
        hidden: 8,
        heads: 64,
        head_dim: 64,
        d_state: 1 << 22,
        groups: 1,
        vocab: 16,
        layers: 1,
    };
    let w = common::gguf_file::mamba_model(&shape, 1);
    w.write_sparse(&p);
    let e = fails_with_one_line(
        &run_bounded(&p),
        1,
        &["sparse.gguf", "nemotron_h.ssm.state_size", "64.1 GiB"],
    );
    assert!(!e.contains("memory allocation"), "{e}");
}
