//! Thinking control inside the generation loop (DESIGN.md "Thinking on, off, and on a
//! budget"): counts reasoning tokens, masks the end of thinking until the minimum, and
//! decides when to force the end-of-thinking text — at the budget (after an optional
//! grace window to finish the sentence), or at once on "wrap up now". The prompt is never
//! processed again: forced text is fed as ordinary tokens after the ones already there.
//!
//! Pure state machine: no model, no tokenizer; `Session::generate` drives it.

use crate::protocol::{Budget, ThinkingOptions};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sample the next token; `ban_end` masks the end of thinking (and EOS).
    Sample { ban_end: bool },
    /// Feed this text as forced tokens; it ends the reasoning.
    Force(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Thinking,
    /// Budget reached; waiting for a sentence end, `left` more tokens at most.
    Grace {
        left: usize,
    },
    Closed,
}

#[derive(Clone, Debug)]
pub struct ThinkingController {
    min_tokens: usize,
    closing_message: Option<String>,
    grace_tokens: usize,
    phase: Phase,
    in_reasoning: bool,
    reasoning_tokens: usize,
    forced: bool,
    /// The last characters of reasoning text (sentence-end detection, newline before the tag).
    tail: String,
}

impl ThinkingController {
    pub fn new(opts: &ThinkingOptions, starts_in_reasoning: bool) -> Self {
        ThinkingController {
            min_tokens: opts.min_tokens,
            closing_message: opts
                .closing_message
                .clone()
                .filter(|m| !m.trim().is_empty()),
            grace_tokens: opts.grace_tokens,
            phase: if starts_in_reasoning {
                Phase::Thinking
            } else {
                Phase::Closed
            },
            in_reasoning: starts_in_reasoning,
            reasoning_tokens: 0,
            forced: false,
            tail: String::new(),
        }
    }

    pub fn in_reasoning(&self) -> bool {
        self.in_reasoning
    }

    pub fn reasoning_tokens(&self) -> usize {
        self.reasoning_tokens
    }

    /// Whether the end of thinking was forced (budget or wrap-up).
    pub fn forced(&self) -> bool {
        self.forced
    }

    fn sentence_ended(&self) -> bool {
        let t = self.tail.trim_end_matches([' ', '\t']);
        t.ends_with('\n') || t.ends_with(['.', '!', '?', ':'])
    }

    fn close_text(&self) -> String {
        let mut s = String::new();
        if !self.tail.ends_with('\n') {
            s.push('\n');
        }
        if let Some(m) = &self.closing_message {
            s.push_str(m.trim());
            s.push('\n');
        }
        s.push_str("</think>\n\n");
        s
    }

    /// Called before each token with the live budget and wrap-up flag.
    pub fn before_step(&mut self, budget: Budget, wrap_up: bool) -> Action {
        if !self.in_reasoning {
            return Action::Sample { ban_end: false };
        }
        let over = budget.limit().is_some_and(|b| self.reasoning_tokens >= b);
        if wrap_up {
            return self.force();
        }
        match self.phase {
            Phase::Thinking if over => {
                if self.grace_tokens == 0 || self.sentence_ended() {
                    return self.force();
                }
                self.phase = Phase::Grace {
                    left: self.grace_tokens,
                };
            }
            Phase::Grace { left } => {
                if !over {
                    self.phase = Phase::Thinking; // budget raised meanwhile
                } else if left == 0 || self.sentence_ended() {
                    return self.force();
                }
            }
            _ => {}
        }
        Action::Sample {
            ban_end: self.reasoning_tokens < self.min_tokens,
        }
    }

    fn force(&mut self) -> Action {
        let text = self.close_text();
        self.phase = Phase::Closed;
        self.in_reasoning = false;
        self.forced = true;
        Action::Force(text)
    }

    /// Forced tokens were fed: they count as reasoning.
    pub fn forced_tokens(&mut self, n: usize) {
        self.reasoning_tokens += n;
    }

    /// One sampled token was produced while in reasoning (call before `reasoning_text`).
    pub fn sampled_reasoning_token(&mut self) {
        self.reasoning_tokens += 1;
        if let Phase::Grace { left } = self.phase {
            self.phase = Phase::Grace {
                left: left.saturating_sub(1),
            };
        }
    }

    /// Reasoning text as it streams (for sentence ends).
    pub fn reasoning_text(&mut self, text: &str) {
        self.tail.push_str(text);
        if self.tail.len() > 64 {
            let cut = self.tail.len() - 32;
            let cut = (cut..self.tail.len())
                .find(|i| self.tail.is_char_boundary(*i))
                .unwrap_or(0);
            self.tail.drain(..cut);
        }
    }

