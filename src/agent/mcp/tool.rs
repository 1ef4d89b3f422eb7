//! One tool of an MCP server, as a nemo [`Tool`] named `SERVER.tool`.
//!
//! A run sends `tools/call` and blocks until the answer, the timeout (the server's
//! `tool_timeout_sec`, else the context's) or a cancel, whichever comes first. On a timeout
//! or a cancel the call is abandoned: the SDK sends the server `notifications/cancelled`
//! for it, and the connection stays usable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ErrorCode};
use rmcp::{Peer, RoleClient, ServiceError};
use tokio::runtime::Runtime;

use super::{output, StderrTail};
use crate::agent::{Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

/// How often a running call looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// What `start_one` learned about a tool, and the connection to call it through.
pub(super) struct Remote {
    pub spec: ToolSpec,
    pub server: String,
    pub remote_name: String,
    pub effect: Effect,
    pub command_line: String,
    pub peer: Peer<RoleClient>,
    pub timeout: Option<Duration>,
    pub stderr: Arc<StderrTail>,
}

/// A tool of an MCP server.
pub struct McpTool {
    remote: Remote,
    runtime: Arc<Runtime>,
}

/// How a call ended.
enum Outcome {
    Answered(Result<rmcp::model::CallToolResult, ServiceError>),
    TimedOut(Duration),
    Cancelled,
}

impl McpTool {
    pub(super) fn new(remote: Remote, runtime: Arc<Runtime>) -> McpTool {
        McpTool { remote, runtime }
    }

    /// The name of the server in config.toml.
    pub fn server(&self) -> &str {
        &self.remote.server
    }

    /// The tool's name on its server (the part after `SERVER.`).
    pub fn remote_name(&self) -> &str {
        &self.remote.remote_name
    }

    fn failed(&self, message: String) -> ToolError {
        ToolError::Failed {
            tool: self.remote.spec.name.clone(),
            message,
        }
    }
}

impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.remote.spec
    }

    fn effect(&self) -> Effect {
        self.remote.effect
    }

    fn preview(&self, _args: &serde_json::Value, _ctx: &ToolContext) -> Option<String> {
        Some(format!(
            "runs tool `{}` of the MCP server `{}` ({}); nemo cannot tell what it changes",
            self.remote.remote_name, self.remote.server, self.remote.command_line
        ))
    }

    fn run(&self, args: &serde_json::Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let mut params = CallToolRequestParams::new(self.remote.remote_name.clone());
        match args {
            serde_json::Value::Object(map) => params = params.with_arguments(map.clone()),
            serde_json::Value::Null => {}
            other => {
                return Err(ToolError::BadArguments {
                    tool: self.remote.spec.name.clone(),
                    message: format!("expected a JSON object, got {}", json_kind(other)),
                })
            }
        }
        if ctx.is_cancelled() {
            return Err(ToolError::Cancelled);
        }
        let timeout = self.remote.timeout.unwrap_or(ctx.timeout);
        let peer = self.remote.peer.clone();
        let cancel = Arc::clone(&ctx.cancel);
        let outcome = self.runtime.block_on(async move {
            // Dropping this future before its answer abandons the request: the SDK then
            // sends `notifications/cancelled` for it.
            let call = peer.call_tool(params);
            tokio::pin!(call);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut poll = tokio::time::interval(CANCEL_POLL);
            loop {
                tokio::select! {
                    answer = &mut call => return Outcome::Answered(answer),
                    _ = &mut deadline => return Outcome::TimedOut(timeout),
                    _ = poll.tick() => {
                        if cancel.load(Ordering::SeqCst) {
                            return Outcome::Cancelled;
                        }
                    }
                }
            }
        });
        match outcome {
            Outcome::Answered(Ok(result)) => Ok(output::tool_output(&result, ctx.output_cap)),
            Outcome::Answered(Err(ServiceError::McpError(e)))
                if e.code == ErrorCode::INVALID_PARAMS =>
            {
                Err(ToolError::BadArguments {
                    tool: self.remote.spec.name.clone(),
                    message: e.message.to_string(),
                })
            }
            Outcome::Answered(Err(ServiceError::McpError(e))) => Err(self.failed(format!(
                "the server answered error {}: {}",
                e.code.0, e.message
            ))),
            Outcome::Answered(Err(
                ServiceError::TransportClosed | ServiceError::TransportSend(_),
            )) => {
                let mut message = format!("MCP server `{}` is not running", self.remote.server);
                if let Some(line) = self.remote.stderr.last_line() {
                    message.push_str(&format!(" (its stderr: {line})"));
                }
                Err(self.failed(message))
            }
            Outcome::Answered(Err(e)) => Err(self.failed(e.to_string())),
            Outcome::TimedOut(after) => Ok(ToolOutput {
                ok: false,
                text: format!(
                    "{}: no answer within {}; the call was cancelled",
                    self.remote.spec.name,
                    seconds(after)
                ),
                truncated: false,
            }),
            Outcome::Cancelled => Err(ToolError::Cancelled),
        }
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
