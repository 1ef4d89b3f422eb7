//! `nemo bench --json-schema FILE`: decode speed with and without a JSON-schema constraint
//! (engine::grammar), and the grammar's time per token, on a model (its own tokenizer) or a
//! synthetic shape (a synthetic vocabulary of the shape's size, below).
//!
//! Each run decodes `--gen-tokens` tokens greedily after the same prompt three ways, in
//! turn so that machine noise hits all three alike:
//! - `plain`: forward one token, draw (the host sampler, no mask);
//! - `masked`: the same, with the grammar's mask on every draw and the drawn token
//!   consumed (forced tokens are drawn one by one too: their mask has one token), so the
//!   difference to `plain` is the grammar's cost alone;
//! - `fast-forward`: as the engine decodes, forced tokens fed in one forward call.
//!
//! EOS is banned (a complete answer starts a new one: the grammar is compiled again,
//! outside the timing). The grammar runs serially on the decode thread, as in the engine;
//! its time per drawn token (fast-forward check, mask, consume) gives p50/p99.
//!
//! The synthetic vocabulary (`synthetic_vocabulary`) stands in for Nemotron's 131072-token
//! one, since the mask's cost follows the vocabulary: 1000 special tokens, the 256 bytes,
//! then distinct generated pieces — lengths 2-16 bytes peaking at 4-6 (like a trained
//! BPE vocabulary), a third with a leading space, mostly lowercase ASCII words with some
//! capitalized, digit, punctuation and non-ASCII (accented Latin, Cyrillic, CJK) pieces —
//! from a fixed xorshift seed, so every run builds the same one.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use nemo::engine::grammar::{percentile, Grammar, GrammarError, Guide, Vocabulary};
use nemo::engine::sampler::Sampler;
use nemo::model::{synthetic, Logits, Model, ModelFolder};
use nemo::protocol::{Constraint, SamplingParams};
use nemo::state::SequenceState;

use super::{emit, machine, machine_line, median, progress, prompt_ids, usage, BenchArgs, Source};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Masked,
    FastForward,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::Masked, Mode::FastForward];

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Masked => "masked",
            Mode::FastForward => "fast-forward",
        }
    }
}

/// One decode of `gen` tokens.
struct Decode {
    seconds: f64,
    tokens: usize,
    forced: usize,
    /// The grammar's time per drawn token.
    grammar_s: Vec<f64>,
}

