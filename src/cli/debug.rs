//! `nemo debug logits`: raw logits for given token ids, as JSON, for parity checks
//! against other implementations. `nemo debug tool NAME 'JSON'`: one tool call through
//! the same policy the agent uses, so confinement and approvals can be checked from
//! outside.
//!
//! `debug tool` exit codes: 0 the tool ran and succeeded; 1 it ran and failed (its output
//! is still printed); 2 bad usage (unknown tool, JSON or arguments that do not fit, a bad
//! flag or workspace); 3 the call was refused (the approval mode, a path outside the
//! workspace, a command auto cannot confine), denied by the user, or needed approval with
//! no terminal to ask on; 130 cancelled.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use nemo::agent::execute::{execute, Outcome};
use nemo::agent::policy::{ApprovalMode, Policy};
use nemo::agent::registry::Registry;
use nemo::agent::{sandbox, user_tools, Sandbox, ToolContext, Workspace};
use nemo::model::Logits;
use nemo::protocol::{ApprovalDecision, ApprovalRequest, ToolCall};

use super::{usage, ModelArgs};

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Print `{"tokens":[...],"logits":[[...]]}` for the last position (or all with --all).
    Logits(LogitsArgs),
    /// Run one tool call (built-in or from config.toml) through the approval policy and
    /// print its result: `nemo debug tool read_file '{"path": "README.md"}'`.
    Tool(ToolArgs),
}

#[derive(Args, Debug)]
pub struct ToolArgs {
    /// The tool's name: shell, read_file, write_file, edit_file, list_dir, search, or a
    /// `[tools.NAME]` of config.toml.
    pub name: String,
    /// The arguments, a JSON object.
    #[arg(default_value = "{}")]
    pub json: String,
    /// Root the file tools are confined to, and where commands run (default: the current
    /// folder).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// ask | read-only | auto (default: config.toml's `approval`, else ask). `ask` needs a
    /// terminal: without one, a call that would ask is refused.
    #[arg(long)]
    pub approval: Option<ApprovalMode>,
    /// How commands are confined: landlock | off (default: config.toml's `sandbox`, else
    /// landlock).
    #[arg(long)]
    pub sandbox: Option<Sandbox>,
    /// Longest a command may run, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Most bytes of output kept.
    #[arg(long, default_value_t = ToolContext::DEFAULT_OUTPUT_CAP)]
    pub output_cap: usize,
    /// Print the result as JSON (`{"id","name","ok","output","truncated"}`).
    #[arg(long)]
    pub json_output: bool,
}

/// The call was refused or denied: exit code 3.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The tool ran and failed: exit code 1, its output already printed.
#[derive(Debug)]
pub struct ToolFailed(pub String);

impl std::fmt::Display for ToolFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed", self.0)
    }
}

impl std::error::Error for ToolFailed {}

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
        DebugCommand::Tool(a) => tool(a),
    }
}

fn tool(a: ToolArgs) -> anyhow::Result<()> {
    let args: serde_json::Value = serde_json::from_str(&a.json)
        .map_err(|e| usage(format!("the arguments are not JSON: {e}")))?;
    if !args.is_object() {
        return Err(usage(
            "the arguments must be a JSON object, e.g. '{\"path\": \"README.md\"}'",
        ));
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout <= 7.0 * 86400.0) {
        return Err(usage(format!(
            "--timeout: {} is not a number of seconds from 0 to a week",
            a.timeout
        )));
    }
    let (paths, cfg) = super::file_and_env()?;
    let mode = a.approval.or(cfg.approval).unwrap_or(ApprovalMode::Ask);
    let sandbox_mode = a.sandbox.or(cfg.sandbox).unwrap_or(Sandbox::Landlock);
    let root = match &a.workspace {
        Some(p) => p.clone(),
        None => std::env::current_dir()?,
    };
    let workspace = Workspace::new(&root).map_err(|e| usage(format!("--workspace: {e}")))?;

    let mut registry = Registry::builtins();
    let user = user_tools::from_config(&cfg.tools)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", paths.config_file.display()))?;
    for t in user {
        registry.add(Arc::new(t))?;
    }
    if registry.get(&a.name).is_err() {
        let known: Vec<&str> = registry.names().collect();
        return Err(usage(format!(
            "no tool `{}` (known: {})",
            a.name,
            known.join(", ")
        )));
    }
    if sandbox_mode == Sandbox::Landlock {
        if let Some(notice) = sandbox::notice_once() {
            eprintln!("nemo: {notice}");
        }
    }

    let cancel = Arc::new(AtomicBool::new(false));
    {
        // Ctrl+C cancels the call (its command's process group is killed).
        let cancel = Arc::clone(&cancel);
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let ctx = ToolContext {
        workspace,
        cancel,
        output_cap: a.output_cap,
        timeout: Duration::from_secs_f64(a.timeout),
        sandbox: sandbox_mode,
    };
    let mut policy = Policy::new(mode, sandbox_mode, sandbox::support());
    let call = ToolCall::new("call_0", a.name.clone(), args);
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let mut ask = |req: &ApprovalRequest| {
        if interactive {
            ask_on_terminal(req)
        } else {
            None
        }
    };
    let (result, outcome) = execute(&registry, &mut policy, &call, &ctx, &mut ask);

    let mut out = std::io::stdout().lock();
    match outcome {
        Outcome::Ran => {
            if a.json_output {
                writeln!(out, "{}", serde_json::to_string(&result)?)?;
            } else {
                write!(out, "{}", result.output)?;
                if !result.output.ends_with('\n') {
                    writeln!(out)?;
                }
            }
            out.flush()?;
            if result.ok {
                Ok(())
            } else {
                Err(anyhow::Error::new(ToolFailed(a.name)))
            }
        }
        Outcome::BadCall => Err(usage(result.output)),
        Outcome::Cancelled => Err(anyhow::Error::new(super::Interrupted)),
        Outcome::Unanswered => Err(anyhow::Error::new(Refused(format!(
            "{} (no terminal to ask on; --approval auto runs it)",
            result.output
        )))),
        Outcome::Refused | Outcome::OutsideWorkspace | Outcome::Denied => {
            Err(anyhow::Error::new(Refused(result.output)))
        }
    }
}

/// Shows the request on stderr and reads y / a / n [note] from stdin.
fn ask_on_terminal(req: &ApprovalRequest) -> Option<ApprovalDecision> {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{} {}", req.call.name(), req.call.arguments());
    let _ = writeln!(err, "It {}.", req.reason);
    if let Some(p) = &req.preview {
        let _ = writeln!(err, "{p}");
    }
    loop {
        let _ = write!(err, "Run it? [y] once, [a] this exact call for the session, [n] no (n NOTE tells the model why): ");
        let _ = err.flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let line = line.trim();
        let (word, note) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match word.to_ascii_lowercase().as_str() {
            "y" | "yes" => return Some(ApprovalDecision::Once),
            "a" | "always" => return Some(ApprovalDecision::Session),
            "n" | "no" => {
                let note = note.trim();
                return Some(ApprovalDecision::Deny {
                    note: (!note.is_empty()).then(|| note.to_string()),
                });
            }
            _ => {}
        }
    }
}

fn logits(mut a: LogitsArgs) -> anyhow::Result<()> {
    a.model = a.model.with_settings()?;
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
    let cache = a.model.cache_config(folder.model.weight_dtype());
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
