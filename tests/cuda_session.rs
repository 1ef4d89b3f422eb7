//! `run` and `chat` on the GPU: the engine's `Session` on a `Sequence::cuda` against the
//! same `Session` on the CPU, checkpoint reuse across turns on the device, and the real
//! binary with `--device cuda|auto`.
//!
//! The CPU reference runs the same bf16 weights as the GPU (every 2-D tensor rounded to
//! bf16 as the upload rounds it; tests/cuda_model.rs explains why), and the bound is that
//! file's: relative L2 error over all compared logits ≤ 2^-6 plus a term per rounded cache
//! (√(2^-8 · u) for a cache format of unit roundoff u).
//!
//! Without a usable GPU each test prints `SKIP` and returns; `NEMO_REQUIRE_GPU=1` makes
//! that a failure (scripts/gpu-check.sh sets it).

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Output, Stdio};

fn require_gpu() -> bool {
    std::env::var("NEMO_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Whether this build and machine can run the GPU tests; says `SKIP` (or fails under
/// `NEMO_REQUIRE_GPU=1`) when not.
fn usable(test: &str) -> bool {
    let why = if cfg!(feature = "cuda") {
        match nemo::backend::cuda::probe() {
            Ok(_) => return true,
            Err(e) => e.to_string(),
        }
    } else {
        "this build has no `cuda` feature".to_string()
    };
    if require_gpu() {
        panic!("NEMO_REQUIRE_GPU=1 but no usable GPU: {why}");
    }
    common::skip::skip(&format!("no usable GPU ({test}): {why}"));
    false
}

fn nemo(args: &[&str]) -> Output {
    common::nemo_command()
        .args(args)
        .env_remove("NEMO_MODEL")
        .env_remove("NEMO_DEVICE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    common::fixture(name).display().to_string()
}

/// `nemo run --model MODEL --device DEVICE --max-tokens 4 --json Hi`.
fn run_json(model: &str, device: &str) -> Output {
    nemo(&[
        "run",
        "--model",
        model,
        "--device",
        device,
        "--max-tokens",
        "4",
        "--json",
        "Hi",
    ])
}

/// The `done` event of `nemo run --json`.
fn done_event(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no done event: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn run_on_cuda_prints_text_and_exits_0() {
    if !usable("run --device cuda") {
        return;
    }
    let t = fixture("nemotron_h_tiny");
    let out = nemo(&[
        "run",
        "--model",
        &t,
        "--device",
        "cuda",
        "--max-tokens",
        "12",
        "--no-think",
        "Hi",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(!out.stdout.is_empty(), "no text on stdout; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // No notice, no progress bar (stderr is not a terminal here).
    assert!(err.trim().is_empty(), "{err}");

    let out = run_json(&t, "cuda");
    assert_eq!(out.status.code(), Some(0));
    let d = done_event(&out);
    assert!(
        d["device"]
            .as_str()
            .is_some_and(|s| s.starts_with("cuda · ")),
        "{d}"
    );
}

/// `NEMO_DEVICE_SAMPLING=0` takes the host sampler on downloaded logits: the same greedy
/// text as the device draw, from the real binary.
#[test]
fn run_on_cuda_writes_the_same_greedy_text_with_device_sampling_off() {
    if !usable("run --device cuda, NEMO_DEVICE_SAMPLING=0") {
        return;
    }
    let t = fixture("nemotron_h_bf16");
    let run = |device_sampling: &str| {
        let out = common::nemo_command()
            .args([
                "run",
                "--model",
                &t,
                "--device",
                "cuda",
                "--temperature",
                "0",
                "--max-tokens",
                "16",
                "Hi",
            ])
            .env_remove("NEMO_MODEL")
            .env_remove("NEMO_DEVICE")
            .env("NEMO_DEVICE_SAMPLING", device_sampling)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(0), "{err}");
        out.stdout
    };
    let on = run("1");
    assert!(!on.is_empty());
    assert_eq!(on, run("0"));
}

#[test]
fn auto_takes_the_gpu_for_a_nemotron_h_model_and_the_cpu_with_a_notice_for_llama() {
    if !usable("run --device auto") {
        return;
    }
    let out = run_json(&fixture("nemotron_h_bf16"), "auto");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.trim().is_empty(), "no notice on the GPU: {err}");
    let d = done_event(&out);
    assert!(
        d["device"].as_str().is_some_and(|s| s.starts_with("cuda")),
        "{d}"
    );

    let out = run_json(&fixture("llama_tiny"), "auto");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one notice: {err}");
    assert!(
        err.starts_with("nemo: running on the CPU: ") && err.contains("Llama"),
        "{err}"
    );
    assert_eq!(done_event(&out)["device"], "cpu");
}

#[test]
fn cuda_refuses_what_the_gpu_backend_cannot_run_in_one_line() {
    if !usable("run --device cuda refusals") {
        return;
    }
    let cases = [
        (fixture("llama_tiny"), "Llama"),
        (fixture("nemotron_h_tiny_fp8"), "not supported on cuda yet"),
        (fixture("gguf/nemotron_h_tiny.f32.gguf"), "GGUF"),
    ];
    for (model, why) in cases {
        let out = nemo(&[
            "run",
            "--model",
            &model,
            "--device",
            "cuda",
            "--max-tokens",
            "2",
            "Hi",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{model}: {err}");
        assert!(out.stdout.is_empty(), "{model}");
        assert_eq!(err.trim_end().lines().count(), 1, "{model}: {err}");
        assert!(
            err.starts_with("nemo: --device cuda: ") && err.contains(why),
            "{model}: {err}"
        );
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::gpu::{bf16_reference, model_bound, rel_l2, GpuGuard};
    use std::sync::Arc;

    use nemo::backend::cuda::Gpu;
    use nemo::backend::DType;
    use nemo::engine::{Sequence, Session, SessionOptions};
    use nemo::model::cuda::{check_cuda, load_gpu_model, GpuNemotronH, StoreWeights};
    use nemo::model::weights::WeightStore;
    use nemo::model::{Logits, Model, ModelFolder, NemotronHConfig};
    use nemo::protocol::Message;
    use nemo::protocol::SamplingParams;
    use nemo::protocol::{Budget, Event, Request, ThinkingOptions};
    use nemo::state::CacheConfig;

    const DENSE: [&str; 3] = ["nemotron_h_tiny", "nemotron_h_bf16", "nemotron_h_f16"];

    /// The GPU behind an `Arc` (runners share it), one test at a time.
    fn gpu(test: &str) -> Option<GpuGuard<Arc<Gpu>>> {
        super::common::gpu::open(test, Arc::new)
    }

    /// Cache pairs covered here (every pair is in tests/cuda_model.rs).
    fn caches() -> [CacheConfig; 2] {
        [
            CacheConfig {
                ssm_dtype: DType::F32,
                kv_dtype: DType::BF16,
            },
            CacheConfig {
                ssm_dtype: DType::BF16,
                kv_dtype: DType::F8E4M3,
            },
        ]
    }

    struct Fixture {
        /// As stored: the GPU uploads from it.
        folder: ModelFolder,
        /// The same folder with the CPU model on bf16-rounded 2-D tensors.
        cpu: ModelFolder,
        cfg: NemotronHConfig,
    }

    fn fixture(name: &str) -> Fixture {
        let folder = ModelFolder::open(&super::common::fixture(name)).unwrap();
        let (cfg, _, model) = bf16_reference(name, |_, t| t, |_| false);
        let cpu = ModelFolder {
            dir: folder.dir.clone(),
            model: Arc::new(Model::NemotronH(model)),
            tokenizer: folder.tokenizer.clone(),
            template: folder.template.clone(),
            generation: folder.generation.clone(),
            eos_token_ids: folder.eos_token_ids.clone(),
        };
        Fixture { folder, cpu, cfg }
    }

    fn upload(g: &Gpu, f: &Fixture) -> Arc<GpuNemotronH> {
        let store = WeightStore::open_dir(&f.folder.dir).unwrap();
        Arc::new(GpuNemotronH::load(g, &f.cfg, &mut StoreWeights(&store)).unwrap())
    }

    fn opts(cache: CacheConfig) -> SessionOptions {
        SessionOptions {
            cache,
            // Several prefill calls per message, and the boundaries cut them.
            prefill_chunk: 8,
            ..Default::default()
        }
    }

    fn gpu_session(g: &Arc<Gpu>, m: &Arc<GpuNemotronH>, f: &Fixture, o: SessionOptions) -> Session {
        let sequence = Sequence::cuda(g.clone(), m.clone(), &o).unwrap();
        Session::with_sequence(&f.folder, sequence, o).unwrap()
    }

    fn request(messages: Vec<Message>, budget: Option<usize>, max_tokens: usize) -> Request {
        let mut req = Request::new(
            messages,
            ThinkingOptions {
                budget: Budget::from_limit(budget),
                ..Default::default()
            },
        );
        req.max_tokens = max_tokens;
        req
    }

    fn convo(turns: &[&str]) -> Vec<Message> {
        let mut m = vec![Message::system("You are a tiny test model.")];
        for (i, t) in turns.iter().enumerate() {
            m.push(if i % 2 == 0 {
                Message::user(*t)
            } else {
                Message::assistant(*t)
            });
        }
        m
    }

    /// (a) A chat prompt through `Session` (several messages, checkpoints at their ends,
    /// prefill in chunks): the GPU's first-token logits against the CPU session's.
    #[test]
    fn a_gpu_session_prefills_a_chat_prompt_like_the_cpu_session() {
        let Some(g) = gpu("gpu session prefill") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            let req = request(
                convo(&["What is a tiny model?", "A small one.", "Why test it?"]),
                None,
                8,
            );
            for cache in caches() {
                let mut cpu = Session::new(&f.cpu, opts(cache)).unwrap();
                let mut gs = gpu_session(&g, &m, &f, opts(cache));
                let (_, want) = cpu.prefill(&req).unwrap();
                let (reused, got) = gs.prefill(&req).unwrap();
                assert_eq!(reused, 0);
                assert_eq!(gs.tokens(), cpu.tokens());
                assert!(gs.checkpoint_count() > 0, "no checkpoint at a message end");
                let (e, b) = (rel_l2(&got, &want), model_bound(cache));
                eprintln!(
                    "{name} ssm {} kv {}: session prefill relative L2 {e:.2e} (bound {b:.2e})",
                    cache.ssm_dtype, cache.kv_dtype
                );
                assert!(e <= b, "{name} {cache:?}: relative L2 {e} > {b}");
            }
        }
    }

    /// (a) Teacher-forced decode through the runners `Session` drives: the same tokens
    /// fed one at a time on both devices, after the prompt and after a restore.
    #[test]
    fn teacher_forced_decode_on_the_gpu_sequence_matches_the_cpu_sequence() {
        let Some(g) = gpu("gpu sequence decode") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            let prompt = Session::new(&f.cpu, SessionOptions::default())
                .unwrap()
                .render(&request(convo(&["Count to ten."]), None, 8))
                .unwrap()
                .ids;
            let steps: Vec<u32> = (0..10)
                .map(|i| (i * 37 + 5) as u32 % f.cfg.vocab_size as u32)
                .collect();
            for cache in caches() {
                let o = opts(cache);
                let mut cpu = Sequence::cpu(f.cpu.model.clone(), cache);
                let mut gr = Sequence::cuda(g.clone(), m.clone(), &o).unwrap();
                let (mut want, mut got) = (vec![], vec![]);
                for chunk in prompt.chunks(o.prefill_chunk) {
                    want.extend(cpu.forward(chunk, Logits::Last).unwrap());
                    got.extend(gr.forward(chunk, Logits::Last).unwrap());
                }
                let snap = gr.checkpoint().unwrap();
                let mut first = vec![];
                for t in &steps {
                    want.extend(cpu.forward(&[*t], Logits::Last).unwrap());
                    first.extend(gr.forward(&[*t], Logits::Last).unwrap());
                }
                got.extend(&first);
                let (e, b) = (rel_l2(&got, &want), model_bound(cache));
                eprintln!(
                    "{name} ssm {} kv {}: sequence decode relative L2 {e:.2e} (bound {b:.2e})",
                    cache.ssm_dtype, cache.kv_dtype
                );
                assert!(e <= b, "{name} {cache:?}: relative L2 {e} > {b}");
                // Restoring puts the same bits back: the same steps give the same logits
                // (up to the order of any f32 sum the kernels do not fix, far below 1e-5).
                gr.restore(&snap).unwrap();
                assert_eq!(gr.len(), prompt.len());
                let mut again = vec![];
                for t in &steps {
                    again.extend(gr.forward(&[*t], Logits::Last).unwrap());
                }
                let e = rel_l2(&again, &first);
                assert!(e <= 1e-5, "{name} {cache:?}: after restore relative L2 {e}");
            }
        }
    }

    /// (b) Turn 2 on the GPU restores turn 1's checkpoint and feeds only the new message;
    /// its first-token logits equal a fresh GPU session fed the whole prompt, and the CPU.
    #[test]
    fn second_turn_on_the_gpu_reuses_the_first_and_matches_a_fresh_session() {
        let Some(g) = gpu("gpu session reuse") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            let cache = caches()[0];
            let mut s = gpu_session(&g, &m, &f, opts(cache));
            let (mut reasoning, mut content) = (String::new(), String::new());
            let t1 = s
                .generate(
                    &request(convo(&["What is a tiny model?"]), Some(5), 12),
                    &mut |e| match e {
                        Event::Reasoning(t) => reasoning.push_str(&t),
                        Event::Content(t) => content.push_str(&t),
                        _ => {}
                    },
                )
                .unwrap();
            assert!(t1.usage.completion_tokens > 0, "{name}: {t1:?}");
            let mut answer = Message::assistant(content);
            answer.reasoning_content = Some(reasoning);
            let mut msgs = convo(&["What is a tiny model?"]);
            msgs.push(answer);
            msgs.push(Message::user("And why test it?"));
            let req2 = request(msgs, Some(5), 12);

            let fed_before = s.fed_total();
            let (reused, got) = s.prefill(&req2).unwrap();
            let prompt = s.tokens().len();
            assert!(reused > 0, "{name}: nothing reused");
            assert_eq!(
                s.fed_total() - fed_before,
                prompt - reused,
                "{name}: only the new tokens are fed"
            );

            let mut fresh = gpu_session(&g, &m, &f, opts(cache));
            let (r0, whole) = fresh.prefill(&req2).unwrap();
            assert_eq!((r0, fresh.tokens()), (0, s.tokens()));
            let (e, b) = (rel_l2(&got, &whole), model_bound(cache));
            eprintln!("{name}: restored vs fresh GPU relative L2 {e:.2e} (bound {b:.2e})");
            assert!(e <= b, "{name}: restored vs fresh GPU {e} > {b}");

            let mut cpu = Session::new(&f.cpu, opts(cache)).unwrap();
            let (_, want) = cpu.prefill(&req2).unwrap();
            let e = rel_l2(&got, &want);
            eprintln!("{name}: restored GPU vs CPU relative L2 {e:.2e} (bound {b:.2e})");
            assert!(e <= b, "{name}: restored GPU vs CPU {e} > {b}");
        }
    }

    /// What one `generate` produced: the ids it fed after the prompt, its text (reasoning
    /// and answer, marked), and how it ended.
    #[derive(Debug, PartialEq)]
    struct Generated {
        ids: Vec<u32>,
        text: String,
        finish: nemo::protocol::FinishReason,
        usage: nemo::protocol::Usage,
        forced: bool,
    }

    fn generate(s: &mut Session, req: &Request) -> Generated {
        let mut text = String::new();
        let done = s
            .generate(req, &mut |e| match e {
                Event::Reasoning(t) => text.push_str(&format!("[r]{t}")),
                Event::Content(t) => text.push_str(&format!("[c]{t}")),
                _ => {}
            })
            .unwrap();
        Generated {
            ids: s.tokens()[done.usage.prompt_tokens..].to_vec(),
            text,
            finish: done.finish_reason,
            usage: done.usage,
            forced: done.thinking_forced,
        }
    }

    fn sampled(sampling: SamplingParams, max_tokens: usize) -> Request {
        let mut req = request(convo(&["Tell me about tiny models."]), None, max_tokens);
        req.sampling = sampling;
        req
    }

    /// The device draw (greedy: argmax, ties to the lower id) picks the tokens the host
    /// sampler picks from the same logits downloaded (`set_device_sampling(false)`, what
    /// `NEMO_DEVICE_SAMPLING=0` does): the same ids, text and ending, token for token.
    #[test]
    fn greedy_device_draw_gives_the_host_samplers_tokens() {
        let Some(g) = gpu("gpu device draw greedy") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            for cache in caches() {
                let req = sampled(SamplingParams::default(), 24);
                let mut dev = gpu_session(&g, &m, &f, opts(cache));
                let got = generate(&mut dev, &req);
                let mut host = gpu_session(&g, &m, &f, opts(cache));
                host.set_device_sampling(false);
                let want = generate(&mut host, &req);
                assert_eq!(got, want, "{name} {cache:?}");
                assert!(got.usage.completion_tokens > 0, "{name}: {got:?}");
                assert!(
                    dev.device_draws() > 0,
                    "{name}: nothing drawn on the device"
                );
                assert_eq!(host.device_draws(), 0, "{name}");
            }
        }
    }

    /// Log-probabilities asked for on the GPU: every token is picked by the host sampler
    /// on the downloaded logits (none drawn on the device), so the numbers are its own:
    /// one entry per token, the greedy token its step's best, and the tokens and numbers
    /// of a session with device sampling off.
    #[test]
    fn logprobs_on_the_gpu_take_the_host_path() {
        let Some(g) = gpu("gpu logprobs") else {
            return;
        };
        let f = fixture("nemotron_h_tiny");
        let m = upload(&g, &f);
        let mut req = sampled(SamplingParams::default(), 16);
        req.logprobs = Some(3);
        let run = |device_sampling: bool| {
            let mut s = gpu_session(&g, &m, &f, opts(caches()[0]));
            s.set_device_sampling(device_sampling);
            let mut entries = Vec::new();
            let done = s
                .generate(&req, &mut |e| {
                    if let Event::Logprobs(v) = e {
                        entries.extend(v);
                    }
                })
                .unwrap();
            assert_eq!(entries.len(), done.usage.completion_tokens);
            (entries, s.device_draws())
        };
        let (got, draws) = run(true);
        assert_eq!(draws, 0, "drawn on the device with logprobs asked for");
        assert!(!got.is_empty());
        for e in &got {
            assert!(e.token.logprob <= 0.0, "{e:?}");
            assert_eq!(e.top.len(), 3, "{e:?}");
            assert_eq!(e.top[0].id, e.token.id, "{e:?}");
        }
        let (want, _) = run(false);
        assert_eq!(
            got.iter().map(|e| e.token.id).collect::<Vec<_>>(),
            want.iter().map(|e| e.token.id).collect::<Vec<_>>()
        );
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a.token.logprob - b.token.logprob).abs() < 1e-4,
                "{a:?} {b:?}"
            );
        }
    }

    /// Temperature 1, top-p 0.9 and a seed: the uniforms come from the seeded host
    /// generator, so two GPU sessions write the same text; another seed another text.
    #[test]
    fn seeded_sampling_on_the_device_is_reproducible() {
        let Some(g) = gpu("gpu device draw seeded") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            let params = |seed| SamplingParams {
                temperature: 1.0,
                top_p: 0.9,
                seed: Some(seed),
                ..SamplingParams::default()
            };
            let run = |seed| {
                let mut s = gpu_session(&g, &m, &f, opts(caches()[0]));
                let out = generate(&mut s, &sampled(params(seed), 24));
                assert!(s.device_draws() > 0, "{name}: nothing drawn on the device");
                out
            };
            let a = run(42);
            assert!(a.usage.completion_tokens > 0, "{name}: {a:?}");
            assert_eq!(a, run(42), "{name}: same seed, other text");
            assert_ne!(a.text, run(7).text, "{name}: the seed changes nothing");
        }
    }

    /// Repetition and presence penalties on the device: the eager draw uploads the
    /// deduplicated token history and applies them to the logits there (only the id comes
    /// back), and greedy generation picks the same ids as the host sampler on downloaded
    /// logits.
    #[test]
    fn a_repetition_penalty_is_applied_on_the_device_like_on_the_host() {
        let Some(g) = gpu("gpu device draw penalty") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            let req = sampled(
                SamplingParams {
                    repetition_penalty: 1.3,
                    presence_penalty: 0.5,
                    ..SamplingParams::default()
                },
                16,
            );
            let mut s = gpu_session(&g, &m, &f, opts(caches()[0]));
            let got = generate(&mut s, &req);
            assert!(got.usage.completion_tokens > 0, "{name}: {got:?}");
            assert!(
                s.device_draws() > 0,
                "{name}: the penalty run took the host path"
            );
            let mut host = gpu_session(&g, &m, &f, opts(caches()[0]));
            host.set_device_sampling(false);
            assert_eq!(got, generate(&mut host, &req), "{name}");
        }
    }

    /// Thinking with a minimum and a budget on the device path: until the minimum (here
    /// the budget) the end of thinking and EOS are banned in the draw's args. The folder's
    /// EOS is made the token greedy picks first, so without the ban the answer ends at
    /// once; with it the device draws other tokens until the budget forces `</think>`, and
    /// every id matches the host sampler with the same bans.
    #[test]
    fn a_thinking_budget_run_bans_the_end_on_the_device_like_the_host() {
        let Some(g) = gpu("gpu device draw bans") else {
            return;
        };
        for name in DENSE {
            let f = fixture(name);
            let m = upload(&g, &f);
            let thinking = |min_tokens| {
                let mut req = Request::new(
                    convo(&["Think, then answer."]),
                    ThinkingOptions {
                        budget: Budget::tokens(8),
                        min_tokens,
                        grace_tokens: 0,
                        ..Default::default()
                    },
                );
                req.max_tokens = 24;
                req
            };
            // The first token greedy picks, from the GPU's logits (ties to the lower id).
            let mut probe = gpu_session(&g, &m, &f, opts(caches()[0]));
            assert!(probe.render(&thinking(0)).unwrap().starts_in_reasoning);
            let (_, logits) = probe.prefill(&thinking(0)).unwrap();
            let first =
                (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32;
            let mut eos = f.folder.eos_token_ids.clone();
            eos.push(first);
            let folder = ModelFolder {
                dir: f.folder.dir.clone(),
                model: f.folder.model.clone(),
                tokenizer: f.folder.tokenizer.clone(),
                template: f.folder.template.clone(),
                generation: f.folder.generation.clone(),
                eos_token_ids: eos,
            };
            let session = |device: bool| {
                let sequence = Sequence::cuda(g.clone(), m.clone(), &opts(caches()[0])).unwrap();
                let mut s = Session::with_sequence(&folder, sequence, opts(caches()[0])).unwrap();
                s.set_device_sampling(device);
                s
            };
            let mut unbanned = session(true);
            let end = generate(&mut unbanned, &thinking(0));
            assert_eq!(
                (end.finish, end.usage.completion_tokens),
                (nemo::protocol::FinishReason::Stop, 0),
                "{name}: {end:?}"
            );
            let mut dev = session(true);
            let got = generate(&mut dev, &thinking(8));
            assert!(
                dev.device_draws() > 0,
                "{name}: nothing drawn on the device"
            );
            let think_end = f.folder.tokenizer.token_to_id("</think>");
            assert!(
                got.ids[..8]
                    .iter()
                    .all(|id| *id != first && Some(*id) != think_end),
                "{name}: a banned token before the minimum: {got:?}"
            );
            assert!(
                got.forced && got.usage.reasoning_tokens > 8,
                "{name}: {got:?}"
            );
            let mut host = session(false);
            assert_eq!(got, generate(&mut host, &thinking(8)), "{name}");
            assert_eq!(host.device_draws(), 0);
        }
    }

    /// The session's context is the model's when it fits the device (the tiny models'
    /// KV caches fit any GPU), and `--context` wins when given.
    #[test]
    fn the_gpu_session_context_fits_the_device_and_follows_the_option() {
        let Some(g) = gpu("gpu session context") else {
            return;
        };
        let f = fixture("nemotron_h_tiny");
        let m = upload(&g, &f);
        let s = gpu_session(&g, &m, &f, SessionOptions::default());
        assert_eq!(s.context(), f.cfg.max_position_embeddings);
        assert!(s.device().starts_with("cuda · "), "{}", s.device());
        let s = gpu_session(
            &g,
            &m,
            &f,
            SessionOptions {
                context: Some(64),
                ..Default::default()
            },
        );
        assert_eq!(s.context(), 64);
    }

    /// Needs no GPU: what `--device cuda|auto` accepts is decided from the folder alone.
    #[test]
    fn check_cuda_accepts_nemotron_h_folders_and_refuses_the_rest_in_one_line() {
        for name in DENSE
            .iter()
            .chain(&["nemotron_h_moe", "nemotron_h_moe_latent"])
        {
            let folder = ModelFolder::open(&super::common::fixture(name)).unwrap();
            check_cuda(&folder).unwrap();
        }
        let refused = [
            ("llama_tiny", "Llama models are not supported on cuda yet"),
            (
                "nemotron_h_tiny_fp8",
                "weights are not supported on cuda yet",
            ),
            (
                "gguf/nemotron_h_tiny.f32.gguf",
                "GGUF files are not supported on cuda yet",
            ),
        ];
        for (name, why) in refused {
            let folder = ModelFolder::open(&super::common::fixture(name)).unwrap();
            let e = check_cuda(&folder).unwrap_err().to_string();
            assert!(e.contains(why), "{name}: {e}");
            assert_eq!(e.lines().count(), 1, "{name}: {e}");
        }
    }

    /// The upload reports checkpoint bytes as they go up: never backwards, within the
    /// total, ending at the checkpoint's size.
    #[test]
    fn weight_upload_progress_rises_to_the_checkpoint_size() {
        let Some(g) = gpu("gpu upload progress") else {
            return;
        };
        let folder = ModelFolder::open(&super::common::fixture("nemotron_h_bf16")).unwrap();
        let total = WeightStore::open_dir(&folder.dir).unwrap().total_bytes();
        let mut seen: Vec<(usize, usize)> = vec![];
        load_gpu_model(&g, &folder, |d, t| seen.push((d, t))).unwrap();
        assert!(seen.len() > 2, "{seen:?}");
        assert!(seen.iter().all(|(d, t)| *t == total && d <= t), "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
        assert_eq!(seen.last(), Some(&(total, total)));
    }
}
