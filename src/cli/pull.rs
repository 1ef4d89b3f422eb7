//! `nemo pull`: a model from the Hugging Face hub into the shared HF cache, with progress
//! bars (plain lines when stderr is not a terminal); prints the local path on stdout.
//! Also home of [`resolve_model`], how every command turns `--model` into a path.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use nemo::hub::client::Client;
use nemo::hub::picker::{self, Machine};
use nemo::hub::{self, human_size, resolve, HubConfig, HubError, ModelSpec};

use super::usage;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// A repo id (`org/name`, or `org/name:file.gguf`) or an alias (`nemo list --aliases`).
    pub model: String,
    /// Branch, tag or commit.
    #[arg(long)]
    pub revision: Option<String>,
    /// The `.gguf` file to take from a GGUF repo (default: Q4_K_M, or the only one).
    #[arg(long)]
    pub file: Option<String>,
}

pub fn run(a: PullArgs) -> anyhow::Result<()> {
    let spec = ModelSpec::parse(&a.model, a.revision.as_deref(), a.file.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let ModelSpec::Hub {
        repo,
        file,
        revision,
    } = &spec
    else {
        return Err(usage(format!(
            "`{}` is a local path; `nemo pull` takes a repo id (org/name) or an alias ({})",
            a.model,
            hub::aliases::names()
        )));
    };
    let cfg = HubConfig::from_env()?;
    let cache = cfg.cache();
    if cfg.offline {
        return match resolve::cached(&cache, repo, revision, file.as_deref()) {
            Some(p) => {
                eprintln!(
                    "nemo: {} is in the cache (HF_HUB_OFFLINE is set: not checked for updates)",
                    spec.label()
                );
                println!("{}", p.display());
                Ok(())
            }
            None => Err(offline_error(&spec, &cfg)),
        };
    }
    let path = download(&cfg, repo, revision, file.as_deref())?;
    println!("{}", path.display());
    Ok(())
}

fn offline_error(spec: &ModelSpec, cfg: &HubConfig) -> anyhow::Error {
    HubError::Offline(format!(
        "{} is not in the cache ({}) and HF_HUB_OFFLINE is set; run `nemo pull {}` with the network on",
        spec.label(),
        cfg.cache_dir.display(),
        spec.label()
    ))
    .into()
}

/// Plans, says how big, pulls; returns what to open.
fn download(
    cfg: &HubConfig,
    repo: &str,
    revision: &str,
    file: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let client = Client::new(cfg);
    let plan = resolve::plan_remote(&client, repo, revision, file)?;
    if let Some(n) = &plan.note {
        eprintln!("nemo: {n}");
    }
    eprintln!(
        "nemo: {repo}: {} file{}, {} (commit {}) into {}",
        plan.files.len(),
        if plan.files.len() == 1 { "" } else { "s" },
        human_size(plan.total_size()),
        plan.commit.chars().take(12).collect::<String>(),
        cfg.cache_dir.display()
    );
    let mut bars = Bars::new();
    let report = hub::pull(&client, &cfg.cache(), &plan, cfg.retries, &mut bars)?;
    eprintln!(
        "nemo: {repo}: done ({} downloaded{})",
        human_size(report.downloaded),
        match report.reused {
            0 => String::new(),
            n => format!(
                ", {n} file{} already in the cache",
                if n == 1 { "" } else { "s" }
            ),
        }
    );
    Ok(report.path)
}

/// File name, bar, bytes done/total, speed, time left.
const BAR_TEMPLATE: &str =
    "{msg:32!} {bar:28.cyan/blue} {decimal_bytes:>9}/{decimal_total_bytes:<9} {decimal_bytes_per_sec:>11} ETA {eta}";

/// indicatif bars on a terminal; a line per file otherwise.
struct Bars {
    term: bool,
    bar: Option<ProgressBar>,
    size: u64,
    moved: bool,
}

impl Bars {
    fn new() -> Self {
        Bars {
            term: std::io::stderr().is_terminal(),
            bar: None,
            size: 0,
            moved: false,
        }
    }
}

impl hub::Progress for Bars {
    fn start(&mut self, file: &str, size: u64, done: u64) {
        self.size = size;
        self.moved = done < size;
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.term {
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let b = ProgressBar::new(size)
                .with_style(style)
                .with_message(file.to_string());
            b.set_position(done);
            self.bar = Some(b);
        } else if done < size {
            eprintln!("nemo: {file}: {}", human_size(size));
        }
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&mut self, file: &str) {
        if let Some(b) = self.bar.take() {
            b.finish();
        } else if !self.moved {
            eprintln!("nemo: {file}: already in the cache");
        }
    }

    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("nemo: {msg}")),
            None => eprintln!("nemo: {msg}"),
        }
    }
}

