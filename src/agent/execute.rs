//! One tool call, start to end: find the tool, ask the policy, ask the user when it says
//! so, run, and turn whatever happened into the `ToolResult` the model reads next.
//!
//! Invariants:
//! - Every path ends in a `ToolResult` with the call's id: an unknown tool, bad arguments,
//!   a refusal, a denial and a failure are all results with `ok: false` and one line saying
//!   what happened; nothing here panics or returns early without one.
//! - The user is asked only when the policy says `Ask`, with the tool's preview; a
//!   `Session` answer is remembered by the policy for this exact call.
//! - Where no one can answer (`ask` gives `None` and the call is not cancelled), a call that
//!   would ask is refused, never run.

use super::policy::{Decision, Policy};
use super::registry::Registry;
use super::{ToolContext, ToolError};
use crate::protocol::{ApprovalDecision, ApprovalRequest, ToolCall, ToolResult};

/// What became of a call, beside its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The tool ran (its result says whether it succeeded).
    Ran,
    /// The call could not be made: unknown tool, bad arguments, an unusable path.
    BadCall,
    /// A path led outside the workspace.
    OutsideWorkspace,
    /// The policy refused it.
    Refused,
    /// It needed the user and no one could answer.
    Unanswered,
    /// The user said no.
    Denied,
    /// The turn was cancelled before or while it ran.
    Cancelled,
}

/// Runs `call` through `policy`. `ask` shows the user an approval request and gives their
/// answer, or None when no one can answer (or the turn was cancelled meanwhile).
pub fn execute(
    registry: &Registry,
    policy: &mut Policy,
    call: &ToolCall,
    ctx: &ToolContext,
    ask: &mut dyn FnMut(&ApprovalRequest) -> Option<ApprovalDecision>,
) -> (ToolResult, Outcome) {
    let result = |ok: bool, output: String, truncated: bool| ToolResult {
        id: call.id.clone(),
        name: call.name().to_string(),
        ok,
        output,
        truncated,
    };
    let tool = match registry.get(call.name()) {
        Ok(t) => t,
        Err(e) => return (result(false, e.to_string(), false), Outcome::BadCall),
    };
    if ctx.is_cancelled() {
        return (
            result(false, ToolError::Cancelled.to_string(), false),
            Outcome::Cancelled,
        );
    }
    if let Err(e) = tool.check(call.arguments(), ctx) {
        let outcome = outcome_of(&e);
        return (result(false, e.to_string(), false), outcome);
    }
    match policy.decide(tool.as_ref(), call, ctx) {
        Decision::Run => {}
        Decision::Refuse(why) => {
            return (
                result(false, format!("refused: {why}"), false),
                Outcome::Refused,
            )
        }
        Decision::Ask { reason, preview } => {
            let request = ApprovalRequest {
                call: call.clone(),
                reason: reason.clone(),
                preview,
            };
            match ask(&request) {
                None if ctx.is_cancelled() => {
                    return (result(false, ToolError::Cancelled.to_string(), false), Outcome::Cancelled)
                }
                None => {
                    return (
                        result(
                            false,
                            format!("refused: `{}` {reason}, which needs the user's approval, and no one can answer here", call.name()),
                            false,
                        ),
                        Outcome::Unanswered,
                    )
                }
                Some(decision) => {
                    if !policy.answer(call, &decision) {
                        let note = match decision {
                            ApprovalDecision::Deny { note: Some(n) } if !n.trim().is_empty() => {
                                format!(": {}", n.trim())
                            }
                            _ => String::new(),
                        };
                        return (
                            result(false, format!("the user denied this call{note}"), false),
                            Outcome::Denied,
                        );
                    }
                }
            }
        }
    }
    match tool.run(call.arguments(), ctx) {
        Ok(out) => (result(out.ok, out.text, out.truncated), Outcome::Ran),
        Err(e) => {
            let outcome = outcome_of(&e);
            (result(false, e.to_string(), false), outcome)
        }
    }
}

/// What a `ToolError` means for the call.
fn outcome_of(e: &ToolError) -> Outcome {
    match e {
        ToolError::Cancelled => Outcome::Cancelled,
        ToolError::OutsideWorkspace { .. } => Outcome::OutsideWorkspace,
        ToolError::BadArguments { .. }
        | ToolError::BadPath { .. }
        | ToolError::Unknown(_)
        | ToolError::Workspace { .. } => Outcome::BadCall,
        ToolError::Failed { .. } => Outcome::Ran,
    }
}
