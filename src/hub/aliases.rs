//! Short names for the models nemo knows, in one table. `checked: false` marks a repo id
//! we could not confirm from here (no network when this table was written): a pull of it
//! may answer 404; fix the id here when you can check it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AliasKind {
    /// A model folder: config.json + safetensors (bf16 unless the name says otherwise).
    Safetensors,
    /// One `.gguf` file from a repo of quantizations (the default pick, see `selection`).
    Gguf,
}

#[derive(Clone, Copy, Debug)]
pub struct Alias {
    pub name: &'static str,
    pub repo: &'static str,
    /// For GGUF repos: the file, when the default pick is not wanted.
    pub file: Option<&'static str>,
    pub kind: AliasKind,
    /// Approximate download size in GB (what the picker uses to see what fits).
    pub size_gb: f64,
    pub description: &'static str,
    /// The repo id was confirmed to exist.
    pub checked: bool,
}

use AliasKind::*;

pub const ALIASES: &[Alias] = &[
    Alias {
        name: "nano-9b-v2",
        repo: "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        file: None,
        kind: Safetensors,
        size_gb: 17.8,
        description: "Nemotron Nano 9B v2, hybrid Mamba-Transformer, reasoning on/off, bf16",
        checked: true,
    },
    Alias {
        name: "nano-12b-v2",
        repo: "nvidia/NVIDIA-Nemotron-Nano-12B-v2",
        file: None,
        kind: Safetensors,
        size_gb: 24.6,
        description: "Nemotron Nano 12B v2, the larger hybrid Nano v2, bf16",
        checked: true,
    },
    Alias {
        name: "nemotron-3-nano",
        // Named in SGLang's Nemotron3-Nano cookbook (with the -FP8 twin); ~60 GB in bf16.
        repo: "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
        file: None,
        kind: Safetensors,
        size_gb: 63.2,
        description: "Nemotron 3 Nano 30B-A3B, hybrid MoE (3B active), bf16",
        checked: true,
    },
    Alias {
        name: "nemotron-3-nano-4b",
        // Seen as a hub repo page (a commit of its README: 3.97e9 parameters, hybrid,
        // compressed from Nano-9B-v2); the size here is from that count in bf16.
        repo: "nvidia/NVIDIA-Nemotron-3-Nano-4B-BF16",
        file: None,
        kind: Safetensors,
        size_gb: 8.0,
        description: "Nemotron 3 Nano 4B, hybrid Mamba-Transformer, bf16",
        checked: true,
    },
    Alias {
        name: "llama-nemotron-nano-8b",
        repo: "nvidia/Llama-3.1-Nemotron-Nano-8B-v1",
        file: None,
        kind: Safetensors,
        size_gb: 16.1,
        description: "Llama-3.1-Nemotron-Nano 8B v1, \"detailed thinking on/off\", bf16",
        checked: true,
    },
    Alias {
        name: "llama-nemotron-nano-4b",
        repo: "nvidia/Llama-3.1-Nemotron-Nano-4B-v1.1",
        file: None,
        kind: Safetensors,
        size_gb: 9.0,
        description: "Llama-3.1-Nemotron-Nano 4B v1.1 (pruned from 8B), bf16",
        checked: true,
    },
    Alias {
        name: "llama-nemotron-nano-8b-gguf",
        // Not confirmed from here: bartowski's usual naming for this model's GGUF repo.
        repo: "bartowski/nvidia_Llama-3.1-Nemotron-Nano-8B-v1-GGUF",
        file: None,
        kind: Gguf,
        size_gb: 4.9,
        description: "Llama-3.1-Nemotron-Nano 8B v1 as GGUF, Q4_K_M by default",
        checked: false,
    },
    Alias {
        name: "nano-9b-v2-gguf",
        // Not confirmed from here: bartowski's usual naming for this model's GGUF repo.
        repo: "bartowski/nvidia_NVIDIA-Nemotron-Nano-9B-v2-GGUF",
        file: None,
        kind: Gguf,
        size_gb: 6.5,
        description: "Nemotron Nano 9B v2 as GGUF, Q4_K_M by default",
        checked: false,
    },
    Alias {
        name: "smollm2-135m",
        repo: "HuggingFaceTB/SmolLM2-135M-Instruct",
        file: None,
        kind: Safetensors,
        size_gb: 0.27,
        description:
            "SmolLM2 135M Instruct: tiny, for trying nemo out and for tests (not a Nemotron)",
        checked: true,
    },
];

pub fn find(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// The alias whose repo this is, for naming cached models.
pub fn for_repo(repo: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.repo.eq_ignore_ascii_case(repo))
}

pub fn names() -> String {
    ALIASES
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_repos_are_unique_and_well_formed() {
        for (i, a) in ALIASES.iter().enumerate() {
            assert_eq!(a.repo.matches('/').count(), 1, "{}", a.repo);
            assert!(a.size_gb > 0.0);
            for b in &ALIASES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.repo, b.repo);
            }
        }
        assert_eq!(
            find("NANO-9B-V2").unwrap().repo,
            "nvidia/NVIDIA-Nemotron-Nano-9B-v2"
        );
    }
}