    /// The model itself closed (or opened) thinking.
    pub fn set_in_reasoning(&mut self, on: bool) {
        if on && !self.in_reasoning {
            self.phase = Phase::Thinking;
        }
        if !on {
            self.phase = Phase::Closed;
        }
        self.in_reasoning = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(min: usize, grace: usize, msg: Option<&str>) -> ThinkingOptions {
        ThinkingOptions {
            budget: Budget::Unlimited,
            min_tokens: min,
            closing_message: msg.map(str::to_string),
            grace_tokens: grace,
        }
    }

    fn think(c: &mut ThinkingController, text: &str) {
        c.sampled_reasoning_token();
        c.reasoning_text(text);
    }

    #[test]
    fn budget_forces_end_of_thinking_exactly_at_the_budget() {
        let mut c = ThinkingController::new(&opts(0, 0, None), true);
        for i in 0..4 {
            assert_eq!(
                c.before_step(Budget::tokens(4), false),
                Action::Sample { ban_end: false },
                "token {i}"
            );
            think(&mut c, " word");
        }
        assert_eq!(
            c.before_step(Budget::tokens(4), false),
            Action::Force("\n</think>\n\n".into())
        );
        assert!(!c.in_reasoning() && c.forced());
        assert_eq!(
            c.before_step(Budget::tokens(4), false),
            Action::Sample { ban_end: false }
        );
    }

    #[test]
    fn budget_zero_while_thinking_closes_at_once_and_raising_it_continues() {
        let mut c = ThinkingController::new(&opts(0, 0, None), true);
        think(&mut c, "a");
        think(&mut c, "b");
        assert!(matches!(
            c.before_step(Budget::tokens(10), false),
            Action::Sample { .. }
        ));
        // Lowered below what was used: closes now.
        assert!(matches!(
            c.before_step(Budget::tokens(1), false),
            Action::Force(_)
        ));
    }

    #[test]
    fn wrap_up_closes_at_once_even_within_budget_and_grace() {
        let mut c = ThinkingController::new(&opts(0, 8, Some("Answer now.")), true);
        think(&mut c, "thinking");
        assert_eq!(
            c.before_step(Budget::Unlimited, true),
            Action::Force("\nAnswer now.\n</think>\n\n".into())
        );
    }

    #[test]
    fn min_thinking_masks_the_end_until_reached() {
        let mut c = ThinkingController::new(&opts(3, 0, None), true);
        for _ in 0..3 {
            assert_eq!(
                c.before_step(Budget::Unlimited, false),
                Action::Sample { ban_end: true }
            );
            think(&mut c, "x");
        }
        assert_eq!(
            c.before_step(Budget::Unlimited, false),
            Action::Sample { ban_end: false }
        );
    }

    #[test]
    fn soft_landing_waits_for_the_sentence_end_within_the_grace_window() {
        let mut c = ThinkingController::new(&opts(0, 5, Some("Time to answer.")), true);
        think(&mut c, "The sky is");
        think(&mut c, " blue");
        // Budget reached mid-sentence: grace.
        assert!(matches!(
            c.before_step(Budget::tokens(2), false),
            Action::Sample { .. }
        ));
        think(&mut c, " today");
        assert!(matches!(
            c.before_step(Budget::tokens(2), false),
            Action::Sample { .. }
        ));
        think(&mut c, ".");
        assert_eq!(
            c.before_step(Budget::tokens(2), false),
            Action::Force("\nTime to answer.\n</think>\n\n".into())
        );
    }

    #[test]
    fn soft_landing_gives_up_after_the_grace_window() {
        let mut c = ThinkingController::new(&opts(0, 2, None), true);
        think(&mut c, "no");
        assert!(matches!(
            c.before_step(Budget::tokens(1), false),
            Action::Sample { .. }
        ));
        think(&mut c, " end");
        assert!(matches!(
            c.before_step(Budget::tokens(1), false),
            Action::Sample { .. }
        ));
        think(&mut c, " in");
        assert!(matches!(
            c.before_step(Budget::tokens(1), false),
            Action::Force(_)
        ));
    }

    #[test]
    fn nothing_is_forced_when_not_reasoning() {
        let mut c = ThinkingController::new(&opts(5, 0, None), false);
        assert_eq!(
            c.before_step(Budget::tokens(0), true),
            Action::Sample { ban_end: false }
        );
        assert!(!c.forced());
    }
}
