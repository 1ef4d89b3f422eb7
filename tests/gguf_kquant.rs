//! K-quant GGUF files made by llama.cpp's own quantizer (Q4_K_M: Q4_K + Q6_K; Q5_K_M:
//! Q5_K + Q6_K), the types the hub's default GGUF (Q4_K_M) is made of, against llama.cpp's
//! logits on the same files (tests/fixtures/make_kquant_fixtures.sh; README there).
//!
//! What the script stores besides llama.cpp's logits, per file and prompt (every position):
//! - `exact`: an f64 forward of the weights as gguf-py (llama.cpp's numpy reference)
//!   dequantizes them, with llama.cpp's conventions (rope on adjacent pairs, GQA).
//! - `q8_k`: the same forward with every K-quant matmul's activations rounded to 8 bits as
//!   llama.cpp's CPU backend rounds them (`quantize_row_q8_K_ref`: blocks of 256, the value
//!   of largest magnitude at −127, half to even). llama.cpp's logits equal it to ≤ 3e-6
//!   (asserted by the script): this is llama.cpp's arithmetic, modelled exactly.
//! - `nemo`: the forward nemo computes: every row (prefill and decode alike) rounded in
//!   blocks of 32 (d = max|x|/127, half away from zero) before each matmul whose matrix has
//!   an integer dot (Q4_K, Q5_K, Q6_K: all of them here).
//!
//! Bounds. nemo computes `nemo` in f32: the weights' scales rounded to f32 and sums in
//! another order, ~1e-6 relative per op, so `TOL` = 2e-4 on logits of magnitude ≤ 11, the
//! reference tolerance of tests/parity.rs. But nemo's f32 activations sit a few ulps from
//! the f64 model's, and the rare one that close to a rounding boundary rounds to the
//! neighbouring 8-bit value; such a decision, made early, moves every later position. So
//! nemo is held to the envelope of that rounding: the script samples it (`nemo_envelope`:
//! the largest |logit − exact| over 16 forwards whose activations were each perturbed by
//! 2^-21 relative before rounding), and `|nemo − exact| ≤ TOL + envelope`, for the prompt
//! as one batch and fed token by token. Against llama.cpp the difference is then, by the
//! triangle inequality, at most `TOL + envelope + |exact − q8_k| + |q8_k − llama.cpp|`
//! per position (maxima over the vocabulary): llama.cpp's own activation rounding
//! (0.14–0.18 here) plus its f32 arithmetic.

mod common;

use nemo::backend::DType;
use nemo::model::{Logits, ModelFolder};
use nemo::state::CacheConfig;
use serde_json::Value;

const TOL: f32 = 2e-4;

struct Reference {
    json: Value,
    bin: Vec<u8>,
}

impl Reference {
    fn load() -> Reference {
        let dir = common::fixture("gguf");
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("llama_kq.reference.json")).unwrap(),
        )
        .unwrap();
        let bin = std::fs::read(dir.join(json["logits_file"].as_str().unwrap())).unwrap();
        Reference { json, bin }
    }

    /// `[positions][vocab]`
    fn matrix(&self, spec: &Value) -> Vec<Vec<f32>> {
        let off = spec["byte_offset"].as_u64().unwrap() as usize;
        let (rows, cols) = (
            spec["shape"][0].as_u64().unwrap() as usize,
            spec["shape"][1].as_u64().unwrap() as usize,
        );
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| {
                        let i = off + 4 * (r * cols + c);
                        f32::from_le_bytes(self.bin[i..i + 4].try_into().unwrap())
                    })
                    .collect()
            })
            .collect()
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The files hold the K-quant types the script recorded, as nemo reads them.
#[test]
fn the_files_are_llama_cpps_q4_k_m_and_q5_k_m_mixes() {
    let r = Reference::load();
    let files = r.json["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for f in files {
        let name = f["file"].as_str().unwrap();
        let g = nemo::model::gguf::GgufFile::open(&common::fixture("gguf").join(name)).unwrap();
        let mut kinds = std::collections::HashSet::new();
        for t in &g.tensors {
            let want = f["tensor_types"][&t.name].as_str().unwrap();
            assert_eq!(t.dtype.name(), want.to_lowercase(), "{name}: {}", t.name);
            kinds.insert(t.dtype);
        }
        let main = if name.contains("q4_k_m") {
            DType::Q4_K
        } else {
            DType::Q5_K
        };
        assert_eq!(
            kinds,
            [DType::F32, main, DType::Q6_K].into_iter().collect(),
            "{name}"
        );
    }
}

