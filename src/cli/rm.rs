//! `nemo rm`: removes one model (its whole `models--{org}--{name}` folder: blobs,
//! snapshots, refs) from the Hugging Face cache, and nothing else. Asks first unless `--yes`.

use clap::Args;

use nemo::hub::resolve::is_repo_id;
use nemo::hub::{aliases, human_size, HubConfig};

use super::pull::confirm;
use super::usage;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// A repo id (`org/name`) or an alias.
    pub model: String,
    /// Remove without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub fn run(a: RmArgs) -> anyhow::Result<()> {
    let repo = match aliases::find(&a.model) {
        Some(al) => al.repo.to_string(),
        None => {
            let r = a.model.split_once(':').map(|(r, _)| r).unwrap_or(&a.model);
            if !is_repo_id(r) {
                return Err(usage(format!(
                    "`{}` is not a repo id (org/name) or an alias ({})",
                    a.model,
                    aliases::names()
                )));
            }
            r.to_string()
        }
    };
    let cfg = HubConfig::from_env()?;
    let cache = cfg.cache();
    let dir = cache.repo_dir(&repo);
    if std::fs::symlink_metadata(&dir).is_err() {
        return Err(anyhow::anyhow!(
            "{repo} is not in the cache ({}); `nemo list` shows what is",
            cfg.cache_dir.display()
        ));
    }
    let size = cache
        .model(&repo, "main")
        .map(|m| human_size(m.size))
        .unwrap_or_else(|| "unknown size".into());
    if !a.yes {
        match confirm(&format!("remove {repo} ({size}, {})?", dir.display()))? {
            Some(true) => {}
            Some(false) => return Err(usage("nothing removed")),
            None => {
                return Err(usage(format!(
                    "remove {repo} ({size})? pass --yes to confirm (no terminal to ask on)"
                )))
            }
        }
    }
    let removed = cache.remove(&repo)?;
    eprintln!("nemo: removed {repo} ({size}): {}", removed.display());
    Ok(())
}
