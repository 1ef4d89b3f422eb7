//! `nemo run`: one prompt from the arguments or stdin, the answer on stdout and nothing
//! else there; reasoning to stderr with `--show-thinking`; `--json` prints one event
//! object per line instead.
//!
//! Ctrl+C exits with 130 promptly in every phase: the handler is installed first and only
//! cancels the request's `Controls`; the main thread never blocks on work it cannot leave.
//! Reading stdin and loading the model run on threads of their own while the main thread
//! polls the cancel flag; the engine's events are awaited with a timeout, and a cancelled
//! request the engine has not ended within `CANCEL_GRACE` (a long template render, one
//! long forward pass) is left to the process exit. What was printed stays printed.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use nemo::agent::mcp::McpServers;
use nemo::agent::turn::Agent;
use nemo::config::Config;
use nemo::engine::grammar::{Grammar, GrammarError, Guide, Vocabulary};
use nemo::engine::{Engine, SessionOptions};
use nemo::protocol::Message;
use nemo::protocol::SamplingParams;
use nemo::protocol::{
    Budget, Constraint, Controls, Done, Event, FinishReason, Request, ThinkingOptions,
};

use nemo::remote::{Backend, Remote, RemoteOptions};

use super::device::{place, Placed, UploadBar};
use super::tools::ToolFlags;
use super::{usage, Interrupted, ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; read from stdin when absent.
    pub prompt: Vec<String>,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Reasoning on (the default).
    #[arg(long, overrides_with = "no_think")]
    pub think: bool,
    /// Reasoning off (the same as `--budget off`).
    #[arg(long = "no-think", conflicts_with = "budget")]
    pub no_think: bool,
    /// Thinking budget: N reasoning tokens before the end of thinking is forced, `off`
    /// (or 0) or `unlimited`.
    #[arg(long)]
    pub budget: Option<Budget>,
    /// The end of thinking is masked until this many reasoning tokens.
    #[arg(long, default_value_t = 0)]
    pub min_thinking: usize,
    /// Soft landing: a short closing line added before the forced end of thinking.
    #[arg(long)]
    pub closing_message: Option<String>,
    /// Soft landing: extra tokens allowed to finish the current sentence at the budget.
    #[arg(long, default_value_t = 0)]
    pub grace_tokens: usize,
    /// Most new tokens, reasoning included (default 4096).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when the answer contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Context length (default: the model's; on the GPU at most what fits the free device
    /// memory).
    #[arg(long)]
    pub context: Option<usize>,
    /// Print the reasoning to stderr.
    #[arg(long)]
    pub show_thinking: bool,
    /// One JSON object per event on stdout.
    #[arg(long)]
    pub json: bool,
    /// With no --model: download the default model for this machine without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The answer is JSON valid against this schema (a file, or the schema itself); one
    /// line, `", "` and `": "` separators unless the schema's `x-guidance` says otherwise.
    #[arg(long, value_name = "FILE|JSON", group = "constraint")]
    pub json_schema: Option<String>,
    /// The whole answer matches this regular expression (Rust regex syntax).
    #[arg(long, value_name = "RE", group = "constraint")]
    pub regex: Option<String>,
    /// The answer is exactly one of these comma-separated strings (each trimmed).
    #[arg(long, value_name = "A,B,C", group = "constraint")]
    pub choice: Option<String>,
    /// The answer follows this Lark grammar (llguidance's dialect).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tools: ToolFlags,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// `--endpoint` and its companions, shared by `run` and `chat`.
#[derive(Args, Debug, Clone, Default)]
pub struct EndpointArgs {
    /// Run on an OpenAI-compatible server instead of in this process (vLLM, NIM,
    /// llama.cpp's server, `nemo serve`), e.g. http://host:8000/v1. Only an explicit
    /// --model names the remote model (default: the first it lists).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The endpoint's API key (else NEMO_API_KEY, else OPENAI_API_KEY).
    #[arg(long, value_name = "KEY", requires = "endpoint")]
    pub api_key: Option<String>,
    /// The remote model's tokenizer and chat template here (a folder or a .gguf), for the
    /// two-request thinking budget.
    #[arg(long, value_name = "DIR|FILE.gguf", requires = "endpoint")]
    pub tokenizer: Option<std::path::PathBuf>,
}

impl EndpointArgs {
    /// The connection options: the key from the flag or the environment (never the serve
    /// key), the model only from an explicit --model flag (not NEMO_MODEL or config).
    pub fn options(
        &self,
        url: &str,
        model: Option<&std::path::Path>,
    ) -> anyhow::Result<RemoteOptions> {
        let flag_given = std::env::args().any(|a| {
            a == "--model" || a == "-m" || a.starts_with("--model=") || a.starts_with("-m=")
        });
        let api_key = self
            .api_key
            .clone()
            .or_else(|| std::env::var("NEMO_API_KEY").ok())
            .or_else(|| std::env::var("OPENAI_API_KEY").ok())
            .filter(|k| !k.is_empty());
        let extra_body = match std::env::var("NEMO_ENDPOINT_EXTRA_BODY") {
            Ok(text) if !text.trim().is_empty() => match serde_json::from_str(&text) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => {
                    return Err(usage(
                        "NEMO_ENDPOINT_EXTRA_BODY: must be a JSON object, e.g. {\"top_k\": 20}",
                    ))
                }
            },
            _ => serde_json::Map::new(),
        };
        Ok(RemoteOptions {
            endpoint: url.to_string(),
            api_key,
            model: model
                .filter(|_| flag_given)
                .map(|m| m.to_string_lossy().into_owned()),
            tokenizer: self.tokenizer.clone(),
            extra_body,
        })
    }
}

