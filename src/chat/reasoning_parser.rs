//! Streaming split of model output into reasoning and answer.
//!
//! Invariants:
//! - Text is fed in arbitrary chunks; the parser holds back only what could still be the
//!   start of a tag it is waiting for (plus, before the first visible character,
//!   leading whitespace) and emits everything else from the same `push`.
//! - Without `starts_in_reasoning`, a start tag is recognised only at the very start of
//!   the output, after optional whitespace (which is dropped with the tag); anything
//!   else makes the whole output the answer, verbatim.
//! - Inside reasoning, the first end tag closes it; reasoning text is emitted verbatim
//!   (no trimming). Whitespace right after the end tag is dropped, so the answer starts
//!   at its first non-whitespace character. Later tags in the answer are plain text.
//! - An *interrupt* tag ([`ReasoningParser::with_interrupts`], e.g. a tool-call open tag)
//!   seen inside reasoning also ends it, before the end tag would: the interrupt tag is
//!   not dropped but starts the answer, verbatim (models such as Nemotron 3 sometimes
//!   open a tool call without closing their reasoning first; the call must reach the
//!   answer's tool-call parser whole).
//! - Tags themselves are never emitted. Concatenating all `Reasoning` segments gives the
//!   reasoning and all `Content` segments the answer, however the text was chunked.
//! - Segments are never empty, and one call never returns two adjacent segments of the
//!   same kind.

/// A piece of parsed output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Reasoning(String),
    Content(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing visible yet; a start tag may still come.
    Start,
    Reasoning,
    /// Just after the end tag: dropping whitespace.
    AfterEnd,
    Content,
}

/// Splits streamed text at `start_tag`/`end_tag` (e.g. `<think>`/`</think>`).
#[derive(Clone, Debug)]
pub struct ReasoningParser {
    start_tag: String,
    end_tag: String,
    /// Tags that also end the reasoning and begin the answer (kept in it).
    interrupts: Vec<String>,
    state: State,
    /// Text received but not yet emitted (a possible tag prefix or leading whitespace).
    held: String,
}

impl ReasoningParser {
    /// `starts_in_reasoning` is true when the prompt already opened the reasoning block
    /// (e.g. a generation prompt ending in `<think>\n`).
    pub fn new(start_tag: &str, end_tag: &str, starts_in_reasoning: bool) -> Self {
        Self {
            start_tag: start_tag.to_string(),
            end_tag: end_tag.to_string(),
            interrupts: Vec::new(),
            state: if starts_in_reasoning {
                State::Reasoning
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Adds tags that end the reasoning where they appear and start the answer with
    /// themselves (see the module invariants). Empty tags are ignored.
    pub fn with_interrupts<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.interrupts.extend(
            tags.into_iter()
                .map(Into::into)
                .filter(|t: &String| !t.is_empty()),
        );
        self
    }

    /// Whether text now being generated belongs to the reasoning.
    pub fn in_reasoning(&self) -> bool {
        self.state == State::Reasoning
    }

    /// Feeds a chunk; returns what can be decided now.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        let mut out = Vec::new();
        self.held.push_str(text);
        loop {
            let progressed = match self.state {
                State::Start => self.step_start(&mut out),
                State::Reasoning => self.step_reasoning(&mut out),
                State::AfterEnd => self.step_after_end(),
                State::Content => {
                    let rest = std::mem::take(&mut self.held);
                    emit(&mut out, Segment::Content(rest));
                    false
                }
            };
            if !progressed {
                break;
            }
        }
        out
    }

    /// Flushes held text at the end of generation: an unfinished tag is emitted as
    /// ordinary text of the current kind.
    pub fn finish(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.held);
        match self.state {
            State::Start | State::Content => emit(&mut out, Segment::Content(rest)),
            State::Reasoning => emit(&mut out, Segment::Reasoning(rest)),
            State::AfterEnd => {}
        }
        out
    }

