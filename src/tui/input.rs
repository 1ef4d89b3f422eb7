//! The prompt editor model: a multi-line text buffer with a cursor, driven by key events
//! (the input history it steps through is `history.rs`).
//!
//! Nothing here draws to the terminal; [`InputEditor::render_lines`] turns the buffer into
//! soft-wrapped visual lines plus the cursor's visual position, and the view draws those.
//!
//! Invariants of [`InputEditor`]:
//! - `lines` is never empty; an empty editor is one empty line.
//! - `row < lines.len()` and `col <= chars(lines[row])`; `col` counts `char`s, not bytes,
//!   so every slice is taken at a char boundary and no input can make it panic.
//! - No line contains a control character (`\n` splits lines, tabs become four spaces,
//!   other controls are dropped), so rendered text can never emit terminal escapes and
//!   display widths are always defined.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use unicode_width::UnicodeWidthChar;

/// Spaces a tab becomes, in pasted and typed text.
const TAB_SPACES: &str = "    ";

/// What the caller should do after [`InputEditor::handle_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputAction {
    /// The key was handled (the text or cursor may have changed); nothing else to do.
    None,
    /// Enter on a non-blank buffer: the text, exactly as typed; the editor is now empty.
    Submit(String),
    /// Up on the first line: the caller may replace the text with an older history entry.
    HistoryPrev,
    /// Down on the last line: the caller may replace the text with a newer entry or the draft.
    HistoryNext,
    /// The editor does not use this key (Esc, Tab, Ctrl+C, PageUp, F-keys, ...): route it
    /// elsewhere.
    Ignored,
}

/// A multi-line text buffer with a cursor. See the module docs for its invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputEditor {
    lines: Vec<String>,
    row: usize,
    col: usize,
}

impl Default for InputEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl InputEditor {
    /// An empty editor.
    pub fn new() -> Self {
        Self {
            lines: vec![String::new()],
            row: 0,
            col: 0,
        }
    }

    /// The whole text, lines joined by `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Replaces the text (normalised as by [`insert_str`](Self::insert_str)); the cursor
    /// goes to the end.
    pub fn set_text(&mut self, text: &str) {
        self.clear();
        self.insert_str(text);
    }

    /// True when the buffer holds no characters at all (one empty line).
    pub fn is_empty(&self) -> bool {
        self.lines.len() == 1 && self.lines[0].is_empty()
    }

    /// Empties the buffer and puts the cursor at the start.
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// The cursor as (row, col): logical line index and char index within that line.
    pub fn cursor(&self) -> (usize, usize) {
        (self.row, self.col)
    }

    /// Number of logical lines (at least 1).
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// Inserts text at the cursor, as a bracketed paste would: `\r\n` and `\r` become
    /// `\n` (which starts a new line), tabs become four spaces, other control characters
    /// are dropped. The cursor ends after the inserted text.
    pub fn insert_str(&mut self, s: &str) {
        let normalised = normalise(s);
        let mut parts = normalised.split('\n');
        let first = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();

        let at = byte_index(&self.lines[self.row], self.col);
        let tail = self.lines[self.row].split_off(at);
        self.lines[self.row].push_str(first);
        if rest.is_empty() {
            self.col += first.chars().count();
            self.lines[self.row].push_str(&tail);
            return;
        }
        for part in rest {
            self.row += 1;
            self.lines.insert(self.row, part.to_string());
        }
        self.col = self.lines[self.row].chars().count();
        self.lines[self.row].push_str(&tail);
    }

