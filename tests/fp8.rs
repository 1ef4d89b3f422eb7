//! FP8 checkpoints (ModelOpt and compressed-tensors layouts, made from the tiny fixtures by
//! `tests/fixtures/make_fp8_fixtures.py`): the logits against transformers run on the
//! dequantized weights, the weights staying FP8 bytes in memory, the FP8 matmul against a
//! plain f64 matmul of the dequantized weights at every SIMD level, and clear errors for
//! broken files.
//!
//! Tolerance: the same `FULL_TOL` as tests/parity.rs, and for the same reason. The reference
//! multiplies f32 activations by f32 weights `fp8 × scale`; nemo does the same products
//! (prefill: the tile holds exactly `fp8 × scale`; decode: `scale × Σ fp8·x`, one rounding
//! more per row, ~1e-7 relative), so what is left is f32 summation order.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use nemo::backend::cpu::fp8_matmul::{available_levels, matmul_fp8_at};
use nemo::backend::cpu::{matmul, MatRef, WeightScale};
use nemo::backend::{fp8, DType};
use nemo::model::weights::WeightStore;
use nemo::model::{Logits, ModelFolder};
use nemo::state::CacheConfig;
use safetensors::{Dtype, SafeTensors};

const FULL_TOL: f32 = 2e-4;

const FP8_MODELS: &[&str] = &[
    "nemotron_h_tiny_fp8",
    "nemotron_h_moe_fp8",
    "llama_tiny_fp8",
];

#[test]
fn fp8_fixtures_match_transformers_on_dequantized_weights_at_every_position() {
    f32_math();
    for model in FP8_MODELS {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        let vocab = reference.vocab();
        for p in reference.prompts() {
            let mut state = folder.model.new_state(CacheConfig::default());
            let got = folder
                .model
                .forward(&p.ids, &mut state, Logits::All)
                .unwrap();
            let mut worst = 0f32;
            for (pos, want) in p.logits.iter().enumerate() {
                let row = &got[pos * vocab..(pos + 1) * vocab];
                worst = worst.max(max_abs_diff(row, want));
                assert_eq!(
                    argmax(row),
                    argmax(want),
                    "{model}/{} position {pos}: top token differs",
                    p.name
                );
            }
            eprintln!("{model}/{}: max |Δlogit| {worst:.2e}", p.name);
            assert!(
                worst < FULL_TOL,
                "{model}/{}: max |Δlogit| = {worst}",
                p.name
            );
        }
    }
}

#[test]
fn fp8_prefill_then_decode_matches_the_reference_and_its_greedy_generation() {
    f32_math();
    for model in FP8_MODELS {
        let folder = ModelFolder::open(&fixture(model)).unwrap();
        let reference = Reference::load(model);
        let p = reference.prompt("long");
        for split in [1usize, 7, 20] {
            let worst = prefill_then_decode_worst(&folder.model, &p, split);
            assert!(
                worst < FULL_TOL,
                "{model} split {split}: max |Δlogit| = {worst}"
            );
        }
        // Cached greedy decode after the whole prompt, against transformers' own.
        let d = greedy_generation_worst(model, &folder.model, &reference);
        assert!(d < FULL_TOL, "{model}: max |Δlogit| over the steps = {d}");
    }
}