/// The structured-output flag given, and its constraint.
fn constraint(a: &RunArgs) -> anyhow::Result<Option<(&'static str, Constraint)>> {
    if let Some(v) = &a.json_schema {
        let flag = "--json-schema";
        let inline = v.trim_start();
        let (text, origin) = if inline.starts_with('{') || inline == "true" || inline == "false" {
            (v.clone(), String::new())
        } else {
            let text = std::fs::read_to_string(v)
                .map_err(|e| usage(format!("{flag}: cannot read {v}: {e}")))?;
            (text, format!(" {v}"))
        };
        let schema = serde_json::from_str(&text)
            .map_err(|e| usage(format!("{flag}{origin}: not JSON: {e}")))?;
        return Ok(Some((flag, Constraint::JsonSchema(schema))));
    }
    if let Some(rx) = &a.regex {
        return Ok(Some(("--regex", Constraint::Regex(rx.clone()))));
    }
    if let Some(c) = &a.choice {
        let items = c.split(',').map(|s| s.trim().to_string()).collect();
        return Ok(Some(("--choice", Constraint::Choice(items))));
    }
    if let Some(p) = &a.grammar {
        let src = std::fs::read_to_string(p)
            .map_err(|e| usage(format!("--grammar: cannot read {}: {e}", p.display())))?;
        return Ok(Some(("--grammar", Constraint::Lark(src))));
    }
    Ok(None)
}

/// The flags that are settings keys (config.toml, `NEMO_*`), as the layer over them:
/// `--no-think` is `think = false`, `--think` `think = true`.
fn settings_layer(a: &RunArgs) -> Config {
    let mut layer = a.model.layer();
    layer.merge_over(&a.sampling.layer());
    layer.think = if a.no_think {
        Some(false)
    } else if a.think {
        Some(true)
    } else {
        None
    };
    layer.budget = a.budget;
    layer.max_tokens = a.max_tokens;
    layer
}

/// Why a constrained answer stopped short of its grammar, for the one-line error.
fn cut_short(flag: &str, d: &Done, max_tokens: usize) -> String {
    let by = match d.finish_reason {
        FinishReason::Length if d.usage.completion_tokens >= max_tokens => {
            format!("--max-tokens {max_tokens} cut the answer")
        }
        FinishReason::Length => "the context length cut the answer".into(),
        FinishReason::StopString => "a --stop string cut the answer".into(),
        FinishReason::Cancelled => "the answer was cancelled".into(),
        _ => "the answer ended".into(),
    };
    format!("{by} before it completed the {flag} constraint (stdout holds what was written)")
}

