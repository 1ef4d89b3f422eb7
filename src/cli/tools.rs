//! The tool flags `nemo run` and `nemo chat` share, and the registry they build: the
//! built-in tools, `[tools.NAME]` user tools and MCP servers from config.toml, and (run
//! only) tools from an OpenAI function-schema file that have no runner.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use nemo::agent::mcp::McpServers;
use nemo::agent::policy::{ApprovalMode, Policy, ToolSelection};
use nemo::agent::registry::Registry;
use nemo::agent::turn::{Agent, DEFAULT_MAX_STEPS};
use nemo::agent::{user_tools, Sandbox, ToolContext, Workspace};
use nemo::config::Config;
use nemo::protocol::{ToolChoice, ToolFormat, ToolSpec};

use super::usage;

/// `--tool-format`: a family's format, or `auto` (from the template and vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatFlag(pub Option<ToolFormat>);

impl std::str::FromStr for FormatFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(FormatFlag(None));
        }
        s.parse()
            .map(|f| FormatFlag(Some(f)))
            .map_err(|e: String| e.replace("must be", "must be auto,"))
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct ToolFlags {
    /// Tools offered to the model: all, none, NAME[,NAME] (built-in, `[tools.NAME]` of
    /// config.toml, MCP `server.tool`), or @FILE.json (OpenAI function schemas, which nemo
    /// does not run: a call to one ends the turn). Repeatable.
    #[arg(long, value_name = "all|none|NAME[,NAME]|@FILE.json")]
    pub tools: Vec<String>,
    /// auto | none | required | NAME: what the first model step of a turn must do.
    #[arg(long, value_name = "auto|none|required|NAME")]
    pub tool_choice: Option<ToolChoice>,
    /// auto | nano-v2 | qwen3-coder | hermes: the tool-call format (default: the model's).
    #[arg(long, value_name = "FORMAT")]
    pub tool_format: Option<FormatFlag>,
    /// ask | read-only | auto: which calls run without asking.
    #[arg(long)]
    pub approval: Option<ApprovalMode>,
    /// Root the file tools are confined to, and where commands run (default: the current
    /// folder).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// landlock | off: how commands are confined.
    #[arg(long)]
    pub sandbox: Option<Sandbox>,
    /// Most model steps per user turn (each round of tool calls is one).
    #[arg(long, default_value_t = DEFAULT_MAX_STEPS)]
    pub max_steps: usize,
}

/// What `--tools` asked for: a selection among the tools nemo runs, and schema files.
#[derive(Debug, Default)]
pub struct ToolRequest {
    /// all / none / names; None when only files (or nothing) were given.
    pub selection: Option<nemo::agent::policy::ToolSelection>,
    pub external: Vec<ToolSpec>,
}

impl ToolFlags {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_steps == 0 {
            return Err(usage("--max-steps must be at least 1"));
        }
        Ok(())
    }

    /// Reads `--tools`: selections merge (names add up; `all` wins; `none` alone offers
    /// none), files are read and their schemas kept.
    pub fn request(&self) -> anyhow::Result<ToolRequest> {
        use nemo::agent::policy::ToolSelection;
        let mut req = ToolRequest::default();
        for v in &self.tools {
            if let Some(file) = v.trim().strip_prefix('@') {
                req.external.extend(read_schemas(Path::new(file))?);
                continue;
            }
            let sel: ToolSelection = v.parse().map_err(usage)?;
            req.selection = Some(match (req.selection.take(), sel) {
                (None, s) => s,
                (Some(ToolSelection::All), _) | (_, ToolSelection::All) => ToolSelection::All,
                (Some(ToolSelection::None), s) | (Some(s), ToolSelection::None) => s,
                (Some(ToolSelection::Named(mut a)), ToolSelection::Named(b)) => {
                    a.extend(b);
                    ToolSelection::Named(a)
                }
            });
        }
        let mut seen = std::collections::HashSet::new();
        for t in &req.external {
            if !seen.insert(t.name.as_str()) {
                return Err(usage(format!(
                    "--tools: the tool `{}` is defined twice in the schema files",
                    t.name
                )));
            }
        }
        Ok(req)
    }
}

