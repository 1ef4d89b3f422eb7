//! Routes, auth, admission and the two answer shapes (one JSON body, or SSE chunks).
//!
//! Invariants:
//! - `/v1/*` needs `Authorization: Bearer KEY` when the server has a key; `/health` and
//!   `/metrics` never do (probes and scrapers).
//! - A request is checked whole (auth, size, JSON, fields, model) before it takes a place
//!   in the queue; an error found by the engine before the first token (a prompt over the
//!   context, a grammar that does not compile) still gets its own status, streamed or
//!   not, because the answer's head waits for the engine's first word.
//! - Each request holds a `CancelGuard`: dropped with the handler (client gone while
//!   waiting) or with the SSE task (client gone while streaming), it cancels the request.
//! - At SIGTERM a request the engine has not taken yet is answered 503 at once; the one
//!   running goes on to its end.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::metrics::Metrics;
use super::turn::{
    chat_logprobs_json, completion_logprobs_json, delta_json, usage_json, Delta, Turn,
};
use super::wire::{self, Defaults, Parsed};
use super::worker::{Job, Reply, Ticket, Worker};
use super::{ServeConfig, MAX_BODY_BYTES};
use crate::protocol::{Controls, Done, Event, GeneratedLogprob, ToolChoice, ToolFormat};

pub struct AppState {
    cfg: ServeConfig,
    worker: Worker,
    metrics: Arc<Metrics>,
    context: usize,
    detected: Option<ToolFormat>,
    created: u64,
    next_id: AtomicU64,
    closing: AtomicBool,
    /// Flips to true at SIGTERM: requests still waiting for the engine answer 503 at once.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(
        cfg: ServeConfig,
        worker: Worker,
        metrics: Arc<Metrics>,
        context: usize,
        detected: Option<ToolFormat>,
    ) -> AppState {
        AppState {
            cfg,
            worker,
            metrics,
            context,
            detected,
            created: now(),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            shutdown: tokio::sync::watch::Sender::new(false),
        }
    }

    /// SIGTERM: new requests get 503, waiting ones too; the running one goes on.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.worker.close();
        self.shutdown.send_replace(true);
    }

    pub fn join(&self) {
        self.worker.join();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Cancels the request when dropped.
struct CancelGuard(Controls);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn authorized(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = s.cfg.api_key.as_deref().filter(|k| !k.is_empty()) else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compared without an early exit, so timing does not tell how much of a guess matched.
    let ok = given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.closing.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "closing"})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

fn model_card(s: &AppState) -> Value {
    json!({
        "id": s.cfg.served_model_name,
        "object": "model",
        "created": s.created,
        "owned_by": "nemo",
        "max_model_len": s.context,
    })
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [model_card(&s)]})).into_response()
}

async fn model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorized(&s, &headers) {
        return e.into_response();
    }
    if id != s.cfg.served_model_name {
        return ApiError::model_not_found(&id, &s.cfg.served_model_name).into_response();
    }
    Json(model_card(&s)).into_response()
}

async fn fallback(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "/v1/chat/completions",
            Kind::Completion => "/v1/completions",
        }
    }
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = generate(&s, &headers, body, Kind::Chat).await;
    s.metrics
        .request(Kind::Chat.endpoint(), r.status().as_u16());
    r
}

async fn completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = generate(&s, &headers, body, Kind::Completion).await;
    s.metrics
        .request(Kind::Completion.endpoint(), r.status().as_u16());
    r
}

/// Auth, body, fields, then a place in the queue.
fn admit(
    s: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<(Parsed, Ticket), ApiError> {
    authorized(s, headers)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(MAX_BODY_BYTES)
        } else {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        }
    })?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    wire::check_model(&v, &s.cfg.served_model_name)?;
    let d = Defaults {
        served: &s.cfg.served_model_name,
        sampling: &s.cfg.sampling,
        context: s.context,
    };
    let parsed = match kind {
        Kind::Chat => wire::chat(&v, &d)?,
        Kind::Completion => wire::completion(&v, &d)?,
    };
    if s.closing.load(Ordering::SeqCst) {
        return Err(ApiError::shutting_down());
    }
    let ticket = Ticket::take(&s.metrics, s.cfg.max_queue)
        .ok_or_else(|| ApiError::queue_full(s.cfg.max_queue))?;
    Ok((parsed, ticket))
}

