//! The agent loop: one user turn as model steps and tool calls. The model answers, or
//! calls tools; approved calls run, their results go back as `tool` messages, and the
//! model takes another step, until it answers without calling or the step limit is met.
//!
//! Invariants:
//! - Every call the model makes gets exactly one `ToolResult` event and one `tool`
//!   message (a refusal, a denial and a failure too), before the next step starts; a call
//!   to a tool offered without a runner (`--tools @FILE.json`) ends the turn instead, with
//!   `finish_reason` `tool_calls`, for the caller to answer.
//! - The request's `tool_choice` holds for the first step only; later steps are `auto`.
//! - A step's own `Done` goes out as `Event::Step`; the turn ends with one `Event::Done`
//!   that sums the steps' usage and counts them (`MaxSteps` when the limit cut the turn).
//! - Each step's prompt is the conversation so far, so the session restores the
//!   checkpoint at the last message boundary and feeds only what the step added.
//! - When a step's prompt no longer fits the context, the oldest tool outputs are elided
//!   (one at a time, each replaced by a marker) and the step is tried again; when none is
//!   left, the turn ends with `Event::Error`.
//! - A cancel (the request's controls) stops the model step, the running tool (its
//!   process group) and any wait for an approval, and ends the turn as `Cancelled`.

use std::time::Instant;

use super::execute::execute;
use super::policy::Policy;
use super::registry::Registry;
use super::ToolContext;
use crate::engine::Submitter;
use crate::protocol::{
    ApprovalDecision, ApprovalRequest, Done, Event, FinishReason, Message, Request, ToolCall,
    ToolChoice, ToolResult, ToolSpec, Usage,
};

/// Steps per user turn when none is configured (`--max-steps`).
pub const DEFAULT_MAX_STEPS: usize = 16;

/// What replaces a tool output elided to make room in the context.
pub const ELIDED: &str = "[output elided: the context is full]";

/// The tools of a conversation and how they run.
pub struct Agent {
    /// The tools nemo runs.
    pub registry: Registry,
    /// Tools offered without a runner: a call to one ends the turn (`tool_calls`).
    pub external: Vec<ToolSpec>,
    pub policy: Policy,
    pub ctx: ToolContext,
    pub max_steps: usize,
    /// Whether someone can answer an approval request (chat); in `nemo run` a call that
    /// would ask is refused instead.
    pub interactive: bool,
}

/// How a turn ended: what it added to the conversation, and its summed `Done`.
#[derive(Debug)]
pub struct TurnEnd {
    /// The messages after the user's: each step's assistant message (with its calls) and
    /// the calls' `tool` messages.
    pub messages: Vec<Message>,
    pub done: Done,
}

impl Agent {
    /// Every tool the model is offered: those that run, then those without a runner.
    pub fn offered(&self) -> Vec<ToolSpec> {
        let mut specs = self.registry.specs();
        specs.extend(self.external.iter().cloned());
        specs
    }

    /// Runs the turn that `first` starts (its messages end with the user's; its tools are
    /// set from `offered` when empty). Events go to `emit`; the engine's per-step `Done`s
    /// become `Step`s and one `Done` ends the turn. `Err` carries the one-line reason a
    /// step failed (after `Event::Error` was emitted with it).
    pub fn run_turn(
        &mut self,
        engine: &Submitter,
        mut first: Request,
        emit: &mut dyn FnMut(Event),
    ) -> Result<TurnEnd, String> {
        let t0 = Instant::now();
        if first.tools.is_empty() {
            first.tools = self.offered();
        }
        let controls = first.controls().clone();
        self.ctx.cancel = controls.cancel_flag();
        let mut conversation = first.messages.clone();
        let user_len = conversation.len();
        let mut steps: Vec<Done> = Vec::new();
        let mut step_req = first;
        let finish = loop {
            let step = steps.len() + 1;
            let (done, answer) = match self.step(engine, &step_req, emit) {
                StepEnd::Done(d, a) => (d, a),
                StepEnd::ContextFull(why) => {
                    if let Some(name) = elide_oldest(&mut conversation[user_len..]) {
                        emit(Event::Warning(format!(
                            "the context is full: the oldest tool output ({name}) was elided"
                        )));
                        step_req.messages = conversation.clone();
                        continue;
                    }
                    let msg = format!(
                        "{why}; no tool output is left to elide (start a new conversation, or a larger --context)"
                    );
                    emit(Event::Error(msg.clone()));
                    return Err(msg);
                }
                StepEnd::Error(e) => {
                    emit(Event::Error(e.clone()));
                    return Err(e);
                }
            };
            emit(Event::Step {
                step,
                done: done.clone(),
            });
            let finish = done.finish_reason;
            steps.push(done);
            let mut msg = Message::assistant(answer.content);
            if !answer.reasoning.is_empty() {
                msg.reasoning_content = Some(answer.reasoning);
            }
            msg.tool_calls = answer.calls.clone();
            let calls = answer.calls;
            conversation.push(msg);
            if finish != FinishReason::ToolCalls || calls.is_empty() {
                break finish;
            }
            // A call to a tool nemo cannot run goes back to the caller with the rest.
            if calls
                .iter()
                .any(|c| self.external.iter().any(|t| t.name == c.name()))
            {
                break FinishReason::ToolCalls;
            }
            for call in &calls {
                let result = self.run_call(call, &controls, emit);
                conversation.push(Message::tool(
                    result.id.clone(),
                    result.name.clone(),
                    result.output.clone(),
                ));
                emit(Event::ToolResult(result));
            }
            if controls.is_cancelled() {
                break FinishReason::Cancelled;
            }
            if steps.len() >= self.max_steps {
                break FinishReason::MaxSteps;
            }
            step_req.messages = conversation.clone();
            step_req.tool_choice = ToolChoice::Auto;
        };
        let done = sum(&steps, finish, t0);
        emit(Event::Done(done.clone()));
        Ok(TurnEnd {
            messages: conversation.split_off(user_len),
            done,
        })
    }

