//! The model `nemo chat` / `nemo run` use when none is named: the best one that fits the
//! machine. [`pick`] is pure (memory figures and what is cached in, a choice and a reason
//! out); [`Machine::probe`] reads the figures (`nvidia-smi`, `/proc/meminfo`).
//!
//! Rules, first that fits wins:
//! - a GPU with 24 GB or more: Nemotron Nano 9B v2 in bf16 (17.8 GB of weights);
//! - a GPU with 12 GB or more: Llama-3.1-Nemotron-Nano 4B in bf16 (9 GB);
//! - no such GPU, 8 GB of RAM or more (or a smaller GPU): Llama-3.1-Nemotron-Nano 8B as a
//!   Q4_K_M GGUF (4.9 GB), which the CPU reads fastest;
//! - otherwise SmolLM2-135M (0.27 GB), the only one here that fits comfortably.

use super::aliases::{self, Alias};

const GB: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// The largest GPU's memory, bytes.
    pub gpu_memory: Option<u64>,
    /// Total RAM, bytes.
    pub ram: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Pick {
    pub alias: &'static Alias,
    /// Why, in one line.
    pub reason: String,
    /// Already in the cache: use it without asking.
    pub cached: bool,
}

fn alias(name: &str) -> &'static Alias {
    match aliases::find(name) {
        Some(a) => a,
        // The names below are in the table; a test keeps them there.
        None => &aliases::ALIASES[0],
    }
}

fn gb(bytes: u64) -> String {
    format!("{:.0} GB", bytes as f64 / GB as f64)
}

pub fn pick(m: &Machine, is_cached: &dyn Fn(&Alias) -> bool) -> Pick {
    let (name, reason) = match (m.gpu_memory, m.ram) {
        (Some(g), _) if g >= 24 * GB => (
            "nano-9b-v2",
            format!("a GPU with {} fits Nemotron Nano 9B v2 in bf16", gb(g)),
        ),
        (Some(g), _) if g >= 12 * GB => (
            "llama-nemotron-nano-4b",
            format!(
                "a GPU with {} fits Llama-3.1-Nemotron-Nano 4B in bf16 (Nano 9B v2 needs 24 GB)",
                gb(g)
            ),
        ),
        (g, Some(r)) if r >= 8 * GB => (
            "llama-nemotron-nano-8b-gguf",
            match g {
                Some(g) => format!(
                    "a GPU with {} is too small for bf16 weights; {} of RAM fits Llama-3.1-Nemotron-Nano 8B quantized to 4 bits",
                    gb(g),
                    gb(r)
                ),
                None => format!(
                    "no NVIDIA GPU found; {} of RAM fits Llama-3.1-Nemotron-Nano 8B quantized to 4 bits, the fastest to run on a CPU",
                    gb(r)
                ),
            },
        ),
        (_, r) => (
            "smollm2-135m",
            format!(
                "{} of RAM is too little for a Nemotron; SmolLM2-135M is small enough",
                r.map(gb).unwrap_or_else(|| "an unknown amount".into())
            ),
        ),
    };
    let a = alias(name);
    Pick {
        alias: a,
        reason,
        cached: is_cached(a),
    }
}

impl Machine {
    pub fn probe() -> Machine {
        Machine {
            gpu_memory: gpu_memory(),
            ram: ram(),
        }
    }
}

/// `nvidia-smi --query-gpu=memory.total` (MiB per GPU): the largest, in bytes.
fn gpu_memory() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_nvidia_smi(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .map(|mib| mib * 1024 * 1024)
}

fn ram() -> Option<u64> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick_for(gpu_gb: Option<u64>, ram_gb: Option<u64>) -> Pick {
        let m = Machine {
            gpu_memory: gpu_gb.map(|g| g * GB),
            ram: ram_gb.map(|r| r * GB),
        };
        pick(&m, &|_| false)
    }

    #[test]
    fn picks_by_memory() {
        let cases = [
            (Some(80), Some(512), "nano-9b-v2"),
            (Some(24), Some(32), "nano-9b-v2"),
            (Some(16), Some(32), "llama-nemotron-nano-4b"),
            (Some(12), None, "llama-nemotron-nano-4b"),
            (Some(8), Some(32), "llama-nemotron-nano-8b-gguf"),
            (None, Some(64), "llama-nemotron-nano-8b-gguf"),
            (None, Some(8), "llama-nemotron-nano-8b-gguf"),
            (None, Some(4), "smollm2-135m"),
            (None, None, "smollm2-135m"),
        ];
        for (g, r, want) in cases {
            let p = pick_for(g, r);
            assert_eq!(p.alias.name, want, "gpu {g:?} GB, ram {r:?} GB");
            assert!(!p.reason.is_empty());
            assert!(aliases::find(want).is_some());
        }
        assert!(pick_for(None, Some(64)).reason.contains("no NVIDIA GPU"));
    }

    #[test]
    fn a_cached_pick_says_so() {
        let m = Machine {
            gpu_memory: Some(24 * GB),
            ram: None,
        };
        let p = pick(&m, &|a| a.name == "nano-9b-v2");
        assert!(p.cached);
        let p = pick(&m, &|a| a.name == "smollm2-135m");
        assert!(!p.cached);
    }

    #[test]
    fn memory_figures_are_parsed() {
        assert_eq!(
            parse_nvidia_smi("24564\n81559\n"),
            Some(81559 * 1024 * 1024)
        );
        assert_eq!(parse_nvidia_smi("No devices were found\n"), None);
        let mi = "MemTotal:       16318480 kB\nMemFree:         1 kB\n";
        assert_eq!(parse_meminfo(mi), Some(16318480 * 1024));
    }
}
