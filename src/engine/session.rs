//! `Session`: one conversation's sequence state and the generation loop.
//!
//! The sequence lives in a `Sequence` (the CPU model and a host state, or the GPU model and
//! a device session); everything here is the same on either.
//!
//! Invariants:
//! - `tokens` are exactly the tokens fed into the sequence (`sequence.len() == tokens.len()`).
//! - Every checkpoint's tokens are a prefix of `tokens` (checkpoints past a restore point
//!   are dropped when the sequence goes another way).
//! - The next token is drawn where the logits are: on the GPU (no penalty, the bans fit
//!   the device draw) only its id comes back; otherwise the logits come to the host and
//!   the host `Sampler` picks (`Sequence`'s module doc). Bans, the thinking budget, stop
//!   strings and EOS are this loop's, the same on either path.
//! - A constrained answer (structured output, tool calls) follows `engine::grammar`'s
//!   `Guide` once reasoning is over: tokens it forces are fed like the budget's forced
//!   text, and each draw takes its mask, on the host (a masked step downloads the logits
//!   on the GPU; `ConstraintStats::host_steps` counts them).
//! - A request renders the whole conversation, restores the longest checkpoint (or the
//!   live state) whose tokens are a prefix of the new prompt, and feeds only the rest,
//!   at least one token so the next logits exist. Checkpoints are taken where earlier
//!   messages end, which stays right when the template drops earlier reasoning.
//! - Preparing a request costs one render and the tokens after the last shared turn
//!   marker (`PromptBuilder`), never a pass per earlier message; the template renders in
//!   its helper process under a step, memory and time budget (`chat::template_sandbox`).
//!   A caller that rendered the request already (`render`, to choose a conversation)
//!   hands that plan to `generate_rendered`, and nothing is rendered again.
//! - With `Request::logprobs` every token is picked by the host `Sampler` (a GPU's logits
//!   come over: the numbers are the sampler's, `engine::sampler`'s module doc), and each
//!   generated token's entry goes out as `Event::Logprobs` before its text
//!   (`engine::logprobs`). Without it nothing of this is computed.
//! - A cancel is seen between every step of preparing a request (render, tokenization,
//!   restore) and while the template renders or a long text is tokenized; what was
//!   computed is dropped and the request ends with `EngineError::Cancelled`. Once feeding
//!   starts it is checked before every prefill chunk and every token.

use std::sync::Arc;
use std::time::Instant;

use tokenizers::Tokenizer;

use super::detokenizer::Detokenizer;
use super::grammar::{Grammar, Guide, Vocabulary};
use super::logprobs::Logprobs;
use super::prompt::{
    PromptBuilder, PromptPlan, PromptStats, PromptTools, ToolSupport, THINK_END, THINK_START,
};
use super::sampler::{Sampler, StepLogprobs};
use super::sequence::{Checkpoint, Sequence, StepLogits};
use super::stop::StopMatcher;
use super::thinking::{Action, ThinkingController};
use super::EngineError;
use crate::chat::reasoning_parser::ReasoningParser;
use crate::chat::stream_parser::{Piece, StreamParser};
use crate::chat::template::{nano_v2_fallback, ChatTemplate};
use crate::chat::tool_parser::{self, ToolParser};
use crate::model::{Logits, Model, ModelFolder};
use crate::protocol::{
    Done, Event, FinishReason, Request, Timings, ToolChoice, ToolFormat, ToolSpec, Usage,
};
use crate::state::CacheConfig;

/// Generated text on its way out: reasoning / answer / tool calls split, stop strings on
/// the answer, events. Keeps the thinking controller in step with what the parser saw.
struct TextRouter {
    parser: StreamParser,
    stopper: StopMatcher,
    content_seen: bool,
    /// Tool calls parsed whole so far.
    calls: usize,
}

impl TextRouter {
    /// Returns true when a stop string matched (nothing after it is emitted).
    fn push(
        &mut self,
        text: &str,
        thinking: &mut ThinkingController,
        emit: &mut dyn FnMut(Event),
    ) -> bool {
        let pieces = self.parser.push(text);
        if self.route(pieces, Some(thinking), emit) {
            return true;
        }
        if self.parser.in_reasoning() != thinking.in_reasoning() {
            thinking.set_in_reasoning(self.parser.in_reasoning());
        }
        false
    }