pub(super) fn run(a: &BenchArgs) -> anyhow::Result<()> {
    let flag = "--json-schema";
    if a.model.device == Some(nemo::config::Device::Cuda) {
        return Err(usage(format!(
            "{flag} is measured on the CPU (the GPU draws a constrained step on the host)"
        )));
    }
    let path = a
        .json_schema
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| usage(format!("{flag}: cannot read {path}: {e}")))?;
    let schema: Value =
        serde_json::from_str(&text).map_err(|e| usage(format!("{flag} {path}: not JSON: {e}")))?;
    let named = |e: GrammarError| {
        let msg = match e {
            GrammarError::Invalid { msg, .. } => msg,
            other => other.to_string(),
        };
        usage(format!("{flag} {path}: {msg}"))
    };
    let grammar = Grammar::from_constraint(&Constraint::JsonSchema(schema)).map_err(named)?;
    let Some(source) = super::source(a)? else {
        return Err(usage(format!("{flag} needs --model DIR or --shape NAME")));
    };
    for (n, name) in [
        (a.prompt_tokens, "--prompt-tokens"),
        (a.gen_tokens, "--gen-tokens"),
        (a.runs, "--runs"),
    ] {
        if n == 0 {
            return Err(usage(format!("{name} must be at least 1")));
        }
    }
    a.model.init_threads()?;
    let threads = rayon::current_num_threads();

    let (model, eos, vocab_desc, vocab) = match &source {
        Source::Folder(spec) => {
            let dir = super::super::pull::resolve_model(
                Some(spec),
                super::super::pull::Missing::Required,
            )?
            .path;
            progress(&format!("loading {}", dir.display()));
            let folder = ModelFolder::open(&dir)?;
            let t = Instant::now();
            let v = Vocabulary::from_tokenizer(
                &folder.tokenizer,
                folder.model.vocab_size(),
                &folder.eos_token_ids,
            )?;
            let desc = json!({"source": "tokenizer", "path": dir.display().to_string()});
            (
                folder.model,
                folder.eos_token_ids.clone(),
                (desc, t.elapsed()),
                v,
            )
        }
        Source::Shape {
            name,
            dtype,
            layers,
        } => {
            progress(&format!(
                "generating random {dtype} weights at shape {name}"
            ));
            let m = Arc::new(Model::NemotronH(synthetic::build(name, *dtype, *layers)?));
            let t = Instant::now();
            let words = synthetic_vocabulary(m.vocab_size());
            let v = Vocabulary::from_token_bytes(words, &[SYNTHETIC_EOS])?;
            let desc = json!({"source": "synthetic", "shape": name, "layers": m.layer_count()});
            (m, vec![SYNTHETIC_EOS], (desc, t.elapsed()), v)
        }
    };
    let vocab = Arc::new(vocab);
    let t = Instant::now();
    Guide::new(vocab.clone(), &grammar).map_err(named)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;

    let cache = a.model.cache_config(model.weight_dtype());
    let mut state = model.new_state(cache);
    let prompt = prompt_ids(a.prompt_tokens, model.vocab_size());
    let mut runs: Vec<(Mode, Decode)> = Vec::new();
    for i in 0..a.runs {
        for mode in Mode::ALL {
            progress(&format!("run {}/{} {}", i + 1, a.runs, mode.name()));
            let d = decode(
                &model,
                &mut state,
                &prompt,
                a.gen_tokens,
                mode,
                &vocab,
                &grammar,
                &eos,
            )?;
            runs.push((mode, d));
        }
    }

    let per_mode = |m: Mode| -> Vec<&Decode> {
        runs.iter()
            .filter(|(k, _)| *k == m)
            .map(|(_, d)| d)
            .collect()
    };
    let tps = |m: Mode| -> Vec<f64> {
        per_mode(m)
            .iter()
            .map(|d| d.tokens as f64 / d.seconds)
            .collect()
    };
    let (plain, masked, ff) = (tps(Mode::Plain), tps(Mode::Masked), tps(Mode::FastForward));
    let grammar_s: Vec<f64> = per_mode(Mode::Masked)
        .iter()
        .flat_map(|d| d.grammar_s.iter().copied())
        .collect();
    let (mask_p50, mask_p99) = (
        percentile(&grammar_s, 50.0) * 1e3,
        percentile(&grammar_s, 99.0) * 1e3,
    );
    let slowdown = (median(&plain) / median(&masked) - 1.0) * 100.0;
    let forced: usize = per_mode(Mode::FastForward).iter().map(|d| d.forced).sum();
    let ff_tokens: usize = per_mode(Mode::FastForward).iter().map(|d| d.tokens).sum();
    let (vocab_desc, vocab_build) = vocab_desc;

    let report = if a.json {
        let v = json!({
            "json_schema": path,
            "model": model_desc(&source, &model),
            "vocabulary": vocab_desc,
            "vocab_size": vocab.size(),
            "vocabulary_build_ms": vocab_build.as_secs_f64() * 1e3,
            "grammar_compile_ms": compile_ms,
            "threads": threads,
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "runs": a.runs,
            "decode_tokens_per_s": {"plain": median(&plain), "masked": median(&masked), "fast_forward": median(&ff)},
            "decode_tokens_per_s_per_run": {"plain": plain, "masked": masked, "fast_forward": ff},
            "masked_slowdown_pct": slowdown,
            "grammar_ms_p50": mask_p50,
            "grammar_ms_p99": mask_p99,
            "forced_fraction": if ff_tokens > 0 { forced as f64 / ff_tokens as f64 } else { 0.0 },
            "machine": machine(),
        });
        format!("{v}\n")
    } else {
        let mut s = machine_line(threads);
        s += &format!(
            "model: {}, vocabulary {} ({} tokens, built in {:.0} ms), schema {} (compiled in {:.1} ms)\n",
            model_desc(&source, &model),
            vocab_desc["source"].as_str().unwrap_or(""),
            vocab.size(),
            vocab_build.as_secs_f64() * 1e3,
            path,
            compile_ms,
        );
        s += &format!(
            "{} prompt tokens, {} decode tokens, {} runs of each (medians; per run in --json)\n",
            a.prompt_tokens, a.gen_tokens, a.runs
        );
        s += &format!("decode plain         {:>9.2} tok/s\n", median(&plain));
        s += &format!(
            "decode masked        {:>9.2} tok/s  ({slowdown:+.1}% time per token)\n",
            median(&masked)
        );
        s += &format!(
            "decode fast-forward  {:>9.2} tok/s  ({:.0}% of tokens forced)\n",
            median(&ff),
            if ff_tokens > 0 {
                forced as f64 * 100.0 / ff_tokens as f64
            } else {
                0.0
            }
        );
        s += &format!("grammar per token    p50 {mask_p50:.3} ms, p99 {mask_p99:.3} ms\n");
        s
    };
    emit(&report)
}