/// How often a waiting main thread looks at the cancel flag.
const POLL: Duration = Duration::from_millis(10);
/// How long a cancelled request may take to end before `run` stops waiting for it.
const CANCEL_GRACE: Duration = Duration::from_millis(80);

/// Runs `work` on a thread of its own and waits for it; Ctrl+C (`stop` cancelled) returns
/// `Interrupted` within `POLL`, leaving the thread behind (the process exit ends it).
fn interruptible<T: Send + 'static>(
    what: &str,
    stop: &Controls,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name(format!("nemo-{what}"))
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| anyhow::anyhow!("cannot start the {what} thread: {e}"))?;
    loop {
        if stop.is_cancelled() {
            return Err(Interrupted.into());
        }
        match rx.recv_timeout(POLL) {
            Ok(r) => return r,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(anyhow::anyhow!("the {what} thread crashed"))
            }
        }
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    // First of all, so that Ctrl+C is never ignored; a second Ctrl+C changes nothing.
    let controls = Controls::default();
    {
        let c = controls.clone();
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    a.sampling.check()?;
    if a.max_tokens == Some(0) {
        return Err(usage("--max-tokens must be at least 1"));
    }
    // The one settings path: config.toml < NEMO_* < these flags. `approval` is not read
    // from it: `run_mode` takes the flag alone (agent_for_run).
    let (paths, cfg) = super::settings(&settings_layer(&a))?;
    let max_tokens = cfg.max_tokens.unwrap_or(4096);
    if max_tokens == 0 {
        return Err(usage(
            "max_tokens (config.toml or NEMO_MAX_TOKENS) must be at least 1",
        ));
    }
    let model_args = ModelArgs::from_settings(&cfg);
    let sampling_args = a.sampling.with_settings(&cfg);
    let constraint = constraint(&a)?;
    let (agent, _mcp_servers) = match agent_for_run(&a, &cfg, &paths.config_file)? {
        Some((agent, servers)) => (Some(agent), servers),
        None => (None, None),
    };
    let prompt = if a.prompt.is_empty() {
        if std::io::stdin().is_terminal() {
            return Err(usage(
                "give a prompt as arguments or on stdin, e.g. `echo \"hi\" | nemo run --model DIR`",
            ));
        }
        interruptible("stdin", &controls, || {
            let mut s = String::new();
            std::io::stdin()
                .lock()
                .read_to_string(&mut s)
                .map_err(|e| anyhow::anyhow!("stdin: {e}"))?;
            Ok(s)
        })?
    } else {
        a.prompt.join(" ")
    };
    let prompt = prompt.trim_end_matches(['\n', '\r']).to_string();
    if prompt.trim().is_empty() {
        return Err(usage("the prompt is empty"));
    }
    if let Some(url) = a.endpoint.endpoint.clone() {
        let mut sampling = SamplingParams::default();
        sampling_args.apply(&mut sampling);
        let settings = RemoteSettings {
            sampling,
            max_tokens,
            budget: cfg.thinking_budget().unwrap_or(Budget::Unlimited),
        };
        return run_remote(&a, &url, prompt, controls, constraint, agent, settings);
    }
    super::init_threads(model_args.threads)?;
    let spec = model_args.model.clone();
    let t_load = Instant::now();
    let (yes, context) = (a.yes, a.context);
    let constraint_c = constraint.clone();
    let (placed, mut sampling, vocabulary): (Placed, SamplingParams, Option<Arc<Vocabulary>>) =
        interruptible("loader", &controls, move || {
            // The CUDA probe too: a slow driver must not hold Ctrl+C up.
            let device = model_args.device()?;
            let dir = super::pull::resolve_model(
                spec.as_deref(),
                super::pull::Missing::PickDefault { yes },
            )?
            .path;
            let folder = nemo::model::ModelFolder::open(&dir)?;
            let cache = model_args.cache_config(folder.model.weight_dtype());
            // A constraint that does not compile for this model is a usage error, found
            // before the weights go anywhere; the vocabulary built for the check serves
            // the request.
            let vocabulary = match &constraint_c {
                Some((flag, c)) => {
                    let v = Arc::new(Vocabulary::from_tokenizer(
                        &folder.tokenizer,
                        folder.model.vocab_size(),
                        &folder.eos_token_ids,
                    )?);
                    let named = |e: GrammarError| match e {
                        GrammarError::Invalid { msg, .. } => usage(format!("{flag}: {msg}")),
                        other => anyhow::anyhow!(other),
                    };
                    Guide::new(v.clone(), &Grammar::from_constraint(c).map_err(named)?)
                        .map_err(named)?;
                    Some(v)
                }
                None => None,
            };
            let mut sampling = SamplingParams::default();
            folder.generation.apply(&mut sampling);
            let opts = SessionOptions {
                cache,
                context,
                ..Default::default()
            };
            let mut bar = UploadBar::new();
            let placed = place(device, &folder, opts, &mut |d, t| bar.update(d, t));
            bar.finish();
            Ok((placed?, sampling, vocabulary))
        })?;
    sampling_args.apply(&mut sampling);
    if let Some(n) = &placed.notice {
        eprintln!("nemo: {n}");
    }
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let device_name = placed.device;
    let mut session = placed.session;
    if let Some(v) = vocabulary {
        session.set_vocabulary(v);
    }
    let engine = Engine::spawn(session);
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::system(s.clone()));
    }
    messages.push(Message::user(prompt));
    let thinking = ThinkingOptions {
        budget: cfg.thinking_budget().unwrap_or(Budget::Unlimited),
        min_tokens: a.min_thinking,
        closing_message: a.closing_message.clone(),
        grace_tokens: a.grace_tokens,
    };
    let mut req = Request::with_controls(messages, thinking, controls.clone());
    req.sampling = sampling;
    req.max_tokens = max_tokens;
    req.stop = a.stop.clone();
    req.constraint = constraint.as_ref().map(|(_, c)| c.clone());
    if let Some(agent) = &agent {
        req.tools = agent.offered();
        req.tool_choice = a.tools.tool_choice.clone().unwrap_or_default();
        req.tool_format = a.tools.tool_format.and_then(|f| f.0);
    }
    // If printing fails (a closed pipe), returning drops the engine, which cancels the
    // request instead of finishing it unseen.
    let backend = Backend::Local(engine);
    let mut extra = serde_json::Map::new();
    extra.insert("device".into(), json!(device_name));
    let (events, external) = start(&backend, agent, req)?;
    print_events(
        &a,
        events,
        &external,
        &controls,
        &constraint,
        extra,
        Printed {
            load_ms,
            max_tokens,
        },
    )
}