    /// Returns true when the state changed and the loop should go on.
    fn step_start(&mut self, out: &mut Vec<Segment>) -> bool {
        let trimmed = self.held.trim_start();
        if trimmed.is_empty() {
            return false;
        }
        if let Some(after) = trimmed.strip_prefix(self.start_tag.as_str()) {
            self.held = after.to_string();
            self.state = State::Reasoning;
            return true;
        }
        if !self.start_tag.is_empty() && self.start_tag.starts_with(trimmed) {
            return false; // still a possible start tag
        }
        self.state = State::Content;
        let rest = std::mem::take(&mut self.held);
        emit(out, Segment::Content(rest));
        false
    }

    fn step_reasoning(&mut self, out: &mut Vec<Segment>) -> bool {
        // The earliest end or interrupt tag; at equal positions the end tag wins.
        let end = if self.end_tag.is_empty() {
            None
        } else {
            self.held.find(self.end_tag.as_str()).map(|pos| (pos, None))
        };
        let interrupt = self
            .interrupts
            .iter()
            .enumerate()
            .filter_map(|(i, tag)| self.held.find(tag.as_str()).map(|pos| (pos, Some(i))))
            .min_by_key(|&(pos, _)| pos);
        let first = match (end, interrupt) {
            (Some(e), Some(i)) if i.0 < e.0 => Some(i),
            (Some(e), _) => Some(e),
            (None, i) => i,
        };
        match first {
            Some((pos, None)) => {
                let after = self.held[pos + self.end_tag.len()..].to_string();
                self.held.truncate(pos);
                let before = std::mem::replace(&mut self.held, after);
                emit(out, Segment::Reasoning(before));
                self.state = State::AfterEnd;
                true
            }
            Some((pos, Some(_))) => {
                // The interrupt tag stays: it is the first text of the answer.
                let rest = self.held.split_off(pos);
                let before = std::mem::replace(&mut self.held, rest);
                emit(out, Segment::Reasoning(before));
                self.state = State::Content;
                true
            }
            None => {
                let keep = std::iter::once(&self.end_tag)
                    .chain(&self.interrupts)
                    .map(|tag| partial_suffix_len(&self.held, tag))
                    .max()
                    .unwrap_or(0);
                let ready = self.held.len() - keep;
                let rest = self.held.split_off(ready);
                let ready_text = std::mem::replace(&mut self.held, rest);
                emit(out, Segment::Reasoning(ready_text));
                false
            }
        }
    }

    fn step_after_end(&mut self) -> bool {
        let trimmed = self.held.trim_start();
        if trimmed.is_empty() {
            self.held.clear();
            return false;
        }
        self.held = trimmed.to_string();
        self.state = State::Content;
        true
    }
}