/// How the answer of one request is written back.
struct Answer {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    turn: Turn,
    /// `/v1/completions`: the raw text, `<think>` tags kept where the model wrote them.
    raw_in_reasoning: bool,
    raw_text: String,
    /// With log-probabilities asked for: those not yet written (`turn`'s module doc).
    logprobs: Option<Vec<GeneratedLogprob>>,
    /// Completions: characters of the answer before the pending log-probabilities.
    text_offset: usize,
}

impl Answer {
    /// The pieces of `ev` as the client sees them: chat deltas, or completion text.
    fn push(&mut self, ev: &Event) -> Vec<Delta> {
        if let (Event::Logprobs(entries), Some(pending)) = (ev, &mut self.logprobs) {
            pending.extend(entries.iter().cloned());
        }
        let deltas = self.turn.push(ev);
        self.rawify(deltas)
    }

    /// The pending log-probabilities in this endpoint's shape (null when none were asked
    /// for); written once.
    fn take_logprobs(&mut self) -> Value {
        let Some(pending) = &mut self.logprobs else {
            return Value::Null;
        };
        let entries = std::mem::take(pending);
        match self.kind {
            Kind::Chat => chat_logprobs_json(&entries),
            Kind::Completion => completion_logprobs_json(&entries, &mut self.text_offset),
        }
    }

    fn finish(&mut self) -> Vec<Delta> {
        let deltas = self.turn.finish();
        self.rawify(deltas)
    }

    /// For completions: reasoning and content as one text (each delta becomes `Content`).
    fn rawify(&mut self, deltas: Vec<Delta>) -> Vec<Delta> {
        if self.kind == Kind::Chat {
            return deltas;
        }
        let mut out = Vec::new();
        for d in deltas {
            let t = match d {
                Delta::Reasoning(t) if !self.raw_in_reasoning => {
                    self.raw_in_reasoning = true;
                    format!("<think>{t}")
                }
                Delta::Reasoning(t) => t,
                Delta::Content(t) if self.raw_in_reasoning => {
                    self.raw_in_reasoning = false;
                    format!("</think>{t}")
                }
                Delta::Content(t) => t,
                Delta::Call { .. } => continue,
            };
            self.raw_text.push_str(&t);
            out.push(Delta::Content(t));
        }
        out
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// A streamed chunk with one choice (and the log-probabilities that came since the
    /// last one).
    fn chunk(&mut self, delta: Value, finish: Option<&str>) -> Value {
        let logprobs = self.take_logprobs();
        let choice = match self.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Kind::Completion => json!({"index": 0,
                "text": delta.get("content").cloned().unwrap_or(json!("")),
                "logprobs": logprobs, "finish_reason": finish}),
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice]})
    }

    fn usage_chunk(&self, d: &Done) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [], "usage": usage_json(d)})
    }

    /// The whole response (not streamed).
    fn response(&mut self, d: &Done) -> Value {
        let finish = self.turn.finish_reason(d);
        let logprobs = self.take_logprobs();
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "message": self.turn.message(),
                "logprobs": logprobs, "finish_reason": finish}),
            Kind::Completion => json!({"index": 0, "text": self.raw_text,
                "logprobs": logprobs, "finish_reason": finish}),
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": [choice], "usage": usage_json(d)})
    }
}