/// What the one settings path gave `run` (flags over config.toml and `NEMO_*`), for the
/// remote request.
struct RemoteSettings {
    sampling: SamplingParams,
    max_tokens: usize,
    budget: Budget,
}

/// `run --endpoint`: the same request (and agent loop, with the tools run here) and the
/// same printing, on the remote server.
fn run_remote(
    a: &RunArgs,
    url: &str,
    prompt: String,
    controls: Controls,
    constraint: Option<(&'static str, Constraint)>,
    agent: Option<Agent>,
    settings: RemoteSettings,
) -> anyhow::Result<()> {
    let t_load = Instant::now();
    let opts = a.endpoint.options(url, a.model.model.as_deref())?;
    let remote = interruptible("connect", &controls, move || Ok(Remote::connect(&opts)?))?;
    if let Some(n) = remote.notice() {
        eprintln!("nemo: {n}");
    }
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let RemoteSettings {
        sampling,
        max_tokens,
        budget,
    } = settings;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::system(s.clone()));
    }
    messages.push(Message::user(prompt));
    let thinking = ThinkingOptions {
        budget,
        min_tokens: a.min_thinking,
        closing_message: a.closing_message.clone(),
        grace_tokens: a.grace_tokens,
    };
    let budget_path = remote.budget_path(thinking.budget);
    let mut req = Request::with_controls(messages, thinking, controls.clone());
    req.sampling = sampling;
    req.max_tokens = max_tokens;
    req.stop = a.stop.clone();
    req.constraint = constraint.as_ref().map(|(_, c)| c.clone());
    if let Some(agent) = &agent {
        req.tools = agent.offered();
        req.tool_choice = a.tools.tool_choice.clone().unwrap_or_default();
        req.tool_format = a.tools.tool_format.and_then(|f| f.0);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("device".into(), json!(remote.device()));
    extra.insert("model".into(), json!(remote.model()));
    extra.insert("budget_path".into(), json!(budget_path.to_string()));
    let backend = Backend::Remote(remote);
    let (events, external) = start(&backend, agent, req)?;
    print_events(
        a,
        events,
        &external,
        &controls,
        &constraint,
        extra,
        Printed {
            load_ms,
            max_tokens,
        },
    )
}

