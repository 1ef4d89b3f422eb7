//! The CUDA kernels (kernels/*.cu), run on the CPU: each driver in kernels/sim/ is compiled
//! with the system C++ compiler against the CUDA simulation kernels/sim/sim.h (one fiber
//! per CUDA thread, the PTX fragment layouts as the PTX ISA documents them) and checks the
//! real kernel file against a double-precision reference written in the driver. Needs no
//! GPU, no nvcc and no `cuda` feature; a machine without a C++20 compiler prints `SKIP`
//! (a failure under NEMO_REQUIRE_KERNEL_SIM=1, which .ci/run sets).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// Compiles kernels/sim/<driver>.cpp (which includes the kernel file) and runs it; panics
/// with the driver's output unless it exits 0.
fn run_driver(driver: &str) {
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
    let run = Command::new(&bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let _ = std::fs::remove_file(&bin);
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

#[test]
fn tensor_core_chunked_scan_and_decode_update_match_the_mamba2_recurrence() {
    run_driver("ssm");
}

#[test]
fn kv_append_split_decode_and_fallback_prefill_match_references_for_every_cache_dtype() {
    run_driver("attention");
}

#[test]
fn moe_router_route_grouped_gemvs_and_combine_match_references_with_ids_in_device_memory() {
    run_driver("moe");
}

#[test]
fn device_sampling_keeps_the_cpu_sampler_set_through_ties_bans_top_k_top_p_and_min_p() {
    run_driver("sampling");
}

#[test]
fn mamba2_conv1d_window_and_rms_norms_match_references() {
    run_driver("mixer_ops");
}
