//! The engine thread of `nemo serve`: one `Session`, one request at a time, in arrival
//! order, with the conversations it keeps (`pool`).
//!
//! Invariants:
//! - Jobs run in the order they were submitted; a job whose controls were cancelled
//!   before its turn (its client left) is dropped without rendering anything.
//! - Once `closing` is set (SIGTERM), jobs not yet started are answered 503; the one
//!   running finishes. `Reply::Running` tells a job's handler it has started, so the
//!   handler can answer 503 itself at SIGTERM while its job still waits.
//! - Every job ends with exactly one of: its events up to `Done`, or one `Reply::Failed`
//!   (a cancelled job's client is gone and gets nothing). Dropping the job's `Ticket`
//!   frees its place in the queue, whatever happened.
//! - Errors are sorted by whose they are: a prompt that does not fit, a grammar that does
//!   not compile, a template that refuses the messages are the client's (400); the rest
//!   are the server's (500).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::metrics::Metrics;
use super::pool::Pool;
use crate::chat::template::ChatTemplate;
use crate::engine::prompt::PromptBuilder;
use crate::engine::{EngineError, Session};
use crate::protocol::{Event, Request};

/// The raw prompt of `/v1/completions`, as a chat template: the text as it was sent.
const RAW_TEMPLATE: &str = "{{ messages[0]['content'] }}";

/// What the engine thread sends back for a job.
#[derive(Debug)]
pub enum Reply {
    /// The engine took the job (it is no longer waiting in the queue).
    Running,
    Event(Event),
    Failed(ApiError),
}

/// A place in the queue, given back when dropped.
pub struct Ticket(Arc<Metrics>);