/// Submits `req`, through the agent loop when tools are offered; returns the events and
/// the tools nemo does not run (their calls are the script's to answer).
fn start(
    backend: &Backend,
    agent: Option<Agent>,
    req: Request,
) -> anyhow::Result<(std::sync::mpsc::Receiver<Event>, Vec<String>)> {
    let external: Vec<String> = agent
        .as_ref()
        .map(|ag| ag.external.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    let events = match agent {
        None => backend.submit(req),
        Some(mut agent) => {
            // The loop runs beside this thread, which prints and watches for Ctrl+C.
            let (tx, rx) = channel();
            let submitter = backend.submitter();
            std::thread::Builder::new()
                .name("nemo-agent".into())
                .spawn(move || {
                    let mut emit = |e: Event| {
                        let _ = tx.send(e);
                    };
                    let _ = agent.run_turn(&submitter, req, &mut emit);
                })
                .map_err(|e| anyhow::anyhow!("cannot start the agent thread: {e}"))?;
            rx
        }
    };
    Ok((events, external))
}

/// Prints the events (`--json`: one object per line, the done event with `extra` and
/// `timings.load_ms`).
/// What the done event and the cut-short line report beside the events.
struct Printed {
    load_ms: f64,
    max_tokens: usize,
}

fn print_events(
    a: &RunArgs,
    events: std::sync::mpsc::Receiver<Event>,
    external: &[String],
    controls: &Controls,
    constraint: &Option<(&'static str, Constraint)>,
    extra: serde_json::Map<String, serde_json::Value>,
    limits: Printed,
) -> anyhow::Result<()> {
    let Printed {
        load_ms,
        max_tokens,
    } = limits;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let mut reasoning_open = false;
    let mut ended_with_newline = true;
    let mut cancelled_at: Option<Instant> = None;
    loop {
        if controls.is_cancelled()
            && cancelled_at.get_or_insert_with(Instant::now).elapsed() >= CANCEL_GRACE
        {
            // The engine is inside work it cannot leave at once: stop waiting for it.
            if !a.json && !ended_with_newline {
                writeln!(out)?;
            }
            out.flush()?;
            return Err(Interrupted.into());
        }
        let ev = match events.recv_timeout(POLL) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(anyhow::anyhow!(
                    "the engine stopped without finishing the request"
                ))
            }
        };
        match ev {
            Event::Reasoning(t) => {
                if a.json {
                    writeln!(out, "{}", json!({"event": "reasoning", "text": t}))?;
                } else if a.show_thinking {
                    reasoning_open = true;
                    write!(err, "{t}")?;
                }
            }
            Event::Content(t) => {
                if a.json {
                    writeln!(out, "{}", json!({"event": "content", "text": t}))?;
                } else {
                    if reasoning_open {
                        writeln!(err)?;
                        reasoning_open = false;
                    }
                    write!(out, "{t}")?;
                    ended_with_newline = t.ends_with('\n');
                }
                out.flush()?;
            }
            Event::ToolCall(c) => {
                if a.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"event": "tool_call", "id": c.id, "name": c.name(), "arguments": c.arguments()})
                    )?;
                } else if external.iter().any(|n| n == c.name()) {
                    // A tool nemo does not run: the call is the script's to answer.
                    if !ended_with_newline {
                        writeln!(out)?;
                        ended_with_newline = true;
                    }
                    writeln!(
                        out,
                        "{}",
                        json!({"id": c.id, "name": c.name(), "arguments": c.arguments()})
                    )?;
                } else {
                    writeln!(err, "nemo: tool {} {}", c.name(), c.arguments())?;
                }
                out.flush()?;
            }
            Event::ToolResult(r) => {
                if a.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"event": "tool_result", "id": r.id, "name": r.name, "ok": r.ok, "output": r.output, "truncated": r.truncated})
                    )?;
                    out.flush()?;
                } else {
                    let first = r.output.lines().next().unwrap_or("");
                    let state = if r.ok { "ok" } else { "failed" };
                    writeln!(
                        err,
                        "nemo: tool {} {state} ({} lines){}",
                        r.name,
                        r.output.lines().count(),
                        if r.ok {
                            String::new()
                        } else {
                            format!(": {first}")
                        }
                    )?;
                }
            }
            Event::Step { step, done } => {
                if a.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"event": "step", "step": step, "finish_reason": done.finish_reason, "usage": done.usage, "reused_tokens": done.reused_tokens})
                    )?;
                    out.flush()?;
                }
            }
            Event::Warning(w) => {
                if a.json {
                    writeln!(out, "{}", json!({"event": "warning", "text": w}))?;
                    out.flush()?;
                } else {
                    writeln!(err, "nemo: warning: {w}")?;
                }
            }
            Event::Done(d) => {
                if a.json {
                    let mut v = serde_json::Map::new();
                    v.insert("event".into(), json!("done"));
                    v.extend(extra.clone());
                    if let serde_json::Value::Object(fields) = serde_json::to_value(&d)? {
                        v.extend(fields);
                    }
                    v["timings"]["load_ms"] = json!(load_ms);
                    writeln!(out, "{}", serde_json::Value::Object(v))?;
                } else if !ended_with_newline {
                    writeln!(out)?;
                }
                out.flush()?;
                if let (Some((flag, _)), Some(c)) = (constraint, &d.constraint) {
                    if !c.complete {
                        return Err(anyhow::anyhow!(cut_short(flag, &d, max_tokens)));
                    }
                }
                if d.finish_reason == FinishReason::Cancelled {
                    return Err(Interrupted.into());
                }
                if d.finish_reason == FinishReason::MaxSteps {
                    return Err(anyhow::anyhow!(
                        "the model was still calling tools after --max-steps {} steps",
                        a.tools.max_steps
                    ));
                }
                return Ok(());
            }
            Event::Error(e) | Event::ContextFull(e) => {
                if e == "cancelled" {
                    return Err(Interrupted.into());
                }
                return Err(anyhow::anyhow!(e));
            }
            // `run` asks no one: a call that would ask is refused by the agent loop; and it
            // asks for no log-probabilities.
            Event::Started { .. }
            | Event::Progress { .. }
            | Event::ApprovalNeeded(_)
            | Event::Logprobs(_) => {}
        }
    }
}