#[test]
fn prefill_logits_match_llama_cpp_within_both_activation_roundings() {
    let r = Reference::load();
    for f in r.json["files"].as_array().unwrap() {
        let name = f["file"].as_str().unwrap();
        let folder = ModelFolder::open(&common::fixture("gguf").join(name)).unwrap();
        for p in f["prompts"].as_array().unwrap() {
            let label = format!("{name} {}", p["name"].as_str().unwrap());
            let ids: Vec<u32> = p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut state = folder.model.new_state(CacheConfig::default());
            let got = folder.model.forward(&ids, &mut state, Logits::All).unwrap();
            let vocab = got.len() / ids.len();
            let exact = r.matrix(&p["logits"]["exact"]);
            let llama = r.matrix(&p["logits"]["llama_cpp"]);
            let envelope = p["nemo_envelope"].as_f64().unwrap() as f32;
            let rounding = floats(&p["max_abs_per_position"]["exact_vs_q8_k"]);
            let model = floats(&p["max_abs_per_position"]["llama_cpp_vs_q8_k"]);
            for pos in 0..ids.len() {
                let row = &got[pos * vocab..(pos + 1) * vocab];
                let d = max_abs_diff(row, &exact[pos]);
                assert!(
                    d <= TOL + envelope,
                    "{label} position {pos}: |nemo − exact| {d} > {TOL} + {envelope}"
                );
                let bound = TOL + envelope + rounding[pos] + model[pos];
                let d = max_abs_diff(row, &llama[pos]);
                assert!(
                    d <= bound,
                    "{label} position {pos}: |nemo − llama.cpp| {d} > {bound}"
                );
            }
        }
    }
}

#[test]
fn decode_logits_match_llama_cpp_within_both_activation_roundings() {
    let r = Reference::load();
    for f in r.json["files"].as_array().unwrap() {
        let name = f["file"].as_str().unwrap();
        let folder = ModelFolder::open(&common::fixture("gguf").join(name)).unwrap();
        for p in f["prompts"].as_array().unwrap() {
            let label = format!("{name} {}", p["name"].as_str().unwrap());
            let ids: Vec<u32> = p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let split = p["decode_split"].as_u64().unwrap() as usize;
            let exact = r.matrix(&p["logits"]["exact"]);
            let llama = r.matrix(&p["logits"]["llama_cpp_decode"]);
            let envelope = p["nemo_envelope"].as_f64().unwrap() as f32;
            let theirs = floats(&p["max_abs_per_position"]["exact_vs_q8_k"]);
            let model = floats(&p["max_abs_per_position"]["llama_cpp_vs_q8_k"]);
            let mut state = folder.model.new_state(CacheConfig::default());
            folder
                .model
                .forward(&ids[..split], &mut state, Logits::None)
                .unwrap();
            for pos in split..ids.len() {
                let row = folder
                    .model
                    .forward(&ids[pos..pos + 1], &mut state, Logits::Last)
                    .unwrap();
                let ours = max_abs_diff(&row, &exact[pos]);
                assert!(
                    ours <= TOL + envelope,
                    "{label} position {pos}: nemo's decode is {ours} from the exact logits, \
                     more than its 8-bit activations can move them ({TOL} + {envelope})"
                );
                let bound = TOL + envelope + theirs[pos] + model[pos];
                let d = max_abs_diff(&row, &llama[pos]);
                assert!(
                    d <= bound,
                    "{label} position {pos}: |nemo − llama.cpp| {d} > {bound}"
                );
            }
        }
    }
}