    /// One model step: forwards its events, keeps its text and calls.
    fn step(&self, engine: &Submitter, req: &Request, emit: &mut dyn FnMut(Event)) -> StepEnd {
        let mut answer = Answer::default();
        for ev in engine.submit(req.clone()) {
            match ev {
                Event::Done(d) => return StepEnd::Done(d, answer),
                Event::ContextFull(e) => return StepEnd::ContextFull(e),
                Event::Error(e) => return StepEnd::Error(e),
                Event::Content(t) => {
                    answer.content.push_str(&t);
                    emit(Event::Content(t));
                }
                Event::Reasoning(t) => {
                    answer.reasoning.push_str(&t);
                    emit(Event::Reasoning(t));
                }
                Event::ToolCall(c) => {
                    answer.calls.push(c.clone());
                    emit(Event::ToolCall(c));
                }
                other => emit(other),
            }
        }
        StepEnd::Error("the engine stopped without finishing the request".into())
    }

    /// Runs (or refuses) one call; asks through `emit` and the controls when interactive.
    fn run_call(
        &mut self,
        call: &ToolCall,
        controls: &crate::protocol::Controls,
        emit: &mut dyn FnMut(Event),
    ) -> ToolResult {
        let interactive = self.interactive;
        let mut ask = |r: &ApprovalRequest| -> Option<ApprovalDecision> {
            if !interactive {
                return None;
            }
            emit(Event::ApprovalNeeded(r.clone()));
            controls.wait_answer(&r.call.id, None)
        };
        execute(&self.registry, &mut self.policy, call, &self.ctx, &mut ask).0
    }
}

#[derive(Default)]
struct Answer {
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
}

enum StepEnd {
    Done(Done, Answer),
    ContextFull(String),
    Error(String),
}

/// Replaces the oldest tool output not yet elided; gives its tool's name, or None when
/// none is left.
fn elide_oldest(messages: &mut [Message]) -> Option<String> {
    let m = messages
        .iter_mut()
        .find(|m| m.role == "tool" && m.content != ELIDED)?;
    m.content = ELIDED.to_string();
    Some(m.name.clone().unwrap_or_default())
}

/// The turn's `Done`: usage summed over the steps, the first step's time to first token,
/// the last one's decode speed, the reuse of every step.
fn sum(steps: &[Done], finish: FinishReason, t0: Instant) -> Done {
    let mut usage = Usage::default();
    for d in steps {
        usage.prompt_tokens += d.usage.prompt_tokens;
        usage.reasoning_tokens += d.usage.reasoning_tokens;
        usage.completion_tokens += d.usage.completion_tokens;
    }
    let mut timings = steps.first().map(|d| d.timings.clone()).unwrap_or_default();
    if let Some(last) = steps.last() {
        timings.decode_tokens_per_s = last.timings.decode_tokens_per_s;
    }
    timings.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    Done {
        finish_reason: finish,
        usage,
        timings,
        reused_tokens: steps.iter().map(|d| d.reused_tokens).sum(),
        thinking_forced: steps.iter().any(|d| d.thinking_forced),
        steps: steps.len(),
        constraint: steps.first().and_then(|d| d.constraint.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elision_takes_the_oldest_tool_output_first_and_ends() {
        let mut m = vec![
            Message::assistant("a"),
            Message::tool("c0", "t", "one"),
            Message::tool("c1", "t", "two"),
        ];
        assert_eq!(elide_oldest(&mut m).as_deref(), Some("t"));
        assert_eq!(m[1].content, ELIDED);
        assert_eq!(m[2].content, "two");
        assert!(elide_oldest(&mut m).is_some());
        assert_eq!(m[2].content, ELIDED);
        assert_eq!(elide_oldest(&mut m), None);
        assert_eq!(m[0].content, "a");
    }
}