/// The tensors of a safetensors file as the file stores them (read here with the
/// safetensors crate, independently of nemo's loader): name → (dtype, shape, bytes).
fn file_tensors(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn fp8_weights_stay_fp8_bytes_in_memory_with_their_scale_attached() {
    f32_math();
    for model in FP8_MODELS {
        let dir = fixture(model);
        let file = file_tensors(&dir.join("model.safetensors"));
        let store = WeightStore::open_dir(&dir).unwrap();
        let mut fp8_bytes = 0;
        for (name, (dtype, shape, bytes)) in &file {
            if *dtype != Dtype::F8_E4M3 {
                continue;
            }
            let t = store.get(name, shape).unwrap();
            assert_eq!(t.dtype, DType::F8E4M3, "{model}: {name}");
            let numel: usize = shape.iter().product();
            assert_eq!(
                t.data().len(),
                numel,
                "{model}: {name} is one byte per weight"
            );
            assert_eq!(
                t.data(),
                &bytes[..],
                "{model}: {name} holds the file's bytes"
            );
            let stem = name.strip_suffix(".weight").unwrap();
            let (sd, sshape, sbytes) = &file[&format!("{stem}.weight_scale")];
            assert_eq!(*sd, Dtype::F32);
            let want = f32s(sbytes);
            match t.scale() {
                WeightScale::Tensor(s) => {
                    assert_eq!(want, vec![s], "{model}: {name} per-tensor scale {sshape:?}")
                }
                WeightScale::Rows(s) => {
                    assert_eq!(want, s, "{model}: {name} per-row scale {sshape:?}");
                    assert_eq!(s.len(), shape[0]);
                }
                WeightScale::None => panic!("{model}: {name} has no scale"),
            }
            fp8_bytes += numel;
        }
        assert!(fp8_bytes > 0, "{model} has FP8 weights");
        // Nothing was widened: the loaded model holds exactly the file's tensor bytes, and
        // most of them are FP8.
        let folder = ModelFolder::open(&dir).unwrap();
        let file_bytes: usize = file.values().map(|(_, _, b)| b.len()).sum();
        assert_eq!(folder.model.weight_bytes(), file_bytes, "{model}");
        eprintln!(
            "{model}: {fp8_bytes} FP8 weight bytes of {file_bytes}, main dtype {}",
            folder.model.weight_dtype()
        );
    }
}

// ---- the FP8 matmul itself ----

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = i
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                >> 7;
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// fp8 bytes of `w` `[m, k]` (per-row amax / 448 scales, like the checkpoints), and the
/// scales.
fn quantize(dtype: DType, w: &[f32], m: usize, k: usize, per_row: bool) -> (Vec<u8>, Vec<f32>) {
    let max = fp8::max_finite(dtype);
    let amax = |rows: &[f32]| rows.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scales: Vec<f32> = if per_row {
        w.chunks(k).map(|r| amax(r) / max).collect()
    } else {
        vec![amax(w) / max]
    };
    let bytes = (0..m * k)
        .map(|i| {
            let s = scales[if per_row { i / k } else { 0 }];
            fp8::encode(dtype, w[i] / s)
        })
        .collect();
    (bytes, scales)
}

#[test]
fn fp8_matmul_matches_a_plain_matmul_of_the_dequantized_weights_at_every_simd_level() {
    f32_math();
    let levels = available_levels();
    eprintln!("SIMD levels tested: {levels:?}");
    for dtype in [DType::F8E4M3, DType::F8E5M2] {
        for &(n, m, k) in &[
            (1, 1, 1),
            (1, 37, 19),
            (3, 5, 33),
            (7, 70, 48),
            (1, 300, 64),
            (9, 130, 17),
            (1, 45, 1000),
            (4, 23, 129),
        ] {
            for per_row in [false, true] {
                let w = data(m * k, (n + m + k) as u32);
                let x = data(n * k, 7);
                let (bytes, scales) = quantize(dtype, &w, m, k, per_row);
                // The reference: f64 sums over the dequantized weights `fp8 × scale`.
                let deq = |i: usize| {
                    let s = scales[if per_row { i / k } else { 0 }];
                    fp8::decode(dtype, bytes[i]) as f64 * s as f64
                };
                let mut want = vec![0f64; n * m];
                let mut bound = vec![0f64; n * m];
                for t in 0..n {
                    for r in 0..m {
                        for j in 0..k {
                            let p = deq(r * k + j) * x[t * k + j] as f64;
                            want[t * m + r] += p;
                            bound[t * m + r] += p.abs();
                        }
                    }
                }
                let scale = if per_row {
                    WeightScale::Rows(&scales)
                } else {
                    WeightScale::Tensor(scales[0])
                };
                let mat = MatRef {
                    dtype,
                    data: &bytes,
                    rows: m,
                    cols: k,
                    scale,
                    interleaved: None,
                };
                // Any order of k f32 products and sums, and one scale multiply, is within
                // (k + 2)·u·Σ|w·x| of the exact sum (u = 2^-24); a wrong scale or a wrongly
                // decoded byte is off by far more.
                let tol = |i: usize| (k as f64 + 2.0) * 2f64.powi(-24) * bound[i];
                let check = |got: &[f32], what: &str| {
                    for (i, g) in got.iter().enumerate() {
                        assert!(
                            (*g as f64 - want[i]).abs() <= tol(i),
                            "{dtype} {what} n={n} m={m} k={k} per_row={per_row} out[{i}]: {g} vs {}",
                            want[i]
                        );
                    }
                };
                for &level in &levels {
                    let mut out = vec![f32::NAN; n * m];
                    matmul_fp8_at(level, &x, n, mat, &mut out);
                    check(&out, &format!("{level:?}"));
                }
                // The public entry point dispatches FP8 here too.
                let mut out = vec![f32::NAN; n * m];
                matmul(&x, n, mat, &mut out);
                check(&out, "matmul()");
                // A slice of rows keeps its rows' scales (split projections).
                if m > 3 {
                    let (start, count) = (1, m - 2);
                    let part = mat.slice_rows(start, count);
                    let mut out = vec![f32::NAN; n * count];
                    matmul(&x, n, part, &mut out);
                    for t in 0..n {
                        for r in 0..count {
                            let (g, i) = (out[t * count + r], t * m + start + r);
                            assert!(
                                (g as f64 - want[i]).abs() <= tol(i),
                                "{dtype} slice n={n} m={m} k={k} per_row={per_row}"
                            );
                        }
                    }
                }
            }
        }
    }
}

// ---- broken files ----

/// A copy of fixture `model` in a temporary folder, with `edit` applied to its tensors
/// (name → (dtype, shape, bytes)) and `config` to its config.json.
fn broken_copy(
    model: &str,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
    config: impl FnOnce(&mut serde_json::Value),
) -> (tempfile::TempDir, PathBuf) {
    let src = fixture(model);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(model);
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut tensors = file_tensors(&src.join("model.safetensors"));
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(
        &nemo::model::config::python_json_to_strict(&std::fs::read_to_string(&cfg_path).unwrap()),
    )
    .unwrap();
    config(&mut cfg);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    (tmp, dir)
}

fn open_error(dir: &Path) -> String {
    match ModelFolder::open(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("error: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
    }
}

const SCALE: &str = "backbone.layers.0.mixer.in_proj.weight_scale";

#[test]
fn a_missing_weight_scale_is_named_with_its_file() {
    f32_math();
    let (_tmp, dir) = broken_copy(
        "nemotron_h_tiny_fp8",
        |t| {
            t.remove(SCALE);
        },
        |_| {},
    );
    let e = open_error(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.contains(SCALE) && e.contains("missing"), "{e}");
}

#[test]
fn a_weight_scale_of_the_wrong_shape_is_named_with_its_file() {
    f32_math();
    let (_tmp, dir) = broken_copy(
        "nemotron_h_tiny_fp8",
        |t| {
            t.insert(SCALE.into(), (Dtype::F32, vec![3], vec![0; 12]));
        },
        |_| {},
    );
    let e = open_error(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.contains(SCALE) && e.contains("[3]"), "{e}");
    // A per-row scale with the wrong row count is refused too (llama: [out, 1] scales).
    let name = "model.layers.0.self_attn.q_proj.weight_scale";
    let (_tmp, dir) = broken_copy(
        "llama_tiny_fp8",
        |t| {
            t.insert(name.into(), (Dtype::F32, vec![63, 1], vec![0; 63 * 4]));
        },
        |_| {},
    );
    let e = open_error(&dir);
    assert!(e.contains(name) && e.contains("[63, 1]"), "{e}");
}

#[test]
fn an_unknown_quantization_algorithm_is_refused_naming_the_field() {
    f32_math();
    let (_tmp, dir) = broken_copy(
        "nemotron_h_moe_fp8",
        |_| {},
        |c| c["quantization_config"]["quant_algo"] = "NVFP4".into(),
    );
    let e = open_error(&dir);
    assert!(e.contains("config.json"), "{e}");
    assert!(
        e.contains("quantization_config.quant_algo") && e.contains("NVFP4"),
        "{e}"
    );

    let (_tmp, dir) = broken_copy(
        "llama_tiny_fp8",
        |_| {},
        |c| c["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4.into(),
    );
    let e = open_error(&dir);
    assert!(
        e.contains("config.json")
            && e.contains("quantization_config.config_groups.group_0.weights"),
        "{e}"
    );

    let (_tmp, dir) = broken_copy(
        "llama_tiny_fp8",
        |_| {},
        |c| c["quantization_config"]["quant_method"] = "gptq".into(),
    );
    let e = open_error(&dir);
    assert!(
        e.contains("quantization_config.quant_method") && e.contains("gptq"),
        "{e}"
    );
}
