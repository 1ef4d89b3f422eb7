//! Which conversation serves a request: the live sequence or one of the parked ones
//! (`engine::session`'s `ParkedSequence`), chosen by the longest reusable prefix of the
//! rendered prompt.
//!
//! Invariants:
//! - At most `max_sessions` sequences are held, the live one included; past that the
//!   least recently used parked one is dropped.
//! - Serving a request never costs another conversation its turns: a sequence whose
//!   checkpoints go past what the request reuses (two chats that share only a system
//!   prompt) is forked, and the original stays parked.
//! - A request that reuses nothing starts an empty sequence; the live one is parked.
//! - With `max_sessions` 1, or on a runner that cannot park (the GPU), the session keeps
//!   its one sequence as `nemo chat` does.

use std::collections::VecDeque;

use crate::engine::session::ParkedSequence;
use crate::engine::{EngineError, Session};

pub struct Pool {
    /// Least recently used first.
    parked: VecDeque<ParkedSequence>,
    max_sessions: usize,
}

impl Pool {
    pub fn new(max_sessions: usize) -> Pool {
        Pool {
            parked: VecDeque::new(),
            max_sessions: max_sessions.max(1),
        }
    }

    /// Sequences held off the session.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Host bytes the parked sequences hold.
    pub fn bytes(&self) -> usize {
        self.parked.iter().map(ParkedSequence::bytes).sum()
    }

    /// Whether there is a choice to make (more than one conversation is kept, and the
    /// runner can park them); without one the prompt need not be rendered first.
    pub fn chooses(&self, session: &Session) -> bool {
        self.max_sessions > 1 && session.can_park()
    }

    /// Makes the best sequence for the prompt `ids` the session's live one.
    pub fn select(&mut self, session: &mut Session, ids: &[u32]) -> Result<(), EngineError> {
        if !self.chooses(session) {
            return Ok(());
        }
        let live = session.reusable(ids);
        // The most recently used wins a tie.
        let best = self
            .parked
            .iter()
            .enumerate()
            .map(|(i, p)| (p.reusable(ids), i))
            .filter(|(r, _)| *r > 0)
            .max();
        match best {
            Some((reuse, i)) if reuse > live => {
                let Some(p) = self.parked.remove(i) else {
                    return Ok(());
                };
                let next = if p.would_lose(ids) {
                    let fork = p.fork(ids);
                    self.parked.push_back(p);
                    fork
                } else {
                    Some(p)
                };
                self.park_live(session);
                if let Some(next) = next {
                    session.unpark(next)?;
                }
            }
            _ if live > 0 => {
                if let Some(p) = session.park() {
                    if p.would_lose(ids) {
                        let fork = p.fork(ids);
                        self.parked.push_back(p);
                        if let Some(f) = fork {
                            session.unpark(f)?;
                        }
                    } else {
                        session.unpark(p)?;
                    }
                }
            }
            _ => self.park_live(session),
        }
        while self.parked.len() + 1 > self.max_sessions {
            self.parked.pop_front();
        }
        Ok(())
    }

    /// Parks the live sequence (when it holds anything), leaving the session empty.
    fn park_live(&mut self, session: &mut Session) {
        if session.tokens().is_empty() {
            return;
        }
        if let Some(p) = session.park() {
            self.parked.push_back(p);
        }
    }
}
