//! Build script: with the `cuda` feature, compiles `kernels/*.cu` with nvcc into one
//! fatbin per file (SASS for every target arch + PTX for the lowest, so newer GPUs JIT it)
//! and embeds them through `$OUT_DIR/cuda_kernels.rs`. Without the feature it does nothing.
//!
//! Environment:
//! - `NEMO_CUDA_ARCHS`: comma-separated `sm_XY` list (default: every arch nemo ships for).
//! - `NVCC`, then `CUDA_HOME/bin/nvcc`, then `nvcc` on PATH, then a pip install
//!   (`nvidia/cu13/bin/nvcc` inside a site-packages of `python3`).
//! - `NEMO_REQUIRE_NVCC=1`: fail the build when nvcc is not found (CI); otherwise the
//!   binary is built without kernels and says so when `--device cuda` is asked for.
//!
//! `-Xptxas -v` (registers, spills, shared memory per kernel) goes to
//! `$OUT_DIR/ptxas.log`; its path is printed as a cargo warning.

use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &[&str] = &[
    "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120", "sm_121",
];

fn main() {
    // A build script fails by exiting non-zero; cargo shows what it printed on stderr.
    if let Err(e) = build() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    println!("cargo::rustc-check-cfg=cfg(nemo_cuda_kernels)");
    println!("cargo::rerun-if-changed=kernels");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    for v in [
        "NEMO_CUDA_ARCHS",
        "NVCC",
        "CUDA_HOME",
        "NEMO_REQUIRE_NVCC",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let rs = out.join("cuda_kernels.rs");
    let require = std::env::var("NEMO_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc() else {
        if require {
            return Err(
                "NEMO_REQUIRE_NVCC=1 but nvcc was not found (looked at $NVCC, $CUDA_HOME/bin/nvcc, \
                 PATH, and python3's site-packages for nvidia/cu13/bin/nvcc; \
                 `pip install nvidia-cuda-nvcc==13.0.*` provides one)"
                    .into(),
            );
        }
        println!(
            "cargo::warning=nvcc not found: building the cuda feature WITHOUT kernels \
             (set NVCC or CUDA_HOME; NEMO_REQUIRE_NVCC=1 makes this an error)"
        );
        std::fs::write(
            &rs,
            "pub const FATBINS: &[(&str, &[u8])] = &[];\npub const NVCC_VERSION: &str = \"\";\npub const ARCHS: &str = \"\";\n",
        )
        .map_err(|e| format!("write {}: {e}", rs.display()))?;
        return Ok(());
    };
    let archs = archs()?;
    let src_dir = Path::new("kernels");
    let mut cu: Vec<PathBuf> = std::fs::read_dir(src_dir)
        .map_err(|e| format!("{}: {e}", src_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    cu.sort();
    let lowest = archs
        .iter()
        .filter_map(|a| a.strip_prefix("sm_")?.parse::<u32>().ok())
        .min()
        .unwrap_or(80);
    let jobs = std::env::var("NUM_JOBS").unwrap_or_else(|_| "1".into());
    let log_path = out.join("ptxas.log");
    let mut log = String::new();
    let mut entries = String::new();
    let started = std::time::Instant::now();
    for file in &cu {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("{}: a kernel file name must be UTF-8", file.display()))?;
        let dst = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-fatbin")
            .args(["-O3", "-std=c++17"])
            .args(["-Xptxas", "-v"])
            .args(["--threads", &jobs])
            .arg("-I")
            .arg(src_dir);
        for a in &archs {
            let n = a.trim_start_matches("sm_");
            cmd.arg(format!("-gencode=arch=compute_{n},code={a}"));
        }
        cmd.arg(format!(
            "-gencode=arch=compute_{lowest},code=compute_{lowest}"
        ));
        cmd.arg("-o").arg(&dst).arg(file);
        let res = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
        log.push_str(&format!("==== {} ====\n", file.display()));
        log.push_str(&String::from_utf8_lossy(&res.stdout));
        log.push_str(&String::from_utf8_lossy(&res.stderr));
        if !res.status.success() {
            let _ = std::fs::write(&log_path, &log);
            return Err(format!(
                "nvcc failed on {}:\n{}",
                file.display(),
                String::from_utf8_lossy(&res.stderr)
            ));
        }
        entries.push_str(&format!(
            "    ({stem:?}, include_bytes!({:?})),\n",
            dst.display().to_string()
        ));
    }
    std::fs::write(&log_path, &log).map_err(|e| format!("write {}: {e}", log_path.display()))?;
    // "release 13.0" from `nvcc --version`: the oldest driver CUDA version these kernels
    // load on (a load error names it).
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let at = out.find("release ")? + "release ".len();
            Some(out[at..].split(',').next()?.trim().to_string())
        })
        .unwrap_or_default();
    std::fs::write(
        &rs,
        format!(
            "pub const FATBINS: &[(&str, &[u8])] = &[\n{entries}];\npub const NVCC_VERSION: &str = {version:?};\npub const ARCHS: &str = {:?};\n",
            archs.join(",")
        ),
    )
    .map_err(|e| format!("write {}: {e}", rs.display()))?;
    println!("cargo::rustc-cfg=nemo_cuda_kernels");
    println!(
        "cargo::warning=CUDA kernels built for {} in {:.0} s with {}; ptxas -v log: {}",
        archs.join(","),
        started.elapsed().as_secs_f64(),
        nvcc.display(),
        log_path.display()
    );
    Ok(())
}

fn archs() -> Result<Vec<String>, String> {
    match std::env::var("NEMO_CUDA_ARCHS") {
        Ok(s) if !s.trim().is_empty() => {
            let list: Vec<String> = s
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            for a in &list {
                let ok = a
                    .strip_prefix("sm_")
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()));
                if !ok {
                    return Err(format!(
                        "NEMO_CUDA_ARCHS: `{a}` is not of the form sm_XY (e.g. sm_90)"
                    ));
                }
            }
            Ok(list)
        }
        _ => Ok(DEFAULT_ARCHS.iter().map(|s| s.to_string()).collect()),
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        println!(
            "cargo::warning=NVCC={} is not a file; looking elsewhere",
            p.display()
        );
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = PathBuf::from(home).join("bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    // pip's nvidia-cuda-nvcc: <site-packages>/nvidia/cu13/bin/nvcc.
    let out = Command::new("python3")
        .args([
            "-c",
            "import site,sys; print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]))",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Path::new(l.trim()).join("nvidia/cu13/bin/nvcc"))
        .find(|p| p.is_file())
}
