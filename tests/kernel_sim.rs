//! The CUDA kernels (kernels/*.cu), run on the CPU: each driver in kernels/sim/ is compiled
//! with the system C++ compiler against the CUDA simulation kernels/sim/sim.h (one fiber
//! per CUDA thread, the PTX fragment layouts as the PTX ISA documents them) and checks the
//! real kernel file against a double-precision reference written in the driver. Needs no
//! GPU, no nvcc and no `cuda` feature; a machine without a C++20 compiler prints `SKIP`
//! (a failure under NEMO_REQUIRE_KERNEL_SIM=1, which .ci/run sets).
//!
//! The kernels whose CPU twins are ops of their own (`backend::cpu::ssm`: the conv and both
//! scans; `backend::cpu::moe::route`) are also checked against those ops: the test makes
//! inputs, runs the ops, and writes both to a cases file the driver reads (its first
//! argument; `Cases` here, `check::Cases` there). The router's only oracle is the op; the
//! conv and the scans keep their double references (exact, and what the bounds are
//! relative to), which check the ops on the same cases.

// Tests may unwrap: a failed unwrap fails the test. (clippy.toml's allow-unwrap-in-tests
// covers #[test] functions; this covers the helpers beside them, in every test crate.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nemo::model::synthetic::XorShift64;

fn require() -> bool {
    std::env::var("NEMO_REQUIRE_KERNEL_SIM").is_ok_and(|v| v == "1")
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-sim");
    std::fs::create_dir_all(&dir).expect("create the kernel-sim output folder");
    dir
}

fn cxx() -> String {
    std::env::var("CXX")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "c++".into())
}

/// The compiler when it builds C++20 with <ucontext.h> (the simulation's fibers), else why not.
fn compiler() -> &'static Result<String, String> {
    static PROBE: OnceLock<Result<String, String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let cxx = cxx();
        let dir = out_dir();
        // Per process: `cargo test` runs with and without features may share this folder.
        let src = dir.join(format!("probe-{}.cpp", std::process::id()));
        let bin = dir.join(format!("probe-{}", std::process::id()));
        std::fs::write(
            &src,
            "#include <ucontext.h>\n#include <span>\ntemplate <typename T> concept Small = \
             sizeof(T) <= 8;\nint main() { ucontext_t c; int a[2] = {0, 1}; std::span<int> s(a); \
             return getcontext(&c) != 0 || !Small<double> || s[1] != 1; }\n",
        )
        .map_err(|e| format!("write {}: {e}", src.display()))?;
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .map_err(|e| format!("cannot run `{cxx}`: {e}"))?;
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&bin);
        if out.status.success() {
            Ok(cxx)
        } else {
            Err(format!(
                "`{cxx}` does not build C++20 with <ucontext.h>: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ))
        }
    })
}

/// Little-endian 4-byte words for a driver's cases file (kernels/sim/check.h `Cases`): a
/// count of cases, then each case's shapes, inputs, and the CPU op's answers.
#[derive(Default)]
struct Cases {
    count: usize,
    words: Vec<u8>,
}

