//! `--endpoint URL`: an OpenAI-compatible server (vLLM, NIM, llama.cpp's server, another
//! `nemo serve`) behind the same face as the in-process engine: `submit(Request)` gives a
//! receiver of `protocol::Event`s, so `nemo run` and `nemo chat` drive either one
//! ([`Backend`]).
//!
//! Files: `body.rs` (Request → JSON), `turn.rs` (one turn: the stream, its parsing, the
//! budget paths), `local_template.rs` (the remote model's tokenizer and template, held
//! here for the two-request path), `hub_template.rs` (those files from the hub).
//!
//! Invariants:
//! - Each turn runs on a thread of its own with blocking HTTP (`ureq`); a cancel is seen
//!   between chunks, and then the connection is dropped, which cancels the generation on
//!   servers that notice (vLLM, nemo serve). The front end never waits for that thread.
//! - Events are the engine's: reasoning (from `reasoning` or `reasoning_content`, or
//!   split from `<think>` in the content when the server runs no reasoning parser),
//!   content, tool calls (the server's `tool_calls`, or nemo's own parsers on the text),
//!   then `Done` with timings measured here. A connection that drops ends the turn with
//!   `Event::Error` saying so, after the partial answer's events.
//! - The thinking budget takes one path per turn ([`BudgetPath`]): the server's own field
//!   where it has one, else two requests (reasoning with `max_tokens` = budget, then the
//!   answer through `/v1/completions` from the conversation rendered here with the model's
//!   own template), else none.

mod body;
mod hub_template;
pub mod local_template;
mod turn;

use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::engine::prompt::ThinkingStyle;
use crate::engine::{Engine, Submitter};
use crate::protocol::{Budget, Event, Op, Request};
pub use local_template::LocalTemplate;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("--endpoint {url}: {msg}")]
    Endpoint { url: String, msg: String },
    #[error("--endpoint {url}: cannot reach it: {msg}")]
    Unreachable { url: String, msg: String },
    #[error("--endpoint {url} answered {status}: {msg}")]
    Status {
        url: String,
        status: u16,
        msg: String,
    },
    #[error("--model {asked}: the endpoint serves {served}")]
    UnknownModel { asked: String, served: String },
    #[error("--tokenizer {0}")]
    Tokenizer(String),
    #[error("the connection to {host} dropped: {msg} (the partial answer is kept)")]
    Dropped { host: String, msg: String },
    #[error("{host}: {msg}")]
    Server { host: String, msg: String },
}

/// Which way a turn's thinking budget reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetPath {
    /// The server's own field (vLLM `thinking_token_budget`, NIM
    /// `nvext.max_thinking_tokens`, nemo serve takes both).
    ServerField,
    /// Reasoning with `max_tokens` = budget, then the answer through `/v1/completions`.
    TwoRequest,
    /// No budget, or no way to apply one.
    None,
}

impl fmt::Display for BudgetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetPath::ServerField => "server_field",
            BudgetPath::TwoRequest => "two_request",
            BudgetPath::None => "none",
        })
    }
}

/// What serves the endpoint, from `/v1/models`' `owned_by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Vllm,
    Nim,
    Nemo,
    Other,
}

impl ServerKind {
    fn from_owner(owner: &str) -> ServerKind {
        match owner {
            "vllm" => ServerKind::Vllm,
            "nemo" => ServerKind::Nemo,
            "nvidia" | "system" => ServerKind::Nim,
            _ => ServerKind::Other,
        }
    }

    /// The budget field this server reads, if any.
    fn budget_field(self) -> Option<&'static str> {
        match self {
            ServerKind::Vllm | ServerKind::Nemo => Some("thinking_token_budget"),
            ServerKind::Nim => Some("nvext.max_thinking_tokens"),
            ServerKind::Other => None,
        }
    }
}

/// How to reach the server.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    /// Base URL, e.g. `http://host:8000/v1` (`/v1` is added to a bare host).
    pub endpoint: String,
    pub api_key: Option<String>,
    /// The remote model; default: the first `/v1/models` lists.
    pub model: Option<String>,
    /// The model's tokenizer and template here (`--tokenizer DIR|FILE.gguf`).
    pub tokenizer: Option<PathBuf>,
    /// Fields merged into every chat request body (`NEMO_ENDPOINT_EXTRA_BODY`): a server's
    /// own options, e.g. llama.cpp's `grammar`.
    pub extra_body: serde_json::Map<String, Value>,
}

