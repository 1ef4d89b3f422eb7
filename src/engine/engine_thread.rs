//! The engine thread: owns the `Session` (weights and state); front ends send requests
//! and receive events over channels, so a UI never blocks on the model. Each request
//! carries its own `Controls` (cancel, wrap-up, live budget), checked every step.
//!
//! Dropping the `Engine` never waits on a busy thread: it cancels the request in flight,
//! drops the queued ones, and joins the thread only if it ends within `JOIN_GRACE`;
//! otherwise the thread is left to finish on its own (or to end with the process). So a
//! front end that quits returns at once even while the engine is inside work it cannot
//! interrupt (a chat template that renders for minutes, one long forward pass).
//!
//! A request whose controls are already cancelled when its turn comes ends at once with
//! `Event::Error("cancelled")`, without rendering its prompt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{EngineError, Session};
use crate::protocol::{Controls, Event, Op, Request};

/// How long dropping the `Engine` waits for its thread before leaving it behind.
pub const JOIN_GRACE: Duration = Duration::from_millis(100);

/// What `Drop` needs to stop the thread's work: set `closing`, cancel `current`.
#[derive(Default)]
struct Shared {
    closing: AtomicBool,
    /// The controls of the request being generated, if any.
    current: Mutex<Option<Controls>>,
}

impl Shared {
    fn current(&self) -> MutexGuard<'_, Option<Controls>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Engine {
    tx: Option<Sender<Op>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Disconnected once the thread has ended (it holds the only sender and never sends).
    ended: Receiver<()>,
}

impl Engine {
    pub fn spawn(mut session: Session) -> Engine {
        let (tx, rx) = channel::<Op>();
        let (ended_tx, ended) = channel::<()>();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nemo-engine".into())
            .spawn(move || {
                let _ended = ended_tx;
                for op in rx {
                    match op {
                        Op::Generate(req, events) => {
                            {
                                // `closing` is read under the lock `Drop` takes after
                                // setting it: either this request is seen and cancelled
                                // there, or the thread stops here.
                                let mut cur = sh.current();
                                if sh.closing.load(Ordering::SeqCst) {
                                    break;
                                }
                                *cur = Some(req.controls().clone());
                            }
                            if req.controls().is_cancelled() {
                                let _ =
                                    events.send(Event::Error(EngineError::Cancelled.to_string()));
                            } else {
                                let mut emit = |e: Event| {
                                    let _ = events.send(e);
                                };
                                match session.generate(&req, &mut emit) {
                                    Ok(_) => {}
                                    Err(
                                        e @ (EngineError::ContextOverflow { .. }
                                        | EngineError::PromptTooLong { .. }),
                                    ) => {
                                        let _ = events.send(Event::ContextFull(e.to_string()));
                                    }
                                    Err(e) => {
                                        let _ = events.send(Event::Error(e.to_string()));
                                    }
                                }
                            }
                            *sh.current() = None;
                        }
                        Op::Reset => {
                            if sh.closing.load(Ordering::SeqCst) {
                                break;
                            }
                            session.reset()
                        }
                    }
                }
            })
            .ok();
        Engine {
            tx: Some(tx),
            thread,
            shared,
            ended,
        }
    }

    /// Queues a request; events arrive on the returned receiver, ending with `Done` or `Error`.
    pub fn submit(&self, req: Request) -> Receiver<Event> {
        self.submitter().submit(req)
    }

    /// A handle that queues requests from another thread (the agent loop's). Dropping the
    /// `Engine` still cancels what runs and stops the thread at the next request; a
    /// submitter only keeps an idle thread waiting until it is dropped too.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            tx: self.tx.clone().filter(|_| self.thread.is_some()),
        }
    }

    /// Forgets the sequence state and checkpoints (e.g. `/clear`).
    pub fn reset(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Op::Reset);
        }
    }
}

/// Queues requests on an [`Engine`] (see `Engine::submitter`).
#[derive(Clone)]
pub struct Submitter {
    tx: Option<Sender<Op>>,
}

impl Submitter {
    /// Queues on whatever serves `Op`s from the other end of `tx` the way the engine
    /// thread does (e.g. `remote::Remote`, so the agent loop drives a remote endpoint).
    pub fn from_ops(tx: Sender<Op>) -> Submitter {
        Submitter { tx: Some(tx) }
    }

    /// As `Engine::submit`.
    pub fn submit(&self, req: Request) -> Receiver<Event> {
        let (etx, erx) = channel();
        match &self.tx {
            Some(tx) => {
                if tx.send(Op::Generate(Box::new(req), etx.clone())).is_err() {
                    let _ = etx.send(Event::Error("the engine thread has stopped".into()));
                }
            }
            None => {
                let _ = etx.send(Event::Error(
                    "the engine thread could not be started".into(),
                ));
            }
        }
        erx
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(c) = self.shared.current().take() {
            c.cancel();
        }
        self.tx.take();
        if let Some(t) = self.thread.take() {
            // Joined only when it has ended; a thread still busy is left behind (detached).
            if let Err(RecvTimeoutError::Disconnected) = self.ended.recv_timeout(JOIN_GRACE) {
                let _ = t.join();
            }
        }
    }
}