async fn generate(
    s: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Response {
    let (parsed, ticket) = match admit(s, headers, body, kind) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let Parsed {
        req,
        stream,
        include_usage,
        raw,
    } = parsed;
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let tools = (kind == Kind::Chat
        && !req.tools.is_empty()
        && req.tool_choice != ToolChoice::None)
        .then(|| {
            let format = req.tool_format.or(s.detected).unwrap_or(ToolFormat::Hermes);
            (format, req.tools.clone())
        });
    let raw_in_reasoning = raw && {
        let p = req.messages.first().map_or("", |m| m.content.as_str());
        p.rfind("<think>") > p.rfind("</think>")
    };
    let mut answer = Answer {
        kind,
        id: match kind {
            Kind::Chat => format!("chatcmpl-{:x}{n:04x}", s.created),
            Kind::Completion => format!("cmpl-{:x}{n:04x}", s.created),
        },
        created: now(),
        model: s.cfg.served_model_name.clone(),
        turn: Turn::new(
            tools.as_ref().map(|(f, t)| (*f, t.as_slice())),
            &format!("call_{n}_"),
        ),
        raw_in_reasoning,
        raw_text: String::new(),
        logprobs: req.logprobs.map(|_| Vec::new()),
        text_offset: 0,
    };
    let guard = CancelGuard(req.controls().clone());
    let mut shutdown = s.shutdown.subscribe();
    let (tx, mut rx) = unbounded_channel();
    let job = Job {
        req,
        raw,
        arrived: Instant::now(),
        replies: tx,
        ticket,
    };
    if s.worker.submit(job).is_err() {
        return ApiError::shutting_down().into_response();
    }
    // The head waits for the engine's first word: an error before any token gets its
    // own status. A request still waiting when SIGTERM comes is answered 503 (its guard
    // then cancels the job, which the engine skips).
    let mut running = false;
    let first = loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(Reply::Running) => running = true,
                Some(Reply::Event(ev)) => break ev,
                Some(Reply::Failed(e)) => return e.into_response(),
                None => {
                    return ApiError::engine("the engine stopped without answering")
                        .into_response()
                }
            },
            _ = shutdown.wait_for(|closing| *closing), if !running => {
                return ApiError::shutting_down().into_response();
            }
        }
    };
    if stream {
        return sse(answer, first, rx, guard, include_usage);
    }
    let _guard = guard;
    let mut next = Some(Reply::Event(first));
    loop {
        match next {
            Some(Reply::Event(Event::Done(d))) => {
                answer.finish();
                return Json(answer.response(&d)).into_response();
            }
            Some(Reply::Event(ev)) => {
                answer.push(&ev);
            }
            Some(Reply::Running) => {}
            Some(Reply::Failed(e)) => return e.into_response(),
            None => {
                return ApiError::engine("the engine stopped without finishing the request")
                    .into_response()
            }
        }
        next = rx.recv().await;
    }
}

fn data(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// The streamed answer: a task turns replies into chunks; the client leaving (the body
/// dropped) ends the task and its guard cancels the request.
fn sse(
    mut answer: Answer,
    first: Event,
    mut rx: UnboundedReceiver<Reply>,
    guard: CancelGuard,
    include_usage: bool,
) -> Response {
    let (btx, brx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let _guard = guard;
        let mut out = Vec::new();
        if answer.kind == Kind::Chat {
            out.push(answer.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        let mut next = Some(Reply::Event(first));
        loop {
            match next.take() {
                Some(Reply::Event(Event::Done(d))) => {
                    for delta in answer.finish() {
                        for dj in delta_json(&delta) {
                            out.push(answer.chunk(dj, None));
                        }
                    }
                    let finish = answer.turn.finish_reason(&d);
                    out.push(answer.chunk(json!({}), Some(finish)));
                    if include_usage {
                        out.push(answer.usage_chunk(&d));
                    }
                    for v in out.drain(..) {
                        if btx.send(data(&v)).await.is_err() {
                            return;
                        }
                    }
                    let _ = btx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Some(Reply::Running) => {}
                Some(Reply::Event(ev)) => {
                    for delta in answer.push(&ev) {
                        for dj in delta_json(&delta) {
                            out.push(answer.chunk(dj, None));
                        }
                    }
                }
                Some(Reply::Failed(e)) => {
                    out.push(e.body());
                    for v in out.drain(..) {
                        if btx.send(data(&v)).await.is_err() {
                            return;
                        }
                    }
                    let _ = btx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                None => {
                    let e = ApiError::engine("the engine stopped without finishing the request");
                    let _ = btx.send(data(&e.body())).await;
                    return;
                }
            }
            for v in out.drain(..) {
                if btx.send(data(&v)).await.is_err() {
                    return;
                }
            }
            next = tokio::select! {
                r = rx.recv() => r,
                _ = btx.closed() => return,
            };
        }
    });
    let stream = futures_util::stream::unfold(brx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response()
}