/// An OpenAI function-schema file: an array of tools, or `{"tools": [...]}`.
fn read_schemas(path: &Path) -> anyhow::Result<Vec<ToolSpec>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("--tools: cannot read {}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("--tools: {} is not JSON: {e}", path.display())))?;
    let list = match v {
        serde_json::Value::Object(mut o) if o.contains_key("tools") => {
            o.remove("tools").unwrap_or_default()
        }
        v @ serde_json::Value::Array(_) => v,
        v @ serde_json::Value::Object(_) => serde_json::Value::Array(vec![v]),
        _ => {
            return Err(usage(format!(
                "--tools: {} holds no tool schemas (an array of OpenAI function schemas)",
                path.display()
            )))
        }
    };
    let specs: Vec<ToolSpec> = serde_json::from_value(list).map_err(|e| {
        usage(format!(
            "--tools: {}: not OpenAI function schemas: {e}",
            path.display()
        ))
    })?;
    for s in &specs {
        if s.name.trim().is_empty() {
            return Err(usage(format!(
                "--tools: {}: a tool has an empty name",
                path.display()
            )));
        }
        if !s.parameters.is_object() {
            return Err(usage(format!(
                "--tools: {}: the parameters of `{}` are not a JSON schema object",
                path.display(),
                s.name
            )));
        }
    }
    Ok(specs)
}

/// Every tool nemo can run under `cfg`: built-ins, user tools, and, when `mcp`, the tools
/// of the configured MCP servers (started here; dropping the servers stops them). Lines
/// about servers that failed go to stderr.
pub fn registry(
    cfg: &Config,
    config_file: &Path,
    mcp: bool,
) -> anyhow::Result<(Registry, Option<McpServers>)> {
    let mut registry = Registry::builtins();
    let user = user_tools::from_config(&cfg.tools)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", config_file.display()))?;
    for t in user {
        registry.add(Arc::new(t))?;
    }
    if !mcp || cfg.mcp.servers.is_empty() {
        return Ok((registry, None));
    }
    let (servers, tools) = McpServers::start(&cfg.mcp)?;
    for w in servers.warnings() {
        eprintln!("nemo: mcp: {w}");
    }
    for t in tools {
        registry.add(t)?;
    }
    Ok((registry, Some(servers)))
}

/// The agent `run` and `chat` build from the same flags once each has chosen its tools:
/// the sandbox (flag, else config.toml, else Landlock), the policy in `mode`, the registry
/// (MCP servers started only when `selection` can name their tools) narrowed by `offer`,
/// the tools without a runner beside it, `--tool-choice` checked against what is offered,
/// and the workspace. Also gives the Landlock notice to show, when commands are offered
/// and the kernel lacks it, and the MCP servers (they run until dropped).
pub struct Assembled {
    pub agent: Agent,
    pub notice: Option<String>,
    pub servers: Option<McpServers>,
}

#[allow(clippy::too_many_arguments)]
pub fn assemble(
    flags: &ToolFlags,
    cfg: &Config,
    config_file: &Path,
    selection: &ToolSelection,
    mode: ApprovalMode,
    external: Vec<ToolSpec>,
    interactive: bool,
    offer: impl FnOnce(&Registry, &Policy) -> anyhow::Result<Registry>,
) -> anyhow::Result<Assembled> {
    let sandbox = flags.sandbox.or(cfg.sandbox).unwrap_or(Sandbox::Landlock);
    let policy = Policy::new(mode, sandbox, nemo::agent::sandbox::support());
    let wants_mcp = match selection {
        ToolSelection::All => true,
        ToolSelection::Named(n) => n.iter().any(|n| n.contains('.')),
        ToolSelection::None => false,
    };
    let (all, servers) = registry(cfg, config_file, wants_mcp)?;
    let registry = offer(&all, &policy)?;
    for t in &external {
        if registry.get(&t.name).is_ok() {
            return Err(usage(format!(
                "--tools: `{}` from a schema file has the name of a tool nemo runs",
                t.name
            )));
        }
    }
    if let Some(ToolChoice::Named(n)) = &flags.tool_choice {
        if registry.get(n).is_err() && !external.iter().any(|t| &t.name == n) {
            return Err(usage(format!(
                "--tool-choice: `{n}` is not among the offered tools"
            )));
        }
    }
    let notice = (sandbox == Sandbox::Landlock && !registry.is_empty())
        .then(nemo::agent::sandbox::notice_once)
        .flatten()
        .map(|n| n.to_string());
    let root = match &flags.workspace {
        Some(p) => p.clone(),
        None => std::env::current_dir()?,
    };
    let workspace = Workspace::new(&root).map_err(|e| usage(format!("--workspace: {e}")))?;
    let mut ctx = ToolContext::new(workspace);
    ctx.sandbox = sandbox;
    Ok(Assembled {
        agent: Agent {
            registry,
            external,
            policy,
            ctx,
            max_steps: flags.max_steps,
            interactive,
        },
        notice,
        servers,
    })
}