impl Cases {
    fn case(&mut self) -> &mut Self {
        self.count += 1;
        self
    }
    fn int(&mut self, v: usize) -> &mut Self {
        let v = i32::try_from(v).expect("a shape that fits an i32");
        self.words.extend(v.to_le_bytes());
        self
    }
    fn float(&mut self, v: f32) -> &mut Self {
        self.words.extend(v.to_le_bytes());
        self
    }
    fn floats(&mut self, v: &[f32]) -> &mut Self {
        v.iter().for_each(|x| self.words.extend(x.to_le_bytes()));
        self
    }
    fn ids(&mut self, v: &[u32]) -> &mut Self {
        v.iter().for_each(|x| self.words.extend(x.to_le_bytes()));
        self
    }
    /// Writes the file for `driver` (per process: runs with and without features may share
    /// the folder).
    fn write(&self, driver: &str) -> PathBuf {
        let path = out_dir().join(format!("{driver}-cases-{}.bin", std::process::id()));
        let mut bytes = (self.count as i32).to_le_bytes().to_vec();
        bytes.extend(&self.words);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

/// Reproducible inputs, uniform in [-a, a).
struct Rng(XorShift64);

impl Rng {
    fn f(&mut self, a: f32) -> f32 {
        ((self.0.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(a)).collect()
    }
}

/// Compiles kernels/sim/<driver>.cpp (which includes the kernel file) and runs it; panics
/// with the driver's output unless it exits 0.
fn run_driver(driver: &str) {
    run_driver_with(driver, None)
}

/// `run_driver` with the cases file `cases` (the driver's first argument), written first.
fn run_driver_with(driver: &str, cases: Option<&Cases>) {
    let cxx = match compiler() {
        Ok(c) => c,
        Err(why) => {
            if require() {
                panic!("NEMO_REQUIRE_KERNEL_SIM=1 but {why}");
            }
            common::skip::skip(&format!("kernel_sim {driver}: {why}"));
            return;
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("kernels/sim").join(format!("{driver}.cpp"));
    let bin = out_dir().join(format!("{driver}-{}", std::process::id()));
    let out = Command::new(cxx)
        .args([
            "-std=c++20",
            "-O1",
            "-fno-strict-aliasing",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-DNEMO_KERNEL_SIM",
            "-include",
        ])
        .arg(root.join("kernels/sim/sim.h"))
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cxx}`: {e}"));
    assert!(
        out.status.success(),
        "{} does not compile:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let file = cases.map(|c| c.write(driver));
    let run = Command::new(&bin)
        .args(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let _ = std::fs::remove_file(&bin);
    if let Some(f) = &file {
        let _ = std::fs::remove_file(f);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{text}");
    assert!(
        run.status.success(),
        "{driver}: the simulated kernels disagree with the reference ({}):\n{text}",
        run.status
    );
}

#[test]
fn flash_prefill_attention_matches_double_reference_for_every_cache_dtype() {
    run_driver("flash_attention");
}

/// The scans' cases: prompts through `ssd_chunked` (several op chunk lengths, one of them
/// a single token) and decode steps through `ssm_step`, f32 state.
fn scan_cases() -> Cases {
    use nemo::backend::cpu::ssm::{ssd_chunked, ssm_step, ScanShape};
    let mut r = Rng(XorShift64::new(0x5ca9));
    let mut cases = Cases::default();
    // (heads, head_dim, d_state, groups, tokens, op chunk, decode)
    let shapes = [
        (2, 64, 128, 1, 100, 128, false),
        (2, 80, 128, 2, 70, 32, false),
        (1, 64, 256, 1, 20, 256, false),
        (3, 16, 40, 3, 33, 8, false),
        (2, 80, 128, 1, 1, 128, false),
        (1, 64, 128, 1, 600, 256, false),
        (4, 80, 128, 2, 1, 1, true),
        (3, 16, 40, 3, 1, 1, true),
    ];
    for (heads, head_dim, d_state, n_groups, n, chunk, decode) in shapes {
        let sh = ScanShape {
            heads,
            head_dim,
            d_state,
            n_groups,
        };
        let dts = heads + 3;
        let dt_min = 1e-3f32;
        let xbc = r.vec(n * sh.conv_dim(), 1.0);
        let dt = r.vec(n * dts, 3.0);
        let bias = r.vec(heads, 1.0);
        let a: Vec<f32> = r.vec(heads, 1.0).iter().map(|v| -(v + 1.0).exp()).collect();
        let d = r.vec(heads, 1.0);
        let state0 = r.vec(heads * sh.head_state(), 0.5);
        let mut state = state0.clone();
        let mut y = vec![0f32; n * sh.d_inner()];
        if decode {
            ssm_step(&sh, &xbc, &dt, 0, &bias, &a, &d, &mut state, &mut y);
        } else {
            ssd_chunked(
                &sh, n, chunk, &xbc, &dt, 0, dts, &bias, &a, &d, dt_min, &mut state, &mut y,
            );
        }
        cases
            .case()
            .int(heads)
            .int(head_dim)
            .int(d_state)
            .int(n_groups)
            .int(n)
            .int(chunk)
            .int(decode as usize)
            .int(dts)
            .float(dt_min)
            .floats(&xbc)
            .floats(&dt)
            .floats(&bias)
            .floats(&a)
            .floats(&d)
            .floats(&state0)
            .floats(&y)
            .floats(&state);
    }
    cases
}

#[test]
fn tensor_core_chunked_scan_and_decode_update_match_the_mamba2_recurrence_and_the_cpu_ops() {
    run_driver_with("ssm", Some(&scan_cases()));
}

#[test]
fn kv_append_split_decode_and_fallback_prefill_match_references_for_every_cache_dtype() {
    run_driver("attention");
}

/// The router's cases through `backend::cpu::moe::route`: grouped and ungrouped, random
/// logits and tied ones (equal logits, equal group scores: ties go to the lower index).
fn route_cases() -> Cases {
    use nemo::backend::cpu::moe::{route, Routing};
    let mut r = Rng(XorShift64::new(0x40e));
    let mut cases = Cases::default();
    // (tokens, experts, groups, kept groups, top_k, normalised, scale, tied)
    let configs = [
        (3, 64, 8, 4, 6, true, 2.5, false),
        (2, 64, 8, 4, 6, true, 2.5, true),
        (1, 72, 1, 1, 8, false, 1.0, false),
        (2, 512, 4, 2, 22, true, 1.5, false),
        (4, 128, 1, 1, 6, true, 2.5, true),
    ];
    for (n, e, n_group, topk_group, top_k, norm, scale, tied) in configs {
        let rt = Routing {
            n_routed_experts: e,
            n_group,
            topk_group,
            top_k,
            norm_topk_prob: norm,
            routed_scaling_factor: scale,
        };
        let (logits, bias) = if tied {
            let l = (0..n * e)
                .map(|i| ((i % e * 7 + i / e) % 5) as f32 * 0.5)
                .collect();
            (l, vec![0f32; e])
        } else {
            (r.vec(n * e, 2.0), r.vec(e, 0.05))
        };
        let (mut ids, mut w) = (vec![0u32; n * top_k], vec![0f32; n * top_k]);
        route(&rt, &logits, &bias, &mut ids, &mut w, n);
        cases
            .case()
            .int(n)
            .int(e)
            .int(n_group)
            .int(topk_group)
            .int(top_k)
            .int(norm as usize)
            .float(scale)
            .floats(&logits)
            .floats(&bias)
            .ids(&ids)
            .floats(&w);
    }
    cases
}

#[test]
fn moe_router_route_grouped_gemvs_and_combine_match_references_with_ids_in_device_memory() {
    run_driver_with("moe", Some(&route_cases()));
}

#[test]
fn device_sampling_keeps_the_cpu_sampler_set_through_ties_bans_top_k_top_p_and_min_p() {
    run_driver("sampling");
}

/// The conv's cases through `backend::cpu::ssm::causal_conv1d`: strided prompt rows (more
/// and fewer than the window), and single decode rows.
fn conv_cases() -> Cases {
    use nemo::backend::cpu::ssm::causal_conv1d;
    let mut r = Rng(XorShift64::new(0xc0417));
    let mut cases = Cases::default();
    // (channels, taps, rows, offset, extra stride, decode)
    let shapes = [
        (300, 4, 5, 3, 7, false),
        (40, 4, 2, 0, 11, false),
        (33, 2, 1, 1, 0, false),
        (33, 2, 1, 5, 0, true),
        (96, 4, 1, 0, 0, true),
    ];
    for (cd, k, n, offset, extra, decode) in shapes {
        let stride = cd + extra;
        let x = r.vec(offset + (n - 1) * stride + cd, 1.0);
        let state0 = r.vec((k - 1) * cd, 1.0);
        let (w, b) = (r.vec(cd * k, 0.5), r.vec(cd, 0.2));
        let mut state = state0.clone();
        let mut out = vec![0f32; n * cd];
        causal_conv1d(&x, offset, stride, n, &mut state, &w, &b, &mut out, cd, k);
        cases
            .case()
            .int(cd)
            .int(k)
            .int(n)
            .int(offset)
            .int(stride)
            .int(decode as usize)
            .floats(&x)
            .floats(&state0)
            .floats(&w)
            .floats(&b)
            .floats(&out)
            .floats(&state);
    }
    cases
}

#[test]
fn mamba2_conv1d_window_and_rms_norms_match_references_and_the_cpu_conv() {
    run_driver_with("mixer_ops", Some(&conv_cases()));
}