/// Length of the longest proper suffix of `text` that is a prefix of `tag`.
pub(super) fn partial_suffix_len(text: &str, tag: &str) -> usize {
    let longest = text.len().min(tag.len().saturating_sub(1));
    (1..=longest)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// Appends `seg` unless empty, merging with a previous segment of the same kind.
fn emit(out: &mut Vec<Segment>, seg: Segment) {
    match (out.last_mut(), seg) {
        (_, Segment::Reasoning(s)) | (_, Segment::Content(s)) if s.is_empty() => {}
        (Some(Segment::Reasoning(prev)), Segment::Reasoning(s)) => prev.push_str(&s),
        (Some(Segment::Content(prev)), Segment::Content(s)) => prev.push_str(&s),
        (_, seg) => out.push(seg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `chunks` through a parser; returns (reasoning, content, all segments).
    fn run(parser: &mut ReasoningParser, chunks: &[&str]) -> (String, String, Vec<Vec<Segment>>) {
        let mut batches = Vec::new();
        for chunk in chunks {
            batches.push(parser.push(chunk));
        }
        batches.push(parser.finish());
        let (mut reasoning, mut content) = (String::new(), String::new());
        for seg in batches.iter().flatten() {
            match seg {
                Segment::Reasoning(s) => reasoning.push_str(s),
                Segment::Content(s) => content.push_str(s),
            }
        }
        (reasoning, content, batches)
    }

    fn think(starts_in_reasoning: bool) -> ReasoningParser {
        ReasoningParser::new("<think>", "</think>", starts_in_reasoning)
    }

    #[test]
    fn leading_think_tag_enters_reasoning_and_answer_follows() {
        let (r, c, _) = run(&mut think(false), &["  \n<think>plan</think>\n\nAnswer."]);
        assert_eq!(r, "plan");
        assert_eq!(c, "Answer.");
    }

    #[test]
    fn starting_in_reasoning_needs_no_start_tag() {
        let mut p = think(true);
        assert!(p.in_reasoning());
        let first = p.push("step one ");
        assert_eq!(first, vec![Segment::Reasoning("step one ".into())]);
        let second = p.push("done</think>  ok");
        assert_eq!(
            second,
            vec![
                Segment::Reasoning("done".into()),
                Segment::Content("ok".into())
            ]
        );
        assert!(!p.in_reasoning());
    }

    #[test]
    fn output_not_starting_with_a_tag_is_all_content() {
        let (r, c, _) = run(&mut think(false), &["Hello <think>not reasoning</think> x"]);
        assert_eq!(r, "");
        assert_eq!(c, "Hello <think>not reasoning</think> x");
    }

    #[test]
    fn only_the_possible_tag_prefix_is_held_back() {
        let mut p = think(true);
        assert_eq!(p.push("abc</th"), vec![Segment::Reasoning("abc".into())]);
        assert_eq!(p.push("ink"), vec![]);
        assert!(p.in_reasoning());
        assert_eq!(p.push(">"), vec![]);
        assert!(!p.in_reasoning());
        assert_eq!(p.push("\n"), vec![]);
        assert_eq!(p.push("X"), vec![Segment::Content("X".into())]);
    }

    #[test]
    fn a_false_tag_prefix_is_released_as_reasoning() {
        let mut p = think(true);
        assert_eq!(p.push("a </t"), vec![Segment::Reasoning("a ".into())]);
        assert_eq!(p.push("able>"), vec![Segment::Reasoning("</table>".into())]);
    }

    #[test]
    fn content_of_one_push_is_merged_into_one_segment() {
        let mut p = think(false);
        let segs = p.push("<think>a</think>b</think>c");
        assert_eq!(
            segs,
            vec![
                Segment::Reasoning("a".into()),
                Segment::Content("b</think>c".into())
            ]
        );
    }

    #[test]
    fn finish_flushes_an_unfinished_tag_as_text() {
        let (r, c, _) = run(&mut think(true), &["abc</thi"]);
        assert_eq!((r.as_str(), c.as_str()), ("abc</thi", ""));
        let (r, c, _) = run(&mut think(false), &[" <thi"]);
        assert_eq!((r.as_str(), c.as_str()), ("", " <thi"));
    }

    #[test]
    fn every_split_position_gives_the_same_result() {
        let cases: [(&str, bool, &str, &str); 4] = [
            (
                "\n <think>\nI think é😀 so.\n</think>\n\n The answer: 42 </think>",
                false,
                "\nI think é😀 so.\n",
                "The answer: 42 </think>",
            ),
            ("reason </t </think>answer", true, "reason </t ", "answer"),
            ("plain <think> answer", false, "", "plain <think> answer"),
            ("<thinking>x", false, "", "<thinking>x"),
        ];
        for (text, starts, want_r, want_c) in cases {
            let boundaries: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for &i in &boundaries {
                for &j in boundaries.iter().filter(|&&j| j >= i) {
                    let chunks = [&text[..i], &text[i..j], &text[j..]];
                    let (r, c, batches) = run(&mut think(starts), &chunks);
                    assert_eq!(
                        (r.as_str(), c.as_str()),
                        (want_r, want_c),
                        "split at {i},{j} of {text:?}"
                    );
                    for batch in &batches {
                        assert!(batch.windows(2).all(
                            |w| std::mem::discriminant(&w[0]) != std::mem::discriminant(&w[1])
                        ));
                        assert!(batch.iter().all(|s| !matches!(s, Segment::Reasoning(t) | Segment::Content(t) if t.is_empty())));
                    }
                }
            }
            // One character at a time, too.
            let singles: Vec<&str> = boundaries.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let (r, c, _) = run(&mut think(starts), &singles);
            assert_eq!((r.as_str(), c.as_str()), (want_r, want_c));
        }
    }

    #[test]
    fn non_tag_text_is_emitted_without_waiting() {
        let mut p = think(true);
        let text = "streaming reasoning with < and </ inside";
        let (mut pushed, mut seen) = (String::new(), String::new());
        for ch in text.chars() {
            pushed.push(ch);
            for seg in p.push(&ch.to_string()) {
                if let Segment::Reasoning(s) = seg {
                    seen.push_str(&s);
                }
            }
            // Only a possible prefix of "</think>" ("<" or "</") may be held back.
            let held = &pushed[seen.len()..];
            assert!(pushed.starts_with(&seen));
            assert!(
                held.is_empty() || held == "<" || held == "</",
                "held {held:?}"
            );
        }
        assert_eq!(seen, text);
    }

    fn think_or_call(starts_in_reasoning: bool) -> ReasoningParser {
        think(starts_in_reasoning).with_interrupts(["<tool_call>"])
    }

    #[test]
    fn an_interrupt_tag_ends_the_reasoning_and_starts_the_answer() {
        let (r, c, _) = run(
            &mut think_or_call(true),
            &["I will call it.\n<tool_call>\n<function=f>\n</function>\n</tool_call>"],
        );
        assert_eq!(r, "I will call it.\n");
        assert_eq!(c, "<tool_call>\n<function=f>\n</function>\n</tool_call>");
        // After a leading <think> too, and a later end tag is then plain answer text.
        let (r, c, _) = run(
            &mut think_or_call(false),
            &["<think>plan<tool_call>x</think> y"],
        );
        assert_eq!((r.as_str(), c.as_str()), ("plan", "<tool_call>x</think> y"));
    }

    #[test]
    fn the_end_tag_still_wins_over_a_later_interrupt() {
        let (r, c, _) = run(&mut think_or_call(true), &["a</think>\n<tool_call>b"]);
        assert_eq!((r.as_str(), c.as_str()), ("a", "<tool_call>b"));
    }

    #[test]
    fn without_interrupts_a_tool_tag_stays_in_the_reasoning() {
        let (r, c, _) = run(&mut think(true), &["a<tool_call>b</think>c"]);
        assert_eq!((r.as_str(), c.as_str()), ("a<tool_call>b", "c"));
    }

    #[test]
    fn a_possible_interrupt_prefix_is_held_back_at_every_split() {
        let text = "x <tool_ y </thi <tool_call>z";
        let boundaries: Vec<usize> = (0..=text.len()).collect();
        for &i in &boundaries {
            for &j in boundaries.iter().filter(|&&j| j >= i) {
                let mut p = think_or_call(true);
                let chunks = [&text[..i], &text[i..j], &text[j..]];
                let (r, c, _) = run(&mut p, &chunks);
                assert_eq!(
                    (r.as_str(), c.as_str()),
                    ("x <tool_ y </thi ", "<tool_call>z"),
                    "split at {i},{j}"
                );
            }
        }
        let mut p = think_or_call(true);
        assert_eq!(p.push("a <tool_c"), vec![Segment::Reasoning("a ".into())]);
        assert!(p.in_reasoning());
        assert_eq!(p.push("all>"), vec![Segment::Content("<tool_call>".into())]);
        assert!(!p.in_reasoning());
    }
}
