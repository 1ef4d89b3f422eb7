//! The engine thread: owns the `Session` (weights and state); front ends send requests
//! and receive events over channels, so a UI never blocks on the model. Each request
//! carries its own `Controls` (cancel, wrap-up, live budget), checked every step.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use super::Session;
use crate::protocol::{Event, Op, Request};

pub struct Engine {
    tx: Option<Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    pub fn spawn(mut session: Session) -> Engine {
        let (tx, rx) = channel::<Op>();
        let thread = std::thread::Builder::new()
            .name("nemo-engine".into())
            .spawn(move || {
                for op in rx {
                    match op {
                        Op::Generate(req, events) => {
                            let mut emit = |e: Event| {
                                let _ = events.send(e);
                            };
                            if let Err(e) = session.generate(&req, &mut emit) {
                                let _ = events.send(Event::Error(e.to_string()));
                            }
                        }
                        Op::Reset => session.reset(),
                    }
                }
            })
            .ok();
        Engine {
            tx: Some(tx),
            thread,
        }
    }

    /// Queues a request; events arrive on the returned receiver, ending with `Done` or `Error`.
    pub fn submit(&self, req: Request) -> Receiver<Event> {
        let (etx, erx) = channel();
        match &self.tx {
            Some(tx) if self.thread.is_some() => {
                if tx.send(Op::Generate(Box::new(req), etx.clone())).is_err() {
                    let _ = etx.send(Event::Error("the engine thread has stopped".into()));
                }
            }
            _ => {
                let _ = etx.send(Event::Error(
                    "the engine thread could not be started".into(),
                ));
            }
        }
        erx
    }

    /// Forgets the sequence state and checkpoints (e.g. `/clear`).
    pub fn reset(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Op::Reset);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