pub(crate) struct Inner {
    base: String,
    host: String,
    agent: ureq::Agent,
    api_key: Option<String>,
    model: String,
    kind: ServerKind,
    local: Option<LocalTemplate>,
    style: ThinkingStyle,
    /// The model's context, when `/v1/models` says (`max_model_len`: vLLM, nemo serve).
    context: Option<usize>,
    extra_body: serde_json::Map<String, Value>,
    /// A one-line remark for the front end (why no budget path is available).
    notice: Option<String>,
}

/// A connected endpoint; cheap to share. Its `Op`s are served by a thread of its own,
/// as the engine thread serves the local model's (each turn on a thread of its own).
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
    ops: Sender<Op>,
}

/// `host:port` of a URL, for the status bar and messages.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_string()
}

impl Remote {
    /// Checks the endpoint (`GET /v1/models`), picks the model and learns which server it
    /// is; loads `--tokenizer` when given.
    pub fn connect(opts: &RemoteOptions) -> Result<Remote, RemoteError> {
        let url = opts.endpoint.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RemoteError::Endpoint {
                url,
                msg: "must start with http:// or https://".into(),
            });
        }
        let after_scheme = url.split_once("://").map_or("", |(_, r)| r);
        let base = if after_scheme.contains('/') {
            url.clone()
        } else {
            format!("{url}/v1")
        };
        let host = host_of(&base);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(600))
            .build();
        let api_key = opts.api_key.clone().filter(|k| !k.is_empty());
        let mut get = agent.get(&format!("{base}/models"));
        if let Some(k) = &api_key {
            get = get.set("Authorization", &format!("Bearer {k}"));
        }
        let listed: Value = match get.call() {
            Ok(r) => r
                .into_string()
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| RemoteError::Endpoint {
                    url: base.clone(),
                    msg: "/models did not answer JSON".into(),
                })?,
            Err(ureq::Error::Status(status, r)) => {
                return Err(RemoteError::Status {
                    url: base.clone(),
                    status,
                    msg: error_message(r),
                })
            }
            Err(e) => {
                return Err(RemoteError::Unreachable {
                    url: base.clone(),
                    msg: e.to_string(),
                })
            }
        };
        let context_of = |id: &str| {
            listed["data"].as_array().and_then(|a| {
                a.iter()
                    .find(|m| m["id"].as_str() == Some(id))
                    .and_then(|m| m["max_model_len"].as_u64())
                    .map(|n| n as usize)
            })
        };
        let cards: Vec<(String, String)> = listed["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some((
                            m["id"].as_str()?.to_string(),
                            m["owned_by"].as_str().unwrap_or("").to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (model, owner) = match &opts.model {
            Some(m) => match cards.iter().find(|(id, _)| id == m) {
                Some(c) => c.clone(),
                None if cards.is_empty() => (m.clone(), String::new()),
                None => {
                    return Err(RemoteError::UnknownModel {
                        asked: m.clone(),
                        served: cards
                            .iter()
                            .map(|(id, _)| format!("`{id}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            },
            None => cards
                .first()
                .cloned()
                .ok_or_else(|| RemoteError::Endpoint {
                    url: base.clone(),
                    msg: "/models lists no model; name one with --model".into(),
                })?,
        };
        let kind = ServerKind::from_owner(&owner);
        // The template the two-request path renders with: --tokenizer, else the model's
        // own small files from the hub when the server has no budget field of its own.
        let mut notice = None;
        let local = match opts.tokenizer.as_deref() {
            Some(p) => Some(LocalTemplate::open(p)?),
            None if kind.budget_field().is_none() && crate::hub::resolve::is_repo_id(&model) => {
                match hub_template::fetch(&model)
                    .map_err(|e| e.to_string())
                    .and_then(|dir| LocalTemplate::open(&dir).map_err(|e| e.to_string()))
                {
                    Ok(l) => Some(l),
                    Err(e) => {
                        notice = Some(format!(
                            "the thinking budget cannot be applied on this server ({e}); give --tokenizer DIR|FILE.gguf"
                        ));
                        None
                    }
                }
            }
            None => None,
        };
        let style = local
            .as_ref()
            .map(|l| l.style())
            .unwrap_or_else(|| local_template::style_from_name(&model));
        let context = context_of(&model);
        let inner = Arc::new(Inner {
            base,
            host,
            agent,
            api_key,
            model,
            kind,
            notice,
            local,
            style,
            context,
            extra_body: opts.extra_body.clone(),
        });
        let (ops, rx) = channel::<Op>();
        let served = inner.clone();
        std::thread::Builder::new()
            .name("nemo-remote".into())
            .spawn(move || {
                for op in rx {
                    if let Op::Generate(req, events) = op {
                        let inner = served.clone();
                        let spawned = std::thread::Builder::new()
                            .name("nemo-remote-turn".into())
                            .spawn({
                                let events = events.clone();
                                move || turn::run(&inner, *req, &events)
                            });
                        if let Err(e) = spawned {
                            let _ = events.send(Event::Error(format!(
                                "cannot start the request thread: {e}"
                            )));
                        }
                    }
                }
            })
            .map_err(|e| RemoteError::Endpoint {
                url: opts.endpoint.clone(),
                msg: format!("cannot start the request thread: {e}"),
            })?;
        Ok(Remote { inner, ops })
    }

    /// The remote model's name.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// `endpoint · HOST`, where the status bar and the done event say `cpu` for a local
    /// model.
    pub fn device(&self) -> String {
        format!("endpoint · {}", self.inner.host)
    }

    /// The remote model's context length, when the server says.
    pub fn context(&self) -> Option<usize> {
        self.inner.context
    }

    /// A one-line remark for the user (why the budget cannot be applied), if any.
    pub fn notice(&self) -> Option<&str> {
        self.inner.notice.as_deref()
    }

    /// Where the model's tokenizer and template were read from, when they are here.
    pub fn template_source(&self) -> Option<&std::path::Path> {
        self.inner.local.as_ref().map(|l| l.path())
    }

    pub fn kind(&self) -> ServerKind {
        self.inner.kind
    }

    /// The path a turn with `budget` takes (module doc).
    pub fn budget_path(&self, budget: Budget) -> BudgetPath {
        self.inner.budget_path(budget)
    }

    /// Runs `req` on its own thread; events as the engine sends them.
    pub fn submit(&self, req: Request) -> Receiver<Event> {
        self.submitter().submit(req)
    }

    /// A handle that queues requests from another thread (the agent loop's), as
    /// `Engine::submitter`.
    pub fn submitter(&self) -> Submitter {
        Submitter::from_ops(self.ops.clone())
    }
}

impl Inner {
    fn budget_path(&self, budget: Budget) -> BudgetPath {
        if !matches!(budget, Budget::Tokens(_)) {
            return BudgetPath::None;
        }
        if self.kind.budget_field().is_some() {
            BudgetPath::ServerField
        } else if self.local.is_some() {
            BudgetPath::TwoRequest
        } else {
            BudgetPath::None
        }
    }
}

/// The message of an error answer (OpenAI's shape, or the body's first line).
fn error_message(r: ureq::Response) -> String {
    let text = r.into_string().unwrap_or_default();
    let v: Option<Value> = serde_json::from_str(&text).ok();
    let msg = v
        .as_ref()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or(v["error"].as_str())
                .or(v["detail"].as_str())
                .or(v["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.lines().next().unwrap_or("").to_string());
    msg.chars().take(300).collect()
}

/// The local engine or a remote endpoint, behind one face.
pub enum Backend {
    Local(Engine),
    Remote(Remote),
}

impl Backend {
    /// Queues a request; events arrive on the receiver, ending with `Done` or `Error`.
    pub fn submit(&self, req: Request) -> Receiver<Event> {
        match self {
            Backend::Local(e) => e.submit(req),
            Backend::Remote(r) => r.submit(req),
        }
    }

    /// A handle that queues requests from another thread (the agent loop's).
    pub fn submitter(&self) -> Submitter {
        match self {
            Backend::Local(e) => e.submitter(),
            Backend::Remote(r) => r.submitter(),
        }
    }

    /// Forgets the sequence state (`/clear`); the remote keeps none of ours.
    pub fn reset(&self) {
        if let Backend::Local(e) = self {
            e.reset();
        }
    }
}

impl From<Remote> for Backend {
    fn from(r: Remote) -> Backend {
        Backend::Remote(r)
    }
}

impl From<Engine> for Backend {
    fn from(e: Engine) -> Backend {
        Backend::Local(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_authority_without_credentials() {
        assert_eq!(host_of("http://a.b:8000/v1"), "a.b:8000");
        assert_eq!(host_of("https://u:p@x/v1"), "x");
        assert_eq!(host_of("http://[::1]:9/v1"), "[::1]:9");
    }
}
