//! Stop strings over streamed text.
//!
//! Invariants:
//! - Text that cannot be the start of any stop string is emitted by the same `push`;
//!   only the longest suffix that is a proper prefix of some stop string is held back.
//! - When a stop string completes (the earliest-starting one, if several do), the text
//!   before it is emitted, the stop string and everything after it are discarded, and
//!   every later `push`/`finish` emits nothing and reports `stopped`.
//! - Without a stop, the concatenation of all `emit`s plus `finish()` equals the input.
//! - Empty stop strings are ignored. Held text is always cut at `char` boundaries.

/// What one `push` produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopResult {
    /// Text safe to show now.
    pub emit: String,
    /// A stop string completed; generation should end.
    pub stopped: bool,
}

/// Finds stop strings in text that arrives in pieces.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has already been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, text: &str) -> StopResult {
        if self.stopped {
            return StopResult {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(start) = earliest {
            self.held.truncate(start);
            self.stopped = true;
            return StopResult {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let hold_from = self.partial_match_start();
        let rest = self.held.split_off(hold_from);
        StopResult {
            emit: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Flushes the held text (nothing after a stop).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            self.held.clear();
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Start of the longest suffix of `held` that is a proper prefix of a stop string.
    fn partial_match_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops
                    .iter()
                    .any(|stop| stop.len() > tail.len() && stop.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn text_without_stop_prefix_is_emitted_at_once() {
        let mut m = matcher(&["STOP"]);
        let r = m.push("hello world");
        assert_eq!(r.emit, "hello world");
        assert!(!r.stopped);
    }

    #[test]
    fn stop_in_one_push_emits_text_before_it() {
        let mut m = matcher(&["\nUser:"]);
        let r = m.push("answer\nUser: more");
        assert_eq!(
            r,
            StopResult {
                emit: "answer".into(),
                stopped: true
            }
        );
        assert_eq!(
            m.push("x"),
            StopResult {
                emit: String::new(),
                stopped: true
            }
        );
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_split_across_pushes_is_held_then_swallowed() {
        let mut m = matcher(&["<end>"]);
        assert_eq!(m.push("ab<e").emit, "ab");
        assert_eq!(m.push("n").emit, "");
        let r = m.push("d>tail");
        assert_eq!(
            r,
            StopResult {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn false_partial_match_is_released() {
        let mut m = matcher(&["<end>"]);
        assert_eq!(m.push("a<en").emit, "a");
        let r = m.push("try");
        assert_eq!(r.emit, "<entry");
        assert!(!r.stopped);
    }

    #[test]
    fn finish_flushes_a_held_partial_match() {
        let mut m = matcher(&["<end>"]);
        assert_eq!(m.push("x<en").emit, "x");
        assert_eq!(m.finish(), "<en");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = matcher(&["cd", "bcdx", "b"]);
        let r = m.push("abcd");
        assert_eq!(
            r,
            StopResult {
                emit: "a".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_text_respects_multibyte_chars() {
        let mut m = matcher(&["éé"]);
        assert_eq!(m.push("aé").emit, "a");
        let r = m.push("é!");
        assert_eq!(
            r,
            StopResult {
                emit: String::new(),
                stopped: true
            }
        );
        let mut m = matcher(&["😀x"]);
        assert_eq!(m.push("é😀").emit, "é");
        assert_eq!(m.push("y").emit, "😀y");
    }

    #[test]
    fn every_split_position_finds_the_stop() {
        let text = "one two <|im_end|> three";
        let stops = ["<|im_end|>", "two <|x"];
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let mut m = matcher(&stops);
                let mut out = String::new();
                let mut stopped = false;
                for chunk in [&text[..i], &text[i..j], &text[j..]] {
                    let r = m.push(chunk);
                    out.push_str(&r.emit);
                    stopped |= r.stopped;
                }
                out.push_str(&m.finish());
                assert!(stopped, "split {i},{j}");
                assert_eq!(out, "one two ", "split {i},{j}");
            }
        }
    }

    #[test]
    fn without_stops_everything_passes_through() {
        let mut m = matcher(&["", "zz"]);
        let mut out = m.push("a z").emit;
        out.push_str(&m.push("b").emit);
        out.push_str(&m.finish());
        assert_eq!(out, "a zb");
    }
}
