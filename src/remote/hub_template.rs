//! The remote model's tokenizer and chat template from the Hugging Face hub, when no
//! `--tokenizer` is given and the model's name is a repo id: only the small files
//! (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`,
//! `special_tokens_map.json`), into the shared HF cache laid out as huggingface_hub lays
//! it out, through nemo's own downloader (sizes and hashes checked). A cached copy is used
//! without the network; `HF_HUB_OFFLINE=1` allows only that.

use std::path::PathBuf;

use crate::hub::client::Client;
use crate::hub::download::pull;
use crate::hub::selection::{Kind, Plan, PlannedFile};
use crate::hub::{HubConfig, HubError, Quiet};

/// The files fetched, the first one required.
const FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// A snapshot folder holding `repo`'s tokenizer and template.
pub fn fetch(repo: &str) -> Result<PathBuf, HubError> {
    let cfg = HubConfig::from_env()?;
    let cache = cfg.cache();
    let ready = |dir: &PathBuf| {
        dir.join("tokenizer.json").is_file()
            && (dir.join("tokenizer_config.json").is_file()
                || dir.join("chat_template.jinja").is_file())
    };
    if let Some(commit) = cache.resolve_revision(repo, "main") {
        let snap = cache.snapshot_dir(repo, &commit);
        if ready(&snap) {
            return Ok(snap);
        }
    }
    if cfg.offline {
        return Err(HubError::Spec(format!(
            "{repo}: its tokenizer is not in the cache and HF_HUB_OFFLINE is set"
        )));
    }
    let client = Client::new(&cfg);
    let info = client.repo_info(repo, "main")?;
    let files: Vec<PlannedFile> = info
        .siblings
        .iter()
        .filter(|f| FILES.contains(&f.name.as_str()))
        .map(PlannedFile::from)
        .collect();
    if !files.iter().any(|f| f.name == FILES[0]) {
        return Err(HubError::Remote(format!(
            "{repo}: the repo has no tokenizer.json"
        )));
    }
    let plan = Plan {
        repo: repo.to_string(),
        revision: "main".into(),
        commit: info.sha.clone(),
        kind: Kind::Safetensors,
        files,
        note: None,
    };
    let report = pull(&client, &cache, &plan, cfg.retries, &mut Quiet)?;
    if ready(&report.snapshot) {
        Ok(report.snapshot)
    } else {
        Err(HubError::Remote(format!(
            "{repo}: the repo has no chat template (tokenizer_config.json or chat_template.jinja)"
        )))
    }
}