    fn route(
        &mut self,
        pieces: Vec<Piece>,
        mut thinking: Option<&mut ThinkingController>,
        emit: &mut dyn FnMut(Event),
    ) -> bool {
        for piece in pieces {
            match piece {
                Piece::Reasoning(r) => {
                    if let Some(t) = thinking.as_deref_mut() {
                        t.reasoning_text(&r);
                    }
                    emit(Event::Reasoning(r));
                }
                Piece::Content(c) => {
                    self.content_seen = true;
                    if self.content(&c, emit) {
                        return true;
                    }
                }
                Piece::Call { call, .. } => {
                    self.content_seen = true;
                    // Text held for a possible stop string goes out before the call.
                    let held = self.stopper.finish();
                    if !held.is_empty() {
                        emit(Event::Content(held));
                    }
                    self.calls += 1;
                    emit(Event::ToolCall(call));
                }
                Piece::Malformed { text, warning } => {
                    self.content_seen = true;
                    emit(Event::Warning(warning));
                    if self.content(&text, emit) {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn content(&mut self, c: &str, emit: &mut dyn FnMut(Event)) -> bool {
        let r = self.stopper.push(c);
        if !r.emit.is_empty() {
            emit(Event::Content(r.emit));
        }
        r.stopped
    }

    /// Flushes what the parsers and the stop matcher still hold.
    fn finish(&mut self, emit: &mut dyn FnMut(Event)) {
        let pieces = self.parser.finish();
        if self.route(pieces, None, emit) {
            return;
        }
        let held = self.stopper.finish();
        if !held.is_empty() {
            emit(Event::Content(held));
        }
    }
}

/// A prefix for this request's tool-call ids, so ids stay unique across the turns of a
/// conversation (the parser numbers the calls within one answer).
fn call_id_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("call_{:08x}_", (nanos as u64 ^ (nanos >> 64) as u64) as u32)
}

/// Session settings that are not per request.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub cache: CacheConfig,
    /// Context length; defaults to the model's `max_position_embeddings` (on the GPU, at
    /// most what fits the free device memory: `Sequence::cuda`).
    pub context: Option<usize>,
    /// Tokens per prefill call (a long prompt never needs memory for all of it at once).
    pub prefill_chunk: usize,
    /// Checkpoints kept (each holds a copy of the Mamba states).
    pub max_checkpoints: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            cache: CacheConfig::default(),
            context: None,
            prefill_chunk: 512,
            max_checkpoints: 8,
        }
    }
}

pub struct Session {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    prompt: PromptBuilder,
    eos: Vec<u32>,
    think_end_id: Option<u32>,
    /// The tool-call format the template and vocabulary show (`tool_parser::detect`).
    detected_tool_format: Option<ToolFormat>,
    sequence: Sequence,
    tokens: Vec<u32>,
    checkpoints: Vec<Checkpoint>,
    opts: SessionOptions,
    /// Tokens fed through the model over the session's life (prompt and generated).
    fed_total: usize,
    /// The tokens as bytes for constrained decoding, built at the first constrained
    /// request.
    vocabulary: Option<Arc<Vocabulary>>,
}

impl Session {
    /// A session on the CPU.
    pub fn new(folder: &ModelFolder, opts: SessionOptions) -> Result<Self, EngineError> {
        let sequence = Sequence::cpu(folder.model.clone(), opts.cache);
        Self::with_sequence(folder, sequence, opts)
    }

