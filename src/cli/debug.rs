//! `nemo debug logits`: raw logits for given token ids, as JSON, for parity checks
//! against other implementations.

use std::io::Write;

use clap::{Args, Subcommand};

use nemo::model::Logits;

use super::{usage, ModelArgs};

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Print `{"tokens":[...],"logits":[[...]]}` for the last position (or all with --all).
    Logits(LogitsArgs),
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    pub tokens: String,
    /// Every position instead of the last.
    #[arg(long)]
    pub all: bool,
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {
        DebugCommand::Logits(a) => logits(a),
    }
}

fn logits(a: LogitsArgs) -> anyhow::Result<()> {
    a.model.init_threads()?;
    let tokens: Vec<u32> = a
        .tokens
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| usage(format!("--tokens: `{s}` is not a token id")))
        })
        .collect::<Result<_, _>>()?;
    if tokens.is_empty() {
        return Err(usage(
            "--tokens: give at least one token id, e.g. --tokens 1,2,3",
        ));
    }
    let folder = a.model.load()?;
    let cache = a.model.cache_config(folder.model.weight_dtype())?;
    let mut state = folder.model.new_state(cache);
    let out = folder.model.forward(
        &tokens,
        &mut state,
        if a.all { Logits::All } else { Logits::Last },
    )?;
    let vocab = folder.model.vocab_size();
    let rows: Vec<&[f32]> = out.chunks(vocab).collect();
    let json = serde_json::json!({ "tokens": tokens, "logits": rows });
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{json}").and_then(|_| out.flush()) {
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
