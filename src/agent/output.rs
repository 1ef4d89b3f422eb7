//! Tool output under a byte cap, cut where it runs over and marked `[… N bytes cut …]`.
//!
//! Invariants:
//! - Memory stays bounded whatever a command prints: at most `cap` bytes are kept, however
//!   many are pushed.
//! - A cut is always marked with the exact number of bytes dropped; uncut text is returned
//!   as given (invalid UTF-8 shown as U+FFFD).

use std::collections::VecDeque;

/// Where text over the cap is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Keep the start (files, listings: the model reads on from where it was cut).
    End,
    /// Keep the start and the end (commands: the error is usually last).
    Middle,
}

/// Collects bytes, keeping at most `cap` of them.
#[derive(Debug)]
pub struct CappedText {
    cut: Cut,
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: usize,
}

impl CappedText {
    pub fn new(cap: usize, cut: Cut) -> CappedText {
        let (head_cap, tail_cap) = match cut {
            Cut::End => (cap, 0),
            Cut::Middle => (cap - cap / 2, cap / 2),
        };
        CappedText {
            cut,
            head_cap,
            tail_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        let room = self.head_cap - self.head.len();
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if self.tail_cap == 0 || bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            bytes = &bytes[bytes.len() - self.tail_cap..];
        }
        self.tail.extend(bytes);
        let over = self.tail.len().saturating_sub(self.tail_cap);
        self.tail.drain(..over);
    }

    pub fn push_str(&mut self, s: &str) {
        self.push(s.as_bytes())
    }

    /// Bytes pushed so far, kept or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether anything was dropped.
    pub fn is_cut(&self) -> bool {
        self.total > self.head.len() + self.tail.len()
    }

    /// The text with its marker, and whether it was cut.
    pub fn finish(self) -> (String, bool) {
        let cut_bytes = self.total - self.head.len() - self.tail.len();
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if cut_bytes == 0 {
            let (a, b) = self.tail.as_slices();
            text.push_str(&String::from_utf8_lossy(&[a, b].concat()));
            return (text, false);
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&marker(cut_bytes));
        if self.cut == Cut::Middle {
            text.push('\n');
            let (a, b) = self.tail.as_slices();
            text.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        }
        (text, true)
    }
}

/// The mark left where `n` bytes were cut.
pub fn marker(n: usize) -> String {
    format!("[… {n} bytes cut …]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_the_cap_nothing_is_cut() {
        let mut c = CappedText::new(10, Cut::Middle);
        c.push_str("hello");
        assert_eq!(c.finish(), ("hello".to_string(), false));
    }

    #[test]
    fn end_cut_keeps_the_start_and_counts_the_rest() {
        let mut c = CappedText::new(4, Cut::End);
        c.push_str("abcdefghij");
        assert_eq!(c.finish(), ("abcd\n[… 6 bytes cut …]".to_string(), true));
    }

    #[test]
    fn middle_cut_keeps_both_ends_across_many_pushes() {
        let mut c = CappedText::new(6, Cut::Middle);
        for b in b"0123456789abcdef".chunks(3) {
            c.push(b);
        }
        assert_eq!(c.total(), 16);
        assert_eq!(
            c.finish(),
            ("012\n[… 10 bytes cut …]\ndef".to_string(), true)
        );
    }
}