    /// A session whose sequence lives in `sequence` (e.g. `Sequence::cuda`), built for
    /// `folder`'s model with the same `opts`.
    pub fn with_sequence(
        folder: &ModelFolder,
        sequence: Sequence,
        opts: SessionOptions,
    ) -> Result<Self, EngineError> {
        let template = match &folder.template {
            Some(t) => t.clone(),
            None => Arc::new(
                ChatTemplate::compile(nano_v2_fallback(), None, None)
                    .map_err(|e| EngineError::Template(e.to_string()))?
                    .with_name("built-in Nemotron Nano v2 template"),
            ),
        };
        let detected_tool_format = tool_parser::detect(template.source(), |t| {
            folder.tokenizer.token_to_id(t).is_some()
        });
        Ok(Session {
            detected_tool_format,
            model: folder.model.clone(),
            tokenizer: folder.tokenizer.clone(),
            prompt: PromptBuilder::new(template, folder.tokenizer.clone()),
            eos: folder.eos_token_ids.clone(),
            think_end_id: folder.tokenizer.token_to_id(THINK_END),
            sequence,
            tokens: Vec::new(),
            checkpoints: Vec::new(),
            opts,
            fed_total: 0,
            vocabulary: None,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn context(&self) -> usize {
        let c = self.opts.context.unwrap_or(self.model.context());
        self.sequence.capacity().map_or(c, |cap| c.min(cap))
    }

    /// Tokens drawn on the device (the rest were picked by the host `Sampler`).
    pub fn device_draws(&self) -> usize {
        self.sequence.device_draws()
    }

    /// Draws tokens on the device when it can (the default) or always on the host; see
    /// `Sequence::set_device_sampling`.
    pub fn set_device_sampling(&mut self, on: bool) {
        self.sequence.set_device_sampling(on);
    }

    /// Where the sequence runs: `cpu`, or `cuda · <GPU name>`.
    pub fn device(&self) -> String {
        self.sequence.device()
    }

    /// Tokens currently in the sequence state.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens fed through the model since the session began: shows what reuse saved.
    pub fn fed_total(&self) -> usize {
        self.fed_total
    }

    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.len()
    }

    /// Forgets the sequence state and every checkpoint.
    pub fn reset(&mut self) {
        self.sequence.reset();
        self.tokens.clear();
        self.checkpoints.clear();
    }

    /// The model's tokens as llguidance sees them (built once, then shared).
    pub fn vocabulary(&mut self) -> Result<Arc<Vocabulary>, EngineError> {
        if let Some(v) = &self.vocabulary {
            return Ok(v.clone());
        }
        let v = Arc::new(Vocabulary::from_tokenizer(
            &self.tokenizer,
            self.model.vocab_size(),
            &self.eos,
        )?);
        self.vocabulary = Some(v.clone());
        Ok(v)
    }

    /// Uses `v` (built from this session's model and tokenizer, e.g. by a front end that
    /// checked a constraint before loading) instead of building it again.
    pub fn set_vocabulary(&mut self, v: Arc<Vocabulary>) {
        self.vocabulary = Some(v);
    }

    /// The grammar `req`'s answer is held to: its constraint, else its tools' call format
    /// (unless the tool choice is `none`); None when there is neither.
    fn guide(&mut self, req: &Request) -> Result<Option<Guide>, EngineError> {
        let grammar = match &req.constraint {
            Some(c) => Grammar::from_constraint(c)?,
            None if Self::offered_tools(req).is_empty() => return Ok(None),
            None => {
                let vocab = self.vocabulary()?;
                let format = self.tool_format(req);
                match Grammar::tool_calls(&vocab, format, &req.tools, &req.tool_choice)? {
                    Some(g) => g,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(Guide::new(self.vocabulary()?, &grammar)?))
    }

    /// The prompt for `req` (rendered, tokenized, with its checkpoint boundaries).
    pub fn render(&mut self, req: &Request) -> Result<PromptPlan, EngineError> {
        // The live budget: a change made before the engine took the request counts.
        let thinking = req.controls().budget().is_on();
        let context = self.context();
        let controls = req.controls();
        let specs = Self::offered_tools(req);
        let tools = PromptTools {
            specs,
            format: self.tool_format(req),
        };
        let tools = (!specs.is_empty()).then_some(&tools);
        self.prompt
            .build(&req.messages, thinking, tools, context, &|| {
                controls.is_cancelled()
            })
    }

    /// The tools `req` offers the model (none with `tool_choice: none`).
    fn offered_tools(req: &Request) -> &[ToolSpec] {
        if req.tool_choice == ToolChoice::None {
            &[]
        } else {
            &req.tools
        }
    }

    /// The tool-call format for `req`: its own, or the one the template and vocabulary
    /// show, or the common `<tool_call>{json}</tool_call>` form.
    pub fn tool_format(&self, req: &Request) -> ToolFormat {
        req.tool_format
            .or(self.detected_tool_format)
            .unwrap_or(ToolFormat::Hermes)
    }

    /// How the model's template takes tools (for `/model`).
    pub fn tool_support(&self) -> ToolSupport {
        self.prompt.tool_support()
    }

    /// The tool-call format the template and vocabulary show, if any.
    pub fn detected_tool_format(&self) -> Option<ToolFormat> {
        self.detected_tool_format
    }

    /// Renders and tokenizations done for this session's prompts so far.
    pub fn prompt_stats(&self) -> PromptStats {
        self.prompt.stats()
    }

    /// Restores the best reusable state for `ids`; returns how many tokens are reused.
    fn restore_for(&mut self, ids: &[u32]) -> Result<usize, EngineError> {
        let lcp = self
            .tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count();
        let limit = lcp.min(ids.len().saturating_sub(1));
        if self.tokens.len() <= limit {
            return Ok(self.tokens.len());
        }
        let best = (0..self.checkpoints.len())
            .filter(|i| self.checkpoints[*i].len() <= limit)
            .max_by_key(|i| self.checkpoints[*i].len());
        let reused = match best {
            Some(i) => {
                // A failed restore may have copied part of the state: forget it all.
                if let Err(e) = self.sequence.restore(&self.checkpoints[i]) {
                    self.reset();
                    return Err(e);
                }
                self.checkpoints[i].len()
            }
            None => {
                self.sequence.reset();
                0
            }
        };
        self.tokens.truncate(reused);
        self.checkpoints.retain(|c| c.len() <= reused);
        Ok(reused)
    }

    fn checkpoint(&mut self) -> Result<(), EngineError> {
        if self.opts.max_checkpoints == 0
            || self
                .checkpoints
                .iter()
                .any(|c| c.len() == self.tokens.len())
        {
            return Ok(());
        }
        if self.checkpoints.len() >= self.opts.max_checkpoints {
            // Drop the oldest position: recent turns are the ones retry/undo go back to.
            if let Some(i) = (0..self.checkpoints.len()).min_by_key(|i| self.checkpoints[*i].len())
            {
                self.checkpoints.remove(i);
            }
        }
        self.checkpoints.push(self.sequence.checkpoint()?);
        Ok(())
    }

    /// One forward call. A failed call may have changed part of the state (some layers
    /// ran), so the session forgets it all rather than break the tokens ⇔ state invariant.
    fn forward(&mut self, ids: &[u32], want: Logits) -> Result<Vec<f32>, EngineError> {
        self.sequence
            .forward(ids, want)
            .inspect_err(|_| self.reset())
    }

    /// `forward` with the last position's logits left where they are computed.
    fn forward_last(&mut self, ids: &[u32]) -> Result<StepLogits, EngineError> {
        self.sequence
            .forward_last(ids)
            .inspect_err(|_| self.reset())
    }

    /// Picks the next token from `logits`: on the device when the sequence can draw with
    /// these parameters and bans, there is no grammar mask and no log-probabilities are
    /// asked for, else with the host `sampler` (logits brought over), restricted to
    /// `allowed` when given. With `logprobs` (alternatives wanted), the step's numbers
    /// too (`sampler`'s module doc).
    fn pick(
        &mut self,
        logits: StepLogits,
        sampler: &mut Sampler,
        banned: &[u32],
        allowed: Option<&[u32]>,
        logprobs: Option<usize>,
    ) -> Result<(u32, Option<StepLogprobs>), EngineError> {
        let mut host = match logits {
            StepLogits::Host(l) => l,
            StepLogits::Device
                if self.sequence.can_draw() && allowed.is_none() && logprobs.is_none() =>
            {
                let u = sampler.next_uniform();
                let id = self
                    .sequence
                    .draw(sampler.params(), &self.tokens, banned, u)?;
                return Ok((id, None));
            }
            StepLogits::Device => self.sequence.logits_to_host()?,
        };
        // Broken weights give NaN (or infinite) logits; sampling them would print one
        // arbitrary token after another until max_tokens.
        if let Some(&value) = host.iter().find(|v| !v.is_finite()) {
            return Err(crate::model::ModelError::NonFiniteLogits {
                position: self.tokens.len(),
                value,
            }
            .into());
        }
        Ok(match logprobs {
            None => (
                sampler.sample_masked(&mut host, &self.tokens, banned, allowed),
                None,
            ),
            Some(top) => {
                let (id, step) =
                    sampler.sample_with_logprobs(&mut host, &self.tokens, banned, allowed, top);
                (id, Some(step))
            }
        })
    }

    /// Feeds `ids` (after what is in the state), checkpointing at `boundaries` (absolute
    /// token counts). Returns the last position's logits.
    fn feed(
        &mut self,
        ids: &[u32],
        boundaries: &[usize],
        req: &Request,
    ) -> Result<StepLogits, EngineError> {
        let mut logits = StepLogits::Host(Vec::new());
        let mut i = 0;
        while i < ids.len() {
            if req.controls().is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let pos = self.tokens.len();
            let next_boundary = boundaries
                .iter()
                .copied()
                .find(|b| *b > pos)
                .unwrap_or(usize::MAX);
            let end = (i + self.opts.prefill_chunk)
                .min(ids.len())
                .min(i + next_boundary.saturating_sub(pos));
            let last = end == ids.len();
            if last {
                logits = self.forward_last(&ids[i..end])?;
            } else {
                self.forward(&ids[i..end], Logits::None)?;
            }
            self.tokens.extend_from_slice(&ids[i..end]);
            self.fed_total += end - i;
            if boundaries.contains(&self.tokens.len()) {
                self.checkpoint()?;
            }
            i = end;
        }
        Ok(logits)
    }

    /// Renders `req` (unless `rendered` is its plan already), checks it fits, and
    /// restores the best reusable state for it; returns the prompt and how many of its
    /// tokens are reused.
    fn prepare(
        &mut self,
        req: &Request,
        rendered: Option<PromptPlan>,
    ) -> Result<(PromptPlan, usize), EngineError> {
        if req.controls().is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let plan = match rendered {
            Some(p) => p,
            None => self.render(req)?,
        };
        let ctx = self.context();
        if plan.ids.len() >= ctx {
            return Err(EngineError::ContextOverflow {
                prompt: plan.ids.len(),
                context: ctx,
            });
        }
        if plan.ids.is_empty() {
            return Err(EngineError::Template("the rendered prompt is empty".into()));
        }
        if req.controls().is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let reused = self.restore_for(&plan.ids)?;
        Ok((plan, reused))
    }

    /// The prompt step of `generate` alone: restores the best checkpoint for `req`'s
    /// prompt, feeds the rest (checkpointing at message ends), and returns how many
    /// prompt tokens were reused and the logits for the first answer token. For checking
    /// a device against another, or reuse against a fresh session.
    pub fn prefill(&mut self, req: &Request) -> Result<(usize, Vec<f32>), EngineError> {
        let (plan, reused) = self.prepare(req, None)?;
        let logits = match self.feed(&plan.ids[reused..], &plan.boundaries, req)? {
            StepLogits::Host(l) => l,
            StepLogits::Device => self.sequence.logits_to_host()?,
        };
        Ok((reused, logits))
    }

    /// Runs one request to the end, sending events through `emit`.
    pub fn generate(
        &mut self,
        req: &Request,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Done, EngineError> {
        self.generate_from(req, None, emit)
    }

    /// `generate` with `plan`, what `render` gave for this same request just before (a
    /// server that rendered it to choose the conversation): not rendered a second time.
    pub fn generate_rendered(
        &mut self,
        req: &Request,
        plan: PromptPlan,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Done, EngineError> {
        self.generate_from(req, Some(plan), emit)
    }

    fn generate_from(
        &mut self,
        req: &Request,
        rendered: Option<PromptPlan>,
        emit: &mut dyn FnMut(Event),
    ) -> Result<Done, EngineError> {
        let t0 = Instant::now();
        // Before the prefill: a grammar that does not compile fails the request at once.
        let mut guide = self.guide(req)?;
        // The token table they need failing is the model's fault, not the request's.
        let logprobs = match req.logprobs {
            Some(top) => {
                let vocab = self.vocabulary().map_err(|e| {
                    EngineError::Tokenizer(format!("the tokens' bytes for logprobs: {e}"))
                })?;
                Some(Logprobs::new(vocab, top))
            }
            None => None,
        };
        let (plan, reused) = self.prepare(req, rendered)?;
        let ctx = self.context();
        emit(Event::Started {
            prompt_tokens: plan.ids.len(),
            reused_tokens: reused,
        });
        let t_prefill = Instant::now();
        let mut logits = self.feed(&plan.ids[reused..], &plan.boundaries, req)?;
        let prefill_s = t_prefill.elapsed().as_secs_f64();
        let fed = plan.ids.len() - reused;

        let tail_start = plan.ids.len().saturating_sub(8);
        let mut detok = Detokenizer::new(self.tokenizer.clone(), &plan.ids[tail_start..]);
        let offered = Self::offered_tools(req);
        let tools = (!offered.is_empty()).then(|| {
            ToolParser::new(self.tool_format(req), offered).with_id_prefix(call_id_prefix())
        });
        let reasoning = ReasoningParser::new(THINK_START, THINK_END, plan.starts_in_reasoning);
        let mut out = TextRouter {
            parser: StreamParser::new(reasoning, tools),
            stopper: StopMatcher::new(req.stop.clone()),
            content_seen: false,
            calls: 0,
        };
        let mut sampler = Sampler::new(req.sampling.clone());
        let mut thinking = ThinkingController::new(req.thinking(), plan.starts_in_reasoning);
        let mut completion = 0usize;
        let mut ttft = None;
        let mut t_first = Instant::now();
        let mut sampled = 0usize;

        let finish = loop {
            if req.controls().is_cancelled() {
                break FinishReason::Cancelled;
            }
            // The grammar holds the answer, never the reasoning (engine::grammar).
            let held = guide
                .as_mut()
                .filter(|g| g.started() || !thinking.in_reasoning());
            if held.as_ref().map(|g| g.done()).transpose()? == Some(true) {
                break FinishReason::Stop;
            }
            if completion >= req.max_tokens || self.tokens.len() >= ctx {
                break FinishReason::Length;
            }
            if let Some(g) = held {
                let mut ids = g.forced()?;
                if !ids.is_empty() {
                    // Fast-forward: fed like the budget's forced text, within the limits.
                    let room = ctx
                        .saturating_sub(self.tokens.len())
                        .min(req.max_tokens - completion);
                    ids.truncate(room);
                    g.consume(&ids, true)?;
                    logits = self.forward_last(&ids)?;
                    self.tokens.extend_from_slice(&ids);
                    self.fed_total += ids.len();
                    completion += ids.len();
                    ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                    if let Some(lp) = &logprobs {
                        emit(Event::Logprobs(lp.forced(&ids)));
                    }
                    let mut piece = String::new();
                    for id in &ids {
                        piece.push_str(&detok.push(*id)?);
                    }
                    if out.push(&piece, &mut thinking, emit) {
                        break FinishReason::StopString;
                    }
                    continue;
                }
            }
            match thinking.before_step(req.controls().budget(), req.controls().wants_wrap_up()) {
                Action::Force(text) => {
                    let mut ids = self.prompt.encode(&text)?;
                    // Within both the context and max_tokens: at the limit a cut-off tag
                    // is fine, the request ends with `Length` there anyway.
                    let room = ctx
                        .saturating_sub(self.tokens.len())
                        .min(req.max_tokens - completion);
                    ids.truncate(room);
                    if ids.is_empty() {
                        break FinishReason::Length;
                    }
                    logits = self.forward_last(&ids)?;
                    self.tokens.extend_from_slice(&ids);
                    self.fed_total += ids.len();
                    thinking.forced_tokens(ids.len());
                    completion += ids.len();
                    if let Some(lp) = &logprobs {
                        emit(Event::Logprobs(lp.forced(&ids)));
                    }
                    let mut piece = String::new();
                    for id in &ids {
                        piece.push_str(&detok.push(*id)?);
                    }
                    if out.push(&piece, &mut thinking, emit) {
                        break FinishReason::StopString;
                    }
                    thinking.set_in_reasoning(false);
                }
                Action::Sample { ban_end } => {
                    let mut banned = Vec::new();
                    if ban_end {
                        banned.extend(self.think_end_id);
                        banned.extend(&self.eos);
                    }
                    let step = std::mem::replace(&mut logits, StepLogits::Host(Vec::new()));
                    let mut held = guide
                        .as_mut()
                        .filter(|g| g.started() || !thinking.in_reasoning());
                    if let Some(g) = held.as_mut() {
                        if matches!(step, StepLogits::Device) && self.sequence.can_draw() {
                            g.host_step();
                        }
                    }
                    let allowed = held.as_mut().map(|g| g.mask()).transpose()?;
                    let top = logprobs.as_ref().map(Logprobs::top);
                    let (id, step_logprobs) =
                        self.pick(step, &mut sampler, &banned, allowed, top)?;
                    sampled += 1;
                    if ttft.is_none() {
                        ttft = Some(t0.elapsed().as_secs_f64());
                        t_first = Instant::now();
                    }
                    if self.eos.contains(&id) {
                        break FinishReason::Stop;
                    }
                    if let Some(g) = held {
                        g.consume(&[id], false)?;
                    }
                    completion += 1;
                    if let (Some(lp), Some(step)) = (&logprobs, &step_logprobs) {
                        emit(Event::Logprobs(vec![lp.drawn(id, step)]));
                    }
                    if thinking.in_reasoning() {
                        thinking.sampled_reasoning_token();
                    }
                    let text = detok.push(id)?;
                    if !out.content_seen
                        && !thinking.in_reasoning()
                        && Some(id) == self.tokenizer.token_to_id(THINK_START)
                    {
                        thinking.set_in_reasoning(true);
                    }
                    if out.push(&text, &mut thinking, emit) {
                        break FinishReason::StopString;
                    }
                    if guide.as_ref().map(|g| g.done()).transpose()? == Some(true) {
                        break FinishReason::Stop; // the grammar is complete
                    }
                    if completion >= req.max_tokens || self.tokens.len() + 1 >= ctx {
                        break FinishReason::Length;
                    }
                    logits = self.forward_last(&[id])?;
                    self.tokens.push(id);
                    self.fed_total += 1;
                    if sampled.is_multiple_of(8) {
                        let dt = t_first.elapsed().as_secs_f64();
                        emit(Event::Progress {
                            reasoning_tokens: thinking.reasoning_tokens(),
                            completion_tokens: completion,
                            tokens_per_s: if dt > 0.0 {
                                (sampled - 1) as f64 / dt
                            } else {
                                0.0
                            },
                        });
                    }
                }
            }
        };
        // Flush what the detokenizer, parser and stop matcher still hold.
        if finish != FinishReason::StopString {
            let rest = detok.finish()?;
            out.push(&rest, &mut thinking, emit);
            out.finish(emit);
        }
        // The model ended its turn having called tools: the turn waits for their results.
        let finish = match finish {
            FinishReason::Stop if out.calls > 0 => FinishReason::ToolCalls,
            f => f,
        };
        let decode_s = t_first.elapsed().as_secs_f64();
        let done = Done {
            finish_reason: finish,
            usage: Usage {
                prompt_tokens: plan.ids.len(),
                reasoning_tokens: thinking.reasoning_tokens(),
                completion_tokens: completion,
            },
            timings: Timings {
                ttft_ms: ttft.unwrap_or(t0.elapsed().as_secs_f64()) * 1e3,
                prefill_tokens_per_s: if prefill_s > 0.0 {
                    fed as f64 / prefill_s
                } else {
                    0.0
                },
                decode_tokens_per_s: if sampled > 1 && decode_s > 0.0 {
                    (sampled - 1) as f64 / decode_s
                } else {
                    0.0
                },
                total_ms: t0.elapsed().as_secs_f64() * 1e3,
            },
            reused_tokens: reused,
            thinking_forced: thinking.forced(),
            steps: 1,
            constraint: guide.as_mut().map(Guide::stats),
        };
        emit(Event::Done(done.clone()));
        Ok(done)
    }
}

// ---------------------------------------------------------------------------------------
// Several conversations on one session (`nemo serve`)
//
// A session holds one live sequence. A server with many clients keeps the others parked:
// each `ParkedSequence` owns its whole sequence state (Mamba states and KV rows), its
// tokens and its checkpoints, so swapping one in is a move, and a parked conversation's
// checkpoints stay valid while another runs. Which conversation serves a request is the
// caller's choice (`serve::pool`); `reusable` says how much of a prompt each one saves,
// by the same rule `restore_for` applies. The CPU runner only: a GPU session's caches are
// allocated once on the device (`can_park` is false there).

/// One conversation's sequence, off the session while another one runs.
pub struct ParkedSequence {
    state: crate::state::SequenceState,
    tokens: Vec<u32>,
    checkpoints: Vec<Checkpoint>,
}

/// How many leading tokens of `ids` a sequence with these tokens and checkpoints gives
/// without feeding them again: its whole length when it is a prefix of what can be
/// reused, else its longest checkpoint that is (`Session::restore_for`'s rule).
fn reusable_len(tokens: &[u32], checkpoints: &[Checkpoint], ids: &[u32]) -> usize {
    let lcp = tokens.iter().zip(ids).take_while(|(a, b)| a == b).count();
    let limit = lcp.min(ids.len().saturating_sub(1));
    if tokens.len() <= limit {
        return tokens.len();
    }
    checkpoints
        .iter()
        .map(|c| c.len())
        .filter(|l| *l <= limit)
        .max()
        .unwrap_or(0)
}

impl ParkedSequence {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Leading tokens of `ids` this sequence would not feed again.
    pub fn reusable(&self, ids: &[u32]) -> usize {
        reusable_len(&self.tokens, &self.checkpoints, ids)
    }

    /// Whether serving `ids` from this sequence would drop checkpoints it has past what is
    /// reused (another conversation's turns): then fork it instead.
    pub fn would_lose(&self, ids: &[u32]) -> bool {
        let keep = self.reusable(ids);
        self.checkpoints.iter().any(|c| c.len() > keep)
    }

    /// A copy cut back to what `ids` can reuse (state restored to that checkpoint, the KV
    /// rows past it dropped); None when nothing is reusable.
    pub fn fork(&self, ids: &[u32]) -> Option<ParkedSequence> {
        let keep = self.reusable(ids);
        if keep == 0 {
            return None;
        }
        let mut state = self.state.clone();
        let mut checkpoints = Vec::new();
        for c in self.checkpoints.iter().filter(|c| c.len() <= keep) {
            if let Checkpoint::Cpu(s) = c {
                checkpoints.push(Checkpoint::Cpu(s.clone()));
            }
        }
        if keep < self.tokens.len() {
            let Checkpoint::Cpu(s) = checkpoints.iter().find(|c| c.len() == keep)? else {
                return None;
            };
            state.restore(s);
        }
        Some(ParkedSequence {
            state,
            tokens: self.tokens[..keep].to_vec(),
            checkpoints,
        })
    }

    /// Host bytes held: the state's caches and the checkpoints' copies.
    pub fn bytes(&self) -> usize {
        self.state.bytes() + self.checkpoints.iter().map(|c| c.bytes()).sum::<usize>()
    }
}

impl Session {
    /// Whether the live sequence can be parked (the CPU runner).
    pub fn can_park(&self) -> bool {
        matches!(self.sequence, Sequence::Cpu { .. })
    }

    /// Leading tokens of `ids` the live sequence would not feed again.
    pub fn reusable(&self, ids: &[u32]) -> usize {
        reusable_len(&self.tokens, &self.checkpoints, ids)
    }

    /// Takes the live sequence off the session and leaves an empty one in its place;
    /// None on a runner that cannot park (`can_park`).
    pub fn park(&mut self) -> Option<ParkedSequence> {
        let Sequence::Cpu { model, state } = &mut self.sequence else {
            return None;
        };
        let fresh = model.new_state(state.cache);
        Some(ParkedSequence {
            state: std::mem::replace(state, fresh),
            tokens: std::mem::take(&mut self.tokens),
            checkpoints: std::mem::take(&mut self.checkpoints),
        })
    }

    /// Makes `p` (parked from this session) the live sequence; the live one is dropped
    /// (park it first to keep it).
    pub fn unpark(&mut self, p: ParkedSequence) -> Result<(), EngineError> {
        let Sequence::Cpu { state, .. } = &mut self.sequence else {
            return Err(EngineError::Gpu(
                crate::model::cuda::GpuModelError::Unsupported(
                    "parking a sequence on the GPU".into(),
                ),
            ));
        };
        *state = p.state;
        self.tokens = p.tokens;
        self.checkpoints = p.checkpoints;
        Ok(())
    }

    /// Host bytes of the live sequence's caches and checkpoints.
    pub fn sequence_bytes(&self) -> usize {
        let state = match &self.sequence {
            Sequence::Cpu { state, .. } => state.bytes(),
            Sequence::Cuda(_) => 0,
        };
        state + self.checkpoints.iter().map(|c| c.bytes()).sum::<usize>()
    }

    /// Puts `builder` in place of the session's prompt builder and returns the one it had
    /// (e.g. a raw template for `/v1/completions`, swapped in for one request).
    pub fn swap_prompt_builder(&mut self, builder: PromptBuilder) -> PromptBuilder {
        std::mem::replace(&mut self.prompt, builder)
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
}