/// The agent for `--tools`, checked before the model loads (a tool that could never run
/// under the approval mode, an unknown name or a bad schema file exits 2); None when no
/// tool is offered. The MCP servers whose tools it offers run until they are dropped.
fn agent_for_run(
    a: &RunArgs,
    cfg: &Config,
    config_file: &Path,
) -> anyhow::Result<Option<(Agent, Option<McpServers>)>> {
    use nemo::agent::policy::{offer_for_run, run_mode, ToolSelection};
    let flags = &a.tools;
    flags.check()?;
    let treq = flags.request()?;
    let selection = treq.selection.clone().unwrap_or(ToolSelection::None);
    if selection == ToolSelection::None && treq.external.is_empty() {
        if flags.tool_choice.is_some() {
            return Err(usage("--tool-choice needs tools: give --tools"));
        }
        return Ok(None);
    }
    if a.json_schema.is_some() || a.regex.is_some() || a.choice.is_some() || a.grammar.is_some() {
        return Err(usage(
            "--tools and the structured-output flags exclude each other (the tool calls have their own grammar)",
        ));
    }
    let mode = run_mode(flags.approval).map_err(usage)?;
    let built = super::tools::assemble(
        flags,
        cfg,
        config_file,
        &selection,
        mode,
        treq.external,
        false,
        |all, policy| offer_for_run(all, &selection, policy).map_err(usage),
    )?;
    if let Some(notice) = &built.notice {
        eprintln!("nemo: {notice}");
    }
    Ok(Some((built.agent, built.servers)))
}