fn model_desc(source: &Source, model: &Model) -> String {
    match source {
        Source::Folder(p) => p.display().to_string(),
        Source::Shape { name, dtype, .. } => {
            format!(
                "{name} ({dtype}, {} layers, synthetic)",
                model.layer_count()
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn decode(
    model: &Model,
    state: &mut SequenceState,
    prompt: &[u32],
    gen: usize,
    mode: Mode,
    vocab: &Arc<Vocabulary>,
    grammar: &Grammar,
    eos: &[u32],
) -> anyhow::Result<Decode> {
    state.reset();
    let mut logits = model.forward(prompt, state, Logits::Last)?;
    let mut sampler = Sampler::new(SamplingParams::default());
    let fresh = || Guide::new(vocab.clone(), grammar);
    let mut guide = fresh()?;
    let mut d = Decode {
        seconds: 0.0,
        tokens: 0,
        forced: 0,
        grammar_s: Vec::with_capacity(gen),
    };
    while d.tokens < gen {
        if mode != Mode::Plain && guide.done()? {
            guide = fresh()?; // a new answer; not timed
        }
        let t = Instant::now();
        if mode == Mode::Plain {
            let id = sampler.sample_masked(&mut logits, &[], eos, None);
            logits = model.forward(&[id], state, Logits::Last)?;
            d.tokens += 1;
        } else {
            let g0 = Instant::now();
            let mut ff = if mode == Mode::FastForward {
                guide.forced()?
            } else {
                Vec::new()
            };
            if !ff.is_empty() {
                ff.truncate(gen - d.tokens);
                guide.consume(&ff, true)?;
                d.grammar_s.push(g0.elapsed().as_secs_f64());
                logits = model.forward(&ff, state, Logits::Last)?;
                d.tokens += ff.len();
                d.forced += ff.len();
            } else {
                let mask = guide.mask()?;
                let g1 = g0.elapsed().as_secs_f64();
                let id = sampler.sample_masked(&mut logits, &[], eos, Some(mask));
                let g2 = Instant::now();
                guide.consume(&[id], false)?;
                d.grammar_s.push(g1 + g2.elapsed().as_secs_f64());
                logits = model.forward(&[id], state, Logits::Last)?;
                d.tokens += 1;
            }
        }
        d.seconds += t.elapsed().as_secs_f64();
    }
    Ok(d)
}

/// The synthetic vocabulary's EOS (one of its special tokens).
const SYNTHETIC_EOS: u32 = 2;

/// A deterministic stand-in for a trained vocabulary of `n` tokens (module doc).
pub(super) fn synthetic_vocabulary(n: usize) -> Vec<Vec<u8>> {
    let mut words: Vec<Vec<u8>> = Vec::with_capacity(n);
    for i in 0..1000.min(n) {
        let mut b = vec![0xFF];
        b.extend_from_slice(format!("<SPECIAL_{i}>").as_bytes());
        words.push(b);
    }
    for b in 0..=255u8 {
        if words.len() < n {
            words.push(vec![b]);
        }
    }
    let mut seen: std::collections::HashSet<Vec<u8>> = words.iter().cloned().collect();
    let mut rng = nemo::model::synthetic::XorShift64::new(0x9E37_79B9_7F4A_7C15);
    let mut rnd = move |m: u64| rng.below(m);
    // Byte lengths 2..=16, weights peaking at 4-6 bytes.
    const LEN_WEIGHTS: [u64; 15] = [5, 12, 16, 16, 14, 11, 9, 6, 4, 3, 2, 1, 1, 1, 1];
    let total: u64 = LEN_WEIGHTS.iter().sum();
    const NON_ASCII: [&str; 12] = [
        "é", "è", "ü", "ö", "ñ", "ç", "д", "и", "я", "中", "的", "語",
    ];
    const PUNCT: &[u8] = b".,;:!?-()[]{}\"'/_=+*#<>";
    while words.len() < n {
        let mut r = rnd(total);
        let mut len = 2;
        for (i, w) in LEN_WEIGHTS.iter().enumerate() {
            if r < *w {
                len = i + 2;
                break;
            }
            r -= w;
        }
        let mut w = Vec::with_capacity(len);
        if rnd(3) == 0 {
            w.push(b' ');
        }
        match rnd(20) {
            0 => {
                while w.len() < len {
                    w.push(b'0' + rnd(10) as u8);
                }
            }
            1 => {
                while w.len() < len {
                    w.push(PUNCT[rnd(PUNCT.len() as u64) as usize]);
                }
            }
            2 | 3 => {
                while w.len() < len {
                    w.extend_from_slice(NON_ASCII[rnd(NON_ASCII.len() as u64) as usize].as_bytes());
                }
            }
            k => {
                let first = w.len();
                while w.len() < len {
                    w.push(b'a' + rnd(26) as u8);
                }
                if k < 6 {
                    w[first] = w[first].to_ascii_uppercase();
                }
            }
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_vocabulary_is_deterministic_distinct_and_realistic() {
        let a = synthetic_vocabulary(131_072);
        assert_eq!(a.len(), 131_072);
        assert_eq!(a, synthetic_vocabulary(131_072));
        let distinct: std::collections::HashSet<&Vec<u8>> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
        let mean = a[1256..].iter().map(Vec::len).sum::<usize>() as f64 / (a.len() - 1256) as f64;
        assert!((4.0..9.0).contains(&mean), "mean length {mean}");
        let valid = a[1256..]
            .iter()
            .filter(|w| std::str::from_utf8(w).is_ok())
            .count();
        assert!(valid > (a.len() - 1256) * 9 / 10, "{valid}");
        assert!(Vocabulary::from_token_bytes(a, &[SYNTHETIC_EOS]).is_ok());
    }
}