    /// Applies one key press. Release events are ignored (returned as `None`) so that
    /// terminals reporting them with keyboard enhancement flags do not double keys.
    pub fn handle_key(&mut self, key: KeyEvent) -> InputAction {
        if key.kind == KeyEventKind::Release {
            return InputAction::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let shift = key.modifiers.contains(KeyModifiers::SHIFT);
        match key.code {
            KeyCode::Enter if shift || alt => self.insert_newline(),
            KeyCode::Enter => return self.submit(),
            KeyCode::Char('j') if ctrl => self.insert_newline(),
            KeyCode::Char('a') if ctrl => self.col = 0,
            KeyCode::Char('e') if ctrl => self.col = self.line_len(),
            KeyCode::Char('w') if ctrl => self.delete_word_before(),
            KeyCode::Char('u') if ctrl => self.delete_to_line_start(),
            KeyCode::Char('k') if ctrl => self.delete_to_line_end(),
            KeyCode::Char(_) if ctrl || alt => return InputAction::Ignored,
            KeyCode::Char(c) => {
                let mut buf = [0u8; 4];
                self.insert_str(c.encode_utf8(&mut buf));
            }
            KeyCode::Backspace if ctrl || alt => self.delete_word_before(),
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Left if ctrl || alt => self.word_left(),
            KeyCode::Right if ctrl || alt => self.word_right(),
            KeyCode::Left => self.left(),
            KeyCode::Right => self.right(),
            KeyCode::Home if ctrl => (self.row, self.col) = (0, 0),
            KeyCode::End if ctrl => {
                self.row = self.lines.len() - 1;
                self.col = self.line_len();
            }
            KeyCode::Home => self.col = 0,
            KeyCode::End => self.col = self.line_len(),
            KeyCode::Up => {
                if self.row == 0 {
                    return InputAction::HistoryPrev;
                }
                self.row -= 1;
                self.col = self.col.min(self.line_len());
            }
            KeyCode::Down => {
                if self.row + 1 >= self.lines.len() {
                    return InputAction::HistoryNext;
                }
                self.row += 1;
                self.col = self.col.min(self.line_len());
            }
            _ => return InputAction::Ignored,
        }
        InputAction::None
    }

    /// Soft-wraps the text to `width` display columns and returns the visual lines plus
    /// the cursor's visual position as `(x, y)` (column, row), ready for
    /// `Frame::set_cursor_position`.
    ///
    /// Lines break after the last whitespace that fits, or mid-word when a word is wider
    /// than `width`; a wide char (CJK, emoji) is never split and never straddles the edge.
    /// No visual line is wider than `width`, except a single char wider than `width`
    /// itself (width 1 and a CJK char). When the cursor sits after a line that fills
    /// `width` exactly, it goes to column 0 of one extra empty visual line. Logical lines
    /// always start a new visual line; an empty logical line is one empty visual line.
    pub fn render_lines(&self, width: u16) -> (Vec<String>, (u16, u16)) {
        let width = usize::from(width.max(1));
        let mut out = Vec::new();
        let mut cursor = (0usize, 0usize);
        for (r, line) in self.lines.iter().enumerate() {
            let chars: Vec<char> = line.chars().collect();
            let segments = wrap_segments(&chars, width);
            let first_visual = out.len();
            for &(s, e) in &segments {
                out.push(chars[s..e].iter().collect::<String>());
            }
            if r == self.row {
                // The segment holding the cursor: the one where start <= col < end, or the
                // last one when the cursor is at the end of the line.
                let k = segments
                    .iter()
                    .position(|&(s, e)| self.col >= s && self.col < e)
                    .unwrap_or(segments.len() - 1);
                let (s, _) = segments[k];
                let x = str_width(&chars[s..self.col.min(chars.len())]);
                let y = first_visual + k;
                cursor = if x >= width {
                    // Only at the end of a full last segment: open a row for the cursor.
                    out.insert(y + 1, String::new());
                    (0, y + 1)
                } else {
                    (x, y)
                };
            }
        }
        let clamp = |v: usize| u16::try_from(v).unwrap_or(u16::MAX);
        (out, (clamp(cursor.0), clamp(cursor.1)))
    }

    fn line_len(&self) -> usize {
        self.lines[self.row].chars().count()
    }

    fn insert_newline(&mut self) {
        self.insert_str("\n");
    }

    fn submit(&mut self) -> InputAction {
        let text = self.text();
        if text.trim().is_empty() {
            return InputAction::None;
        }
        self.clear();
        InputAction::Submit(text)
    }

    fn left(&mut self) {
        if self.col > 0 {
            self.col -= 1;
        } else if self.row > 0 {
            self.row -= 1;
            self.col = self.line_len();
        }
    }

    fn right(&mut self) {
        if self.col < self.line_len() {
            self.col += 1;
        } else if self.row + 1 < self.lines.len() {
            self.row += 1;
            self.col = 0;
        }
    }

    /// Moves to the start of the word before the cursor (crossing a line start).
    fn word_left(&mut self) {
        if self.col == 0 {
            self.left();
            return;
        }
        self.col = word_start_before(&self.lines[self.row], self.col);
    }

    /// Moves to the end of the word after the cursor (crossing a line end).
    fn word_right(&mut self) {
        let len = self.line_len();
        if self.col == len {
            self.right();
            return;
        }
        let chars: Vec<char> = self.lines[self.row].chars().collect();
        let mut c = self.col;
        while c < len && chars[c].is_whitespace() {
            c += 1;
        }
        while c < len && !chars[c].is_whitespace() {
            c += 1;
        }
        self.col = c;
    }

    fn backspace(&mut self) {
        if self.col > 0 {
            self.remove_range(self.col - 1, self.col);
            self.col -= 1;
        } else if self.row > 0 {
            let line = self.lines.remove(self.row);
            self.row -= 1;
            self.col = self.line_len();
            self.lines[self.row].push_str(&line);
        }
    }

    fn delete(&mut self) {
        if self.col < self.line_len() {
            self.remove_range(self.col, self.col + 1);
        } else if self.row + 1 < self.lines.len() {
            let next = self.lines.remove(self.row + 1);
            self.lines[self.row].push_str(&next);
        }
    }

    /// Ctrl+W: deletes trailing whitespace then the word before the cursor; at a line
    /// start it joins with the previous line, like Backspace.
    fn delete_word_before(&mut self) {
        if self.col == 0 {
            self.backspace();
            return;
        }
        let start = word_start_before(&self.lines[self.row], self.col);
        self.remove_range(start, self.col);
        self.col = start;
    }

    /// Ctrl+U: deletes from the line start to the cursor.
    fn delete_to_line_start(&mut self) {
        self.remove_range(0, self.col);
        self.col = 0;
    }

    /// Ctrl+K: deletes from the cursor to the line end; at the line end it joins the next
    /// line, as in Emacs.
    fn delete_to_line_end(&mut self) {
        if self.col == self.line_len() {
            self.delete();
        } else {
            let at = byte_index(&self.lines[self.row], self.col);
            self.lines[self.row].truncate(at);
        }
    }

    /// Removes chars `[from, to)` of the current line.
    fn remove_range(&mut self, from: usize, to: usize) {
        let line = &mut self.lines[self.row];
        let a = byte_index(line, from);
        let b = byte_index(line, to);
        line.replace_range(a..b, "");
    }
}

/// Byte offset of char index `col` in `s` (the length when `col` is at or past the end).
fn byte_index(s: &str, col: usize) -> usize {
    s.char_indices().nth(col).map_or(s.len(), |(i, _)| i)
}

/// Char index where the word ending at or before `col` starts (skipping whitespace first).
fn word_start_before(line: &str, col: usize) -> usize {
    let chars: Vec<char> = line.chars().collect();
    let mut c = col.min(chars.len());
    while c > 0 && chars[c - 1].is_whitespace() {
        c -= 1;
    }
    while c > 0 && !chars[c - 1].is_whitespace() {
        c -= 1;
    }
    c
}

/// Normalises pasted or typed text: CRLF and CR to LF, tab to four spaces, other control
/// characters dropped.
fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' => out.push('\n'),
            '\t' => out.push_str(TAB_SPACES),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

fn str_width(chars: &[char]) -> usize {
    chars.iter().map(|&c| char_width(c)).sum()
}

/// Splits one logical line into visual segments `[start, end)` (char indices), each at
/// most `width` columns wide, breaking after whitespace when possible. Always returns at
/// least one segment; segments are contiguous and cover the whole line.
fn wrap_segments(chars: &[char], width: usize) -> Vec<(usize, usize)> {
    let mut segments = Vec::new();
    let mut start = 0;
    let mut used = 0;
    // Char index just after the last whitespace in the current segment (a break point).
    let mut last_break = None;
    for (i, &c) in chars.iter().enumerate() {
        let w = char_width(c);
        if used + w > width && i > start {
            let cut = match last_break {
                Some(b) if b > start && b <= i => b,
                _ => i,
            };
            segments.push((start, cut));
            start = cut;
            used = str_width(&chars[start..i]);
            last_break = None;
            // A word carried over may itself not fit with this char; split it hard.
            if used + w > width && i > start {
                segments.push((start, i));
                start = i;
                used = 0;
            }
        }
        used += w;
        if c.is_whitespace() {
            last_break = Some(i + 1);
        }
    }
    segments.push((start, chars.len()));
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }
    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }
    fn typed(s: &str) -> InputEditor {
        let mut e = InputEditor::new();
        for c in s.chars() {
            e.handle_key(key(KeyCode::Char(c)));
        }
        e
    }

    #[test]
    fn enter_submits_text_and_clears_editor() {
        let mut e = typed("hello");
        assert_eq!(
            e.handle_key(key(KeyCode::Enter)),
            InputAction::Submit("hello".into())
        );
        assert!(e.is_empty());
        assert_eq!(e.cursor(), (0, 0));
    }

    #[test]
    fn enter_on_blank_text_does_not_submit() {
        let mut e = InputEditor::new();
        assert_eq!(e.handle_key(key(KeyCode::Enter)), InputAction::None);
        let mut e = typed("  ");
        assert_eq!(e.handle_key(key(KeyCode::Enter)), InputAction::None);
        assert_eq!(e.text(), "  ");
    }

    #[test]
    fn shift_alt_enter_and_ctrl_j_insert_newlines() {
        let mut e = typed("a");
        e.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::SHIFT));
        e.handle_key(key(KeyCode::Char('b')));
        e.handle_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT));
        e.handle_key(key(KeyCode::Char('c')));
        e.handle_key(ctrl('j'));
        assert_eq!(e.text(), "a\nb\nc\n");
        assert_eq!(e.cursor(), (3, 0));
        assert_eq!(
            e.handle_key(key(KeyCode::Enter)),
            InputAction::Submit("a\nb\nc\n".into())
        );
    }

    #[test]
    fn newline_in_middle_splits_line() {
        let mut e = typed("abcd");
        e.handle_key(key(KeyCode::Left));
        e.handle_key(key(KeyCode::Left));
        e.handle_key(ctrl('j'));
        assert_eq!(e.text(), "ab\ncd");
        assert_eq!(e.cursor(), (1, 0));
    }

    #[test]
    fn backspace_at_line_start_joins_with_previous_line() {
        let mut e = InputEditor::new();
        e.set_text("ab\ncd");
        e.handle_key(key(KeyCode::Home));
        e.handle_key(key(KeyCode::Backspace));
        assert_eq!(e.text(), "abcd");
        assert_eq!(e.cursor(), (0, 2));
        e.handle_key(key(KeyCode::Backspace));
        assert_eq!(e.text(), "acd");
    }

    #[test]
    fn backspace_at_text_start_does_nothing() {
        let mut e = InputEditor::new();
        assert_eq!(e.handle_key(key(KeyCode::Backspace)), InputAction::None);
        assert!(e.is_empty());
    }

    #[test]
    fn delete_at_line_end_joins_next_line() {
        let mut e = InputEditor::new();
        e.set_text("ab\ncd");
        e.handle_key(key(KeyCode::Up));
        e.handle_key(key(KeyCode::End));
        e.handle_key(key(KeyCode::Delete));
        assert_eq!(e.text(), "abcd");
        assert_eq!(e.cursor(), (0, 2));
        e.handle_key(key(KeyCode::Delete));
        assert_eq!(e.text(), "abd");
        e.handle_key(key(KeyCode::End));
        e.handle_key(key(KeyCode::Delete));
        assert_eq!(e.text(), "abd");
    }

    #[test]
    fn left_right_cross_line_edges_and_home_end_stay_in_line() {
        let mut e = InputEditor::new();
        e.set_text("ab\ncd");
        e.handle_key(key(KeyCode::Home));
        assert_eq!(e.cursor(), (1, 0));
        e.handle_key(key(KeyCode::Left));
        assert_eq!(e.cursor(), (0, 2));
        e.handle_key(key(KeyCode::Right));
        assert_eq!(e.cursor(), (1, 0));
        e.handle_key(key(KeyCode::End));
        assert_eq!(e.cursor(), (1, 2));
        e.handle_key(key(KeyCode::Right));
        assert_eq!(e.cursor(), (1, 2));
        e.handle_key(ctrl('a'));
        assert_eq!(e.cursor(), (1, 0));
        e.handle_key(ctrl('e'));
        assert_eq!(e.cursor(), (1, 2));
    }

    #[test]
    fn up_down_move_inside_text_and_ask_history_at_edges() {
        let mut e = InputEditor::new();
        e.set_text("first line\nx\nlast");
        assert_eq!(e.handle_key(key(KeyCode::Down)), InputAction::HistoryNext);
        assert_eq!(e.handle_key(key(KeyCode::Up)), InputAction::None);
        assert_eq!(e.cursor(), (1, 1), "column clamps to the shorter line");
        assert_eq!(e.handle_key(key(KeyCode::Up)), InputAction::None);
        assert_eq!(e.cursor(), (0, 1));
        assert_eq!(e.handle_key(key(KeyCode::Up)), InputAction::HistoryPrev);
        assert_eq!(e.handle_key(key(KeyCode::Down)), InputAction::None);
        assert_eq!(e.cursor(), (1, 1));
    }

    #[test]
    fn ctrl_w_deletes_word_before_cursor() {
        let mut e = typed("hello big  world  ");
        e.handle_key(ctrl('w'));
        assert_eq!(e.text(), "hello big  ");
        e.handle_key(ctrl('w'));
        assert_eq!(e.text(), "hello ");
        e.handle_key(ctrl('w'));
        assert_eq!(e.text(), "");
    }

    #[test]
    fn ctrl_w_at_line_start_joins_previous_line() {
        let mut e = InputEditor::new();
        e.set_text("ab\ncd");
        e.handle_key(key(KeyCode::Home));
        e.handle_key(ctrl('w'));
        assert_eq!(e.text(), "abcd");
    }

    #[test]
    fn ctrl_u_and_ctrl_k_delete_to_line_start_and_end() {
        let mut e = InputEditor::new();
        e.set_text("keep\nabcdef\nkeep");
        e.handle_key(key(KeyCode::Up));
        e.handle_key(key(KeyCode::Home));
        e.handle_key(key(KeyCode::Right));
        e.handle_key(key(KeyCode::Right));
        e.handle_key(ctrl('u'));
        assert_eq!(e.text(), "keep\ncdef\nkeep");
        assert_eq!(e.cursor(), (1, 0));
        e.handle_key(key(KeyCode::Right));
        e.handle_key(ctrl('k'));
        assert_eq!(e.text(), "keep\nc\nkeep");
        e.handle_key(ctrl('k'));
        assert_eq!(
            e.text(),
            "keep\nckeep",
            "ctrl+k at line end joins the next line"
        );
    }

    #[test]
    fn editing_multibyte_text_never_splits_chars() {
        let mut e = typed("héllo 世界🙂");
        e.handle_key(key(KeyCode::Backspace));
        assert_eq!(e.text(), "héllo 世界");
        e.handle_key(key(KeyCode::Left));
        e.handle_key(key(KeyCode::Backspace));
        assert_eq!(e.text(), "héllo 界");
        e.handle_key(ctrl('a'));
        e.handle_key(key(KeyCode::Right));
        e.handle_key(key(KeyCode::Delete));
        assert_eq!(e.text(), "hllo 界");
    }

    #[test]
    fn insert_str_normalises_line_endings_tabs_and_controls() {
        let mut e = typed("<>");
        e.handle_key(key(KeyCode::Left));
        e.insert_str("a\r\nb\rc\n\td\x1b[31m");
        assert_eq!(e.text(), "<a\nb\nc\n    d[31m>");
        assert_eq!(e.cursor(), (3, 9));
    }

    #[test]
    fn set_text_puts_cursor_at_end() {
        let mut e = InputEditor::new();
        e.set_text("one\ntwo!");
        assert_eq!(e.cursor(), (1, 4));
        assert_eq!(e.line_count(), 2);
    }

    #[test]
    fn unhandled_keys_are_reported_as_ignored() {
        let mut e = typed("x");
        assert_eq!(e.handle_key(key(KeyCode::Esc)), InputAction::Ignored);
        assert_eq!(e.handle_key(key(KeyCode::Tab)), InputAction::Ignored);
        assert_eq!(e.handle_key(ctrl('c')), InputAction::Ignored);
        assert_eq!(e.text(), "x");
    }

    #[test]
    fn key_release_events_do_nothing() {
        let mut e = InputEditor::new();
        let mut k = key(KeyCode::Char('a'));
        k.kind = KeyEventKind::Release;
        assert_eq!(e.handle_key(k), InputAction::None);
        assert!(e.is_empty());
    }

    #[test]
    fn ctrl_arrows_move_by_word() {
        let mut e = typed("one two three");
        e.handle_key(KeyEvent::new(KeyCode::Left, KeyModifiers::CONTROL));
        assert_eq!(e.cursor(), (0, 8));
        e.handle_key(KeyEvent::new(KeyCode::Left, KeyModifiers::CONTROL));
        assert_eq!(e.cursor(), (0, 4));
        e.handle_key(KeyEvent::new(KeyCode::Right, KeyModifiers::CONTROL));
        assert_eq!(e.cursor(), (0, 7));
    }

    #[test]
    fn render_wraps_at_word_boundaries() {
        let mut e = InputEditor::new();
        e.set_text("hello world again");
        let (lines, cur) = e.render_lines(12);
        assert_eq!(lines, vec!["hello world ", "again"]);
        assert_eq!(cur, (5, 1));
    }

    #[test]
    fn render_hard_breaks_words_longer_than_width() {
        let mut e = InputEditor::new();
        e.set_text("abcdefghij");
        let (lines, cur) = e.render_lines(4);
        assert_eq!(lines, vec!["abcd", "efgh", "ij"]);
        assert_eq!(cur, (2, 2));
    }

    #[test]
    fn render_keeps_logical_lines_and_empty_lines() {
        let mut e = InputEditor::new();
        e.set_text("a\n\nb");
        e.handle_key(key(KeyCode::Up));
        let (lines, cur) = e.render_lines(10);
        assert_eq!(lines, vec!["a", "", "b"]);
        assert_eq!(cur, (0, 1));
    }

    #[test]
    fn render_never_splits_or_overflows_wide_chars() {
        let mut e = InputEditor::new();
        e.set_text("ab世界🙂x");
        let (lines, cur) = e.render_lines(5);
        // The second row is exactly full, so the cursor at the end opens a third row.
        assert_eq!(lines, vec!["ab世", "界🙂x", ""]);
        for l in &lines {
            assert!(unicode_width::UnicodeWidthStr::width(l.as_str()) <= 5);
        }
        assert_eq!(cur, (0, 2));
        let mut e = InputEditor::new();
        e.set_text("ab世界🙂");
        assert_eq!(
            e.render_lines(5),
            (vec!["ab世".to_string(), "界🙂".to_string()], (4, 1))
        );
        e.set_text("ab世界🙂x");
        // Cursor before the emoji: column counts display width.
        e.handle_key(key(KeyCode::Left));
        e.handle_key(key(KeyCode::Left));
        assert_eq!(e.render_lines(5).1, (2, 1));
    }

    #[test]
    fn render_moves_cursor_after_full_line_to_next_row() {
        let mut e = InputEditor::new();
        e.set_text("abcd");
        let (lines, cur) = e.render_lines(4);
        assert_eq!(lines, vec!["abcd", ""]);
        assert_eq!(cur, (0, 1));
        e.handle_key(key(KeyCode::Left));
        let (lines, cur) = e.render_lines(4);
        assert_eq!(lines, vec!["abcd"]);
        assert_eq!(cur, (3, 0));
    }

    #[test]
    fn render_survives_tiny_widths() {
        let mut e = InputEditor::new();
        e.set_text("世界 ab");
        for w in 0..4 {
            let (lines, (_, y)) = e.render_lines(w);
            assert_eq!(lines.concat(), "世界 ab");
            assert!(usize::from(y) < lines.len());
        }
    }

    #[test]
    fn render_cursor_in_middle_segment() {
        let mut e = InputEditor::new();
        e.set_text("aaaa bbbb cccc");
        for _ in 0..6 {
            e.handle_key(key(KeyCode::Left));
        }
        let (lines, cur) = e.render_lines(6);
        assert_eq!(lines, vec!["aaaa ", "bbbb ", "cccc"]);
        assert_eq!(cur, (3, 1));
    }
}