/// What to do when no model is named.
#[derive(Clone, Copy, Debug)]
pub enum Missing {
    /// A usage error (the command needs a model).
    Required,
    /// Pick one that fits the machine; ask before downloading unless `yes`.
    PickDefault { yes: bool },
}

/// A model ready to open, and a name to show for it.
#[derive(Clone, Debug)]
pub struct ModelChoice {
    pub path: PathBuf,
    pub name: String,
}

/// `--model` (or config's `model`) to a path: a folder or `.gguf` file as is; a repo id or
/// alias from the cache, pulled first (after saying how big) when it is not there; nothing
/// named: the default for this machine, asked for before downloading.
pub fn resolve_model(spec: Option<&Path>, missing: Missing) -> anyhow::Result<ModelChoice> {
    let Some(spec) = spec else {
        return match missing {
            Missing::Required => Err(usage(
                "--model is required: a folder, a .gguf file, a repo id or an alias (or set NEMO_MODEL)",
            )),
            Missing::PickDefault { yes } => default_model(yes),
        };
    };
    let text = spec.to_string_lossy();
    let parsed = ModelSpec::parse(&text, None, None).map_err(|e| usage(e.to_string()))?;
    let (repo, file, revision) = match parsed {
        ModelSpec::Path(p) => {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            return Ok(ModelChoice { path: p, name });
        }
        ModelSpec::Hub {
            ref repo,
            ref file,
            ref revision,
        } => (repo.clone(), file.clone(), revision.clone()),
    };
    let cfg = HubConfig::from_env()?;
    let path = match resolve::cached(&cfg.cache(), &repo, &revision, file.as_deref()) {
        Some(p) => p,
        None if cfg.offline => return Err(offline_error(&parsed, &cfg)),
        None => {
            eprintln!(
                "nemo: {} is not in the cache yet; pulling it",
                parsed.label()
            );
            download(&cfg, &repo, &revision, file.as_deref()).map_err(|e| {
                // `org/name` may have been meant as a local folder.
                match e.downcast_ref::<HubError>() {
                    Some(HubError::Remote(_)) if hub::aliases::find(&text).is_none() => {
                        anyhow::anyhow!("{e} (there is no local folder `{text}` either)")
                    }
                    _ => e,
                }
            })?
        }
    };
    Ok(ModelChoice {
        path,
        name: parsed.label(),
    })
}

fn default_model(yes: bool) -> anyhow::Result<ModelChoice> {
    let cfg = HubConfig::from_env()?;
    let cache = cfg.cache();
    let cached =
        |a: &hub::aliases::Alias| resolve::cached(&cache, a.repo, "main", a.file).is_some();
    let pick = picker::pick(&Machine::probe(), &cached);
    let a = pick.alias;
    let size = format!("about {}", human_size((a.size_gb * 1e9) as u64));
    let using = format!(
        "no model given; using {} ({}): {}",
        a.name, a.repo, pick.reason
    );
    if let Some(path) = resolve::cached(&cache, a.repo, "main", a.file) {
        eprintln!("nemo: {using}");
        return Ok(ModelChoice {
            path,
            name: a.repo.to_string(),
        });
    }
    // Errors stay one line: what was picked, why, and what to do.
    let picked = format!(
        "no model given; the default for this machine is {} ({}, {size}; {})",
        a.name, a.repo, pick.reason
    );
    if cfg.offline {
        return Err(HubError::Offline(format!(
            "{picked}, which is not in the cache and HF_HUB_OFFLINE is set; give --model"
        ))
        .into());
    }
    if !yes {
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !interactive {
            return Err(usage(format!(
                "{picked}, not downloaded yet: pass --yes to download it, or give --model (a folder, .gguf file, repo id or alias)"
            )));
        }
        eprintln!("nemo: {using}");
        let question = format!(
            "download {} ({size}) into {}?",
            a.name,
            cfg.cache_dir.display()
        );
        if confirm(&question)? != Some(true) {
            return Err(usage(format!(
                "not downloaded; give --model, or `nemo pull {}` later",
                a.name
            )));
        }
    } else {
        eprintln!("nemo: {using}");
    }
    let path = download(&cfg, a.repo, "main", a.file)?;
    Ok(ModelChoice {
        path,
        name: a.repo.to_string(),
    })
}

/// A y/N question on stderr; `None` when there is no terminal to ask on.
pub fn confirm(question: &str) -> anyhow::Result<Option<bool>> {
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Ok(None);
    }
    eprint!("nemo: {question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(Some(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_template_is_valid() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}