impl Ticket {
    /// Takes a place if fewer than `max_queue` requests wait (one more may be running).
    pub fn take(metrics: &Arc<Metrics>, max_queue: usize) -> Option<Ticket> {
        let before = metrics.pending.fetch_add(1, Ordering::SeqCst);
        if before > max_queue {
            metrics.pending.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Ticket(metrics.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Job {
    pub req: Request,
    /// `/v1/completions`: the prompt goes in as it is.
    pub raw: bool,
    pub arrived: Instant,
    pub replies: UnboundedSender<Reply>,
    pub ticket: Ticket,
}

pub struct Worker {
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closing: Arc<AtomicBool>,
}

impl Worker {
    pub fn spawn(
        mut session: Session,
        max_sessions: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Worker, EngineError> {
        let raw = ChatTemplate::compile(RAW_TEMPLATE, None, None)
            .map_err(|e| EngineError::Template(e.to_string()))?
            .with_name("raw prompt (/v1/completions)");
        let mut raw_builder = Some(PromptBuilder::new(
            Arc::new(raw),
            session.tokenizer().clone(),
        ));
        let (tx, rx) = channel::<Job>();
        let closing = Arc::new(AtomicBool::new(false));
        let closing_t = closing.clone();
        let thread = std::thread::Builder::new()
            .name("nemo-serve-engine".into())
            .spawn(move || {
                let mut pool = Pool::new(max_sessions);
                for job in rx {
                    let Job {
                        req,
                        raw,
                        arrived,
                        replies,
                        ticket,
                    } = job;
                    if req.controls().is_cancelled() {
                        continue;
                    }
                    if closing_t.load(Ordering::SeqCst) {
                        let _ = replies.send(Reply::Failed(ApiError::shutting_down()));
                        continue;
                    }
                    metrics.running.store(1, Ordering::SeqCst);
                    let _ = replies.send(Reply::Running);
                    let mut prev = None;
                    if raw {
                        if let Some(b) = raw_builder.take() {
                            prev = Some(session.swap_prompt_builder(b));
                        }
                    }
                    let r = run_one(&mut session, &mut pool, &req, arrived, &replies, &metrics);
                    if let Some(p) = prev {
                        raw_builder = Some(session.swap_prompt_builder(p));
                    }
                    match r {
                        Ok(()) | Err(EngineError::Cancelled) => {}
                        Err(e) => {
                            let _ = replies.send(Reply::Failed(classify(e)));
                        }
                    }
                    metrics.conversations(
                        pool.parked() + usize::from(!session.tokens().is_empty()),
                        pool.bytes() + session.sequence_bytes(),
                    );
                    metrics.running.store(0, Ordering::SeqCst);
                    drop(ticket);
                }
            })
            .map_err(|e| EngineError::Template(format!("cannot start the engine thread: {e}")))?;
        Ok(Worker {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            closing,
        })
    }

    /// Queues `job`; gives it back when the worker no longer takes jobs.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(job)),
        }
    }

    /// Jobs not yet started are answered 503 from now on.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Takes no more jobs and waits for the thread to finish the one it runs.
    pub fn join(&self) {
        self.close();
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

fn run_one(
    session: &mut Session,
    pool: &mut Pool,
    req: &Request,
    arrived: Instant,
    replies: &UnboundedSender<Reply>,
    metrics: &Metrics,
) -> Result<(), EngineError> {
    // With a conversation to choose, the prompt is rendered here to choose it, and that
    // plan is the one `generate_rendered` feeds: one render per request either way.
    let plan = if pool.chooses(session) {
        let plan = session.render(req)?;
        pool.select(session, &plan.ids)?;
        Some(plan)
    } else {
        None
    };
    let mut last: Option<Instant> = None;
    let mut emit = |ev: Event| {
        match &ev {
            Event::Reasoning(_) | Event::Content(_) | Event::ToolCall(_) => {
                let now = Instant::now();
                match last {
                    None => metrics.ttft((now - arrived).as_secs_f64()),
                    Some(t) => metrics.itl((now - t).as_secs_f64()),
                }
                last = Some(now);
            }
            Event::Done(d) => metrics.tokens(
                d.usage.prompt_tokens,
                d.reused_tokens,
                d.usage.completion_tokens,
                d.usage.reasoning_tokens,
            ),
            _ => {}
        }
        if replies.send(Reply::Event(ev)).is_err() {
            // The client is gone: its guard has cancelled, or will at once.
            req.controls().cancel();
        }
    };
    match plan {
        Some(plan) => session.generate_rendered(req, plan, &mut emit),
        None => session.generate(req, &mut emit),
    }
    .map(|_| ())
}

/// Whose fault an engine error is (module doc).
fn classify(e: EngineError) -> ApiError {
    match e {
        EngineError::ContextOverflow { .. } | EngineError::PromptTooLong { .. } => {
            let mut a = ApiError::unserviceable(e.to_string());
            a.code = Some("context_length_exceeded");
            a
        }
        EngineError::Grammar(_) | EngineError::Render(_) => ApiError::unserviceable(e.to_string()),
        e => ApiError::engine(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SessionOptions;
    use crate::protocol::{Message, ThinkingOptions};

    /// Template renders for a two-turn conversation through `run_one`, on a fresh session
    /// keeping `max_sessions` conversations.
    fn renders(max_sessions: usize) -> usize {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nemotron_h_tiny");
        let folder = crate::model::ModelFolder::open(&dir).unwrap();
        let mut session = Session::new(&folder, SessionOptions::default()).unwrap();
        let mut pool = Pool::new(max_sessions);
        let metrics = Metrics::default();
        // Kept open: a closed channel cancels the request.
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = vec![Message::user("Hi there")];
        for turn in 0..2 {
            let mut req = Request::new(messages.clone(), ThinkingOptions::default());
            req.max_tokens = 3;
            run_one(&mut session, &mut pool, &req, Instant::now(), &tx, &metrics).unwrap();
            if turn == 0 {
                messages.push(Message::assistant("Hello"));
                messages.push(Message::user("And then?"));
            }
        }
        session.prompt_stats().renders
    }

    #[test]
    fn a_request_is_rendered_once_when_the_pool_chooses_its_conversation() {
        let alone = renders(1);
        assert!(alone >= 2, "{alone}");
        assert_eq!(renders(4), alone);
    }
}
