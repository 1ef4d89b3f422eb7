//! `nemo list`: the models in the Hugging Face cache that nemo can load (a table, or
//! `--json`); `--aliases`: the short names `--model` and `nemo pull` accept.

use clap::Args;
use serde_json::json;

use nemo::hub::aliases::{self, AliasKind, ALIASES};
use nemo::hub::{human_size, HubConfig};

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON array on stdout.
    #[arg(long)]
    pub json: bool,
    /// The known aliases instead of the cached models.
    #[arg(long)]
    pub aliases: bool,
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == cols {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = width[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn run(a: ListArgs) -> anyhow::Result<()> {
    if a.aliases {
        return list_aliases(a.json);
    }
    let cfg = HubConfig::from_env()?;
    let models = cfg.cache().models()?;
    if a.json {
        let v: Vec<_> = models
            .iter()
            .map(|m| {
                json!({
                    "repo": m.repo,
                    "alias": aliases::for_repo(&m.repo).map(|a| a.name),
                    "arch": m.arch,
                    "dtype": m.dtype,
                    "size_bytes": m.size,
                    "path": m.path.display().to_string(),
                    "commit": m.commit,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if models.is_empty() {
        eprintln!(
            "nemo: no models nemo can load in {}; get one with `nemo pull NAME` (`nemo list --aliases` shows names)",
            cfg.cache_dir.display()
        );
        return Ok(());
    }
    let mut rows = vec![["MODEL", "ALIAS", "ARCH", "DTYPE", "SIZE", "PATH"]
        .map(String::from)
        .to_vec()];
    for m in &models {
        rows.push(vec![
            m.repo.clone(),
            aliases::for_repo(&m.repo)
                .map(|a| a.name.to_string())
                .unwrap_or_else(|| "-".into()),
            m.arch.clone(),
            m.dtype.clone(),
            human_size(m.size),
            m.path.display().to_string(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

fn list_aliases(as_json: bool) -> anyhow::Result<()> {
    let kind = |k: AliasKind| match k {
        AliasKind::Safetensors => "safetensors",
        AliasKind::Gguf => "gguf",
    };
    if as_json {
        let v: Vec<_> = ALIASES
            .iter()
            .map(|a| {
                json!({
                    "name": a.name, "repo": a.repo, "file": a.file, "kind": kind(a.kind),
                    "size_gb": a.size_gb, "description": a.description, "checked": a.checked,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    let mut rows = vec![["ALIAS", "KIND", "SIZE", "REPO", "DESCRIPTION"]
        .map(String::from)
        .to_vec()];
    for a in ALIASES {
        rows.push(vec![
            a.name.to_string(),
            kind(a.kind).to_string(),
            format!("~{}", human_size((a.size_gb * 1e9) as u64)),
            if a.checked {
                a.repo.to_string()
            } else {
                format!("{} (unconfirmed)", a.repo)
            },
            a.description.to_string(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}
