//! Markdown → styled terminal lines, for assistant messages that may still be streaming.
//!
//! [`render`] walks pulldown-cmark events (CommonMark + tables, strikethrough, task lists)
//! and lays each block out for a fixed width; [`plain_lines`] only wraps (user messages,
//! reasoning).
//!
//! Invariants:
//! - Every returned line is at most `width` display columns wide (measured with
//!   `unicode-width`, as ratatui does), for any `width >= 2`. At width 1 a double-width
//!   character still occupies its own line. Nesting prefixes (quote gutters, list indents)
//!   are clipped before they can push content past the edge.
//! - Prose wraps at spaces; a word longer than the line is broken at character clusters;
//!   each double-width (CJK) character is its own break opportunity.
//! - Code block lines are never wrapped: they are cut with `…` at the width and padded
//!   with the code background to the full width.
//! - Control characters (ESC included) never reach the output: tabs become spaces, the
//!   rest are dropped, so model output cannot send escape sequences to the terminal.
//! - Any prefix of a document renders without panicking: the parser closes open blocks at
//!   the end of input, so an unclosed ``` fence renders as a code block so far, and a half
//!   table renders as a paragraph until its delimiter row is complete.
//! - Work is linear in the input. Syntect (~50 µs a line) is the only costly part, so
//!   highlighted code blocks are cached with syntect's state at their last complete line:
//!   re-rendering a streaming answer highlights only new code lines. The syntect assets
//!   load once, lazily, into `OnceLock`s ([`warm_up`] preloads them).

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock};

use pulldown_cmark::{Alignment, CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use syntect::highlighting::{FontStyle, HighlightIterator, HighlightState, Highlighter};
use syntect::parsing::{ParseState, ScopeStack, SyntaxSet};
use syntect::util::LinesWithEndings;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::theme::{syntect_themes, Theme};

/// Code blocks larger than this are shown without highlighting (syntect is the slow part).
const MAX_HIGHLIGHT_BYTES: usize = 256 * 1024;
/// Spaces a tab expands to.
const TAB: &str = "    ";
/// Bullet for each nesting depth of unordered lists, cycling.
const BULLETS: [&str; 3] = ["•", "◦", "▪"];

static SYNTAXES: OnceLock<SyntaxSet> = OnceLock::new();

fn syntaxes() -> &'static SyntaxSet {
    SYNTAXES.get_or_init(SyntaxSet::load_defaults_newlines)
}

/// Loads the syntect syntax and theme sets now (tens of ms), e.g. on a background thread
/// at start-up, so the first code block does not pay for it.
pub fn warm_up() {
    syntaxes();
    syntect_themes();
}

/// Renders markdown `text` as lines at most `width` columns wide.
pub fn render(text: &str, width: u16, theme: &Theme) -> Vec<Line<'static>> {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TASKLISTS);
    let mut renderer = Renderer::new(theme, usize::from(width.max(1)));
    for event in Parser::new_ext(text, options) {
        renderer.event(event);
    }
    renderer.finish()
}

/// Wraps `text` to `width` columns in one style: no markdown. Hard line breaks are kept,
/// and so is the indentation at the start of each of them.
pub fn plain_lines(text: &str, width: u16, style: Style) -> Vec<Line<'static>> {
    if text.is_empty() {
        return Vec::new();
    }
    let runs = [Run {
        text: clean(text).into_owned(),
        style,
    }];
    wrap_runs(&runs, usize::from(width.max(1)))
        .into_iter()
        .map(Line::from)
        .collect()
}

/// Text in one style, before layout.
#[derive(Clone, Debug)]
struct Run {
    text: String,
    style: Style,
}

/// Appends text to a run list, merging with the last run when the style is the same.
fn push_run(runs: &mut Vec<Run>, text: &str, style: Style) {
    if text.is_empty() {
        return;
    }
    match runs.last_mut() {
        Some(last) if last.style == style => last.text.push_str(text),
        _ => runs.push(Run {
            text: text.to_string(),
            style,
        }),
    }
}

/// Appends text to a span list, merging with the last span when the style is the same.
fn push_span(spans: &mut Vec<Span<'static>>, text: &str, style: Style) {
    if text.is_empty() {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.style == style => last.content.to_mut().push_str(text),
        _ => spans.push(Span::styled(text.to_string(), style)),
    }
}

/// Expands tabs and drops control characters other than `\n`.
fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str(TAB),
            '\n' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Splits `s` into display clusters (a character and the zero-width ones that follow it:
/// combining marks, ZWJ, variation selectors), each with its display width.
fn clusters(s: &str) -> impl Iterator<Item = (&str, usize)> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let mut chars = rest.char_indices();
        chars.next()?;
        let end = chars
            .find(|&(_, c)| c.width() != Some(0))
            .map_or(rest.len(), |(i, _)| i);
        let (cluster, tail) = rest.split_at(end);
        rest = tail;
        Some((cluster, cluster.width()))
    })
}

fn is_space(c: char) -> bool {
    // No-break spaces stay inside their word.
    c.is_whitespace() && !matches!(c, '\u{a0}' | '\u{2007}' | '\u{202f}')
}

fn spans_width(spans: &[Span<'_>]) -> usize {
    spans.iter().map(|s| s.content.width()).sum()
}

/// Cuts `spans` to at most `max` columns; with `ellipsis`, a cut line ends in `…`.
fn truncate_spans(spans: Vec<Span<'static>>, max: usize, ellipsis: bool) -> Vec<Span<'static>> {
    if spans_width(&spans) <= max {
        return spans;
    }
    let budget = if ellipsis { max.saturating_sub(1) } else { max };
    let mut out = Vec::new();
    let mut used = 0;
    let mut last_style = Style::new();
    'outer: for span in &spans {
        last_style = span.style;
        for (cluster, w) in clusters(&span.content) {
            if used + w > budget {
                break 'outer;
            }
            used += w;
            push_span(&mut out, cluster, span.style);
        }
    }
    if ellipsis && max > 0 {
        push_span(&mut out, "…", last_style);
    }
    out
}

/// Word-wraps styled runs to `avail` columns. `\n` in a run is a hard break.
struct Wrapper<'r> {
    runs: &'r [Run],
    avail: usize,
    lines: Vec<Vec<Span<'static>>>,
    cur: Vec<Span<'static>>,
    cur_w: usize,
    /// The current line began after a wrap (not after a hard break or at the start), so
    /// leading spaces are dropped rather than kept as indentation.
    soft: bool,
    /// Pending whitespace and the word after it, as (run, start, end) byte ranges.
    space: Vec<(usize, usize, usize)>,
    space_w: usize,
    word: Vec<(usize, usize, usize)>,
    word_w: usize,
}

fn extend_range(ranges: &mut Vec<(usize, usize, usize)>, run: usize, start: usize, end: usize) {
    match ranges.last_mut() {
        Some(last) if last.0 == run && last.2 == start => last.2 = end,
        _ => ranges.push((run, start, end)),
    }
}

impl<'r> Wrapper<'r> {
    fn text(&self, (run, start, end): (usize, usize, usize)) -> (&'r str, Style) {
        let run = &self.runs[run];
        (run.text.get(start..end).unwrap_or(""), run.style)
    }

    fn emit(&mut self, ranges: &[(usize, usize, usize)], width: usize) {
        for &range in ranges {
            let (text, style) = self.text(range);
            push_span(&mut self.cur, text, style);
        }
        self.cur_w += width;
    }

    fn new_line(&mut self, soft: bool) {
        self.lines.push(std::mem::take(&mut self.cur));
        self.cur_w = 0;
        self.soft = soft;
    }

    /// Places the pending space + word on the current line or the next.
    fn place(&mut self) {
        let space = std::mem::take(&mut self.space);
        let word = std::mem::take(&mut self.word);
        let space_w = std::mem::replace(&mut self.space_w, 0);
        let word_w = std::mem::replace(&mut self.word_w, 0);
        if word.is_empty() {
            return;
        }
        let keep_space = self.cur_w > 0 || !self.soft;
        let space_w = if keep_space { space_w } else { 0 };
        if self.cur_w + space_w + word_w <= self.avail {
            if space_w > 0 {
                self.emit(&space, space_w);
            }
            self.emit(&word, word_w);
            return;
        }
        if self.cur_w > 0 {
            self.new_line(true);
        }
        if word_w <= self.avail {
            self.emit(&word, word_w);
            return;
        }
        // A word longer than the line: break it between clusters.
        for &range in &word {
            let (text, style) = self.text(range);
            for (cluster, w) in clusters(text) {
                if self.cur_w + w > self.avail && self.cur_w > 0 {
                    self.new_line(true);
                }
                push_span(&mut self.cur, cluster, style);
                self.cur_w += w;
            }
        }
    }

    fn run(mut self) -> Vec<Vec<Span<'static>>> {
        for (index, run) in self.runs.iter().enumerate() {
            let mut offset = 0;
            for (cluster, w) in clusters(&run.text) {
                let (start, end) = (offset, offset + cluster.len());
                offset = end;
                let first = cluster.chars().next().unwrap_or(' ');
                if first == '\n' {
                    self.place();
                    self.space.clear();
                    self.space_w = 0;
                    self.new_line(false);
                } else if is_space(first) {
                    if !self.word.is_empty() {
                        self.place();
                    }
                    extend_range(&mut self.space, index, start, end);
                    self.space_w += w;
                } else if w >= 2 {
                    // Wide (CJK) characters may break anywhere: each is a word of its own.
                    self.place();
                    extend_range(&mut self.word, index, start, end);
                    self.word_w = w;
                    self.place();
                } else {
                    extend_range(&mut self.word, index, start, end);
                    self.word_w += w;
                }
            }
        }
        self.place();
        if !self.cur.is_empty() || self.lines.is_empty() {
            self.lines.push(std::mem::take(&mut self.cur));
        }
        self.lines
    }
}

fn wrap_runs(runs: &[Run], avail: usize) -> Vec<Vec<Span<'static>>> {
    Wrapper {
        runs,
        avail: avail.max(1),
        lines: Vec::new(),
        cur: Vec::new(),
        cur_w: 0,
        soft: false,
        space: Vec::new(),
        space_w: 0,
        word: Vec::new(),
        word_w: 0,
    }
    .run()
}

/// A block that prefixes each of its lines.
enum Container {
    Quote,
    Item {
        marker: String,
        width: usize,
        marker_pending: bool,
    },
}

/// A table being collected; laid out at its end.
struct TableBuf {
    aligns: Vec<Alignment>,
    /// Rows of cells of runs; row 0 is the header.
    rows: Vec<Vec<Vec<Run>>>,
    cell: Option<Vec<Run>>,
}

struct CodeBuf {
    lang: String,
    text: String,
}

struct Renderer<'t> {
    theme: &'t Theme,
    width: usize,
    /// `theme.assistant_text`: every other style is patched over it.
    base: Style,
    lines: Vec<Line<'static>>,
    containers: Vec<Container>,
    styles: Vec<Style>,
    inline: Vec<Run>,
    /// A blank line is owed before the next line (between blocks).
    pending_blank: bool,
    /// Next number of each open list (`None` for bullets).
    lists: Vec<Option<u64>>,
    code: Option<CodeBuf>,
    table: Option<TableBuf>,
    /// Open links and images: destination, the text seen so far, whether an image.
    links: Vec<(String, String, bool)>,
}

impl<'t> Renderer<'t> {
    fn new(theme: &'t Theme, width: usize) -> Self {
        Renderer {
            theme,
            width,
            base: theme.assistant_text,
            lines: Vec::new(),
            containers: Vec::new(),
            styles: Vec::new(),
            inline: Vec::new(),
            pending_blank: false,
            lists: Vec::new(),
            code: None,
            table: None,
            links: Vec::new(),
        }
    }

    fn style(&self) -> Style {
        self.styles.last().copied().unwrap_or(self.base)
    }

    fn push_style(&mut self, patch: Style) {
        let style = self.style().patch(patch);
        self.styles.push(style);
    }

    fn pop_style(&mut self) {
        self.styles.pop();
    }

    /// Inline text goes to the open table cell if any, else to the paragraph buffer.
    fn text(&mut self, text: &str, style: Style) {
        let text = clean(text);
        for (_, link_text, _) in &mut self.links {
            link_text.push_str(&text);
        }
        let target = match &mut self.table {
            Some(TableBuf {
                cell: Some(cell), ..
            }) => cell,
            _ => &mut self.inline,
        };
        push_run(target, &text, style);
    }

    /// Width of the container prefix, clipped so that two columns (one wide character)
    /// are always left for content.
    fn prefix_width(&self) -> usize {
        let w: usize = self
            .containers
            .iter()
            .map(|c| match c {
                Container::Quote => 2,
                Container::Item { width, .. } => *width,
            })
            .sum();
        w.min(self.width.saturating_sub(2))
    }

    /// Columns left for content after the prefix.
    fn avail(&self) -> usize {
        (self.width - self.prefix_width()).max(1)
    }

    /// The prefix for the next line; a pending list marker is used up unless `blank`.
    fn prefix(&mut self, blank: bool) -> Vec<Span<'static>> {
        let quote = self
            .base
            .patch(self.theme.quote)
            .remove_modifier(Modifier::ITALIC);
        let accent = self.base.patch(self.theme.accent);
        let mut spans = Vec::new();
        for container in &mut self.containers {
            match container {
                Container::Quote => push_span(&mut spans, "│ ", quote),
                Container::Item {
                    marker,
                    width,
                    marker_pending,
                } => {
                    if *marker_pending && !blank {
                        *marker_pending = false;
                        push_span(&mut spans, marker, accent);
                    } else {
                        push_span(&mut spans, &" ".repeat(*width), Style::new());
                    }
                }
            }
        }
        let max = self.prefix_width();
        let mut spans = truncate_spans(spans, max, false);
        if blank {
            // No trailing spaces on blank lines.
            while let Some(last) = spans.last_mut() {
                let trimmed = last.content.trim_end().len();
                if trimmed == 0 {
                    spans.pop();
                } else {
                    last.content.to_mut().truncate(trimmed);
                    break;
                }
            }
        }
        spans
    }

    fn emit_pending_blank(&mut self) {
        if self.pending_blank && !self.lines.is_empty() {
            let prefix = self.prefix(true);
            self.lines.push(Line::from(prefix));
        }
        self.pending_blank = false;
    }

    fn push_line(&mut self, content: Vec<Span<'static>>) {
        self.emit_pending_blank();
        let mut spans = self.prefix(false);
        spans.extend(content);
        self.lines.push(Line::from(spans));
    }

    fn flush_inline(&mut self) {
        if self.inline.is_empty() {
            return;
        }
        let runs = std::mem::take(&mut self.inline);
        for line in wrap_runs(&runs, self.avail()) {
            self.push_line(line);
        }
    }

    fn event(&mut self, event: Event<'_>) {
        if let Some(code) = &mut self.code {
            match event {
                Event::Text(text) => code.text.push_str(&text),
                Event::End(TagEnd::CodeBlock) => {
                    self.render_code();
                    self.pending_blank = true;
                }
                _ => {}
            }
            return;
        }
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => self.text(&text, self.style()),
            Event::Code(code) => {
                let style = self.style().patch(self.theme.inline_code);
                if self.theme.inline_code.fg.is_none() && self.theme.inline_code.bg.is_none() {
                    // Without colour, the backticks are the only sign of code.
                    self.text(&format!("`{code}`"), style);
                } else {
                    self.text(&code, style);
                }
            }
            Event::InlineMath(math) | Event::DisplayMath(math) => {
                let style = self.style().patch(self.theme.inline_code);
                self.text(&math, style);
            }
            Event::Html(html) | Event::InlineHtml(html) => self.text(&html, self.style()),
            Event::FootnoteReference(label) => self.text(&format!("[^{label}]"), self.style()),
            Event::SoftBreak => self.text(" ", self.style()),
            Event::HardBreak => self.text("\n", self.style()),
            Event::Rule => {
                self.flush_inline();
                let style = self.base.patch(self.theme.table_border);
                let rule = "─".repeat(self.avail());
                self.push_line(vec![Span::styled(rule, style)]);
                self.pending_blank = true;
            }
            Event::TaskListMarker(checked) => {
                let style = self.base.patch(self.theme.accent);
                self.text(if checked { "[x] " } else { "[ ] " }, style);
            }
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph | Tag::HtmlBlock => self.flush_inline(),
            Tag::Heading { level, .. } => {
                self.flush_inline();
                let mut style = self.theme.heading;
                if level == HeadingLevel::H1 {
                    style = style.add_modifier(Modifier::UNDERLINED);
                }
                self.push_style(style);
                let hashes = "#".repeat(level as usize);
                self.text(&format!("{hashes} "), self.style());
            }
            Tag::BlockQuote(_) => {
                self.flush_inline();
                self.emit_pending_blank();
                self.containers.push(Container::Quote);
                self.push_style(self.theme.quote);
            }
            Tag::CodeBlock(kind) => {
                self.flush_inline();
                let lang = match kind {
                    CodeBlockKind::Fenced(info) => info
                        .split(|c: char| c == ',' || c == '{' || c.is_whitespace())
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                self.code = Some(CodeBuf {
                    lang,
                    text: String::new(),
                });
            }
            Tag::List(start) => {
                self.flush_inline();
                self.lists.push(start);
            }
            Tag::Item => {
                self.flush_inline();
                self.emit_pending_blank();
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let marker = format!("{n}. ");
                        *n = n.saturating_add(1);
                        marker
                    }
                    _ => {
                        let depth = self.lists.len().saturating_sub(1);
                        format!("{} ", BULLETS[depth % BULLETS.len()])
                    }
                };
                let width = marker.width();
                self.containers.push(Container::Item {
                    marker,
                    width,
                    marker_pending: true,
                });
            }
            Tag::Table(aligns) => {
                self.flush_inline();
                self.table = Some(TableBuf {
                    aligns,
                    rows: Vec::new(),
                    cell: None,
                });
            }
            Tag::TableHead => {
                self.push_style(self.theme.table_header);
                if let Some(table) = &mut self.table {
                    table.rows.push(Vec::new());
                }
            }
            Tag::TableRow => {
                if let Some(table) = &mut self.table {
                    table.rows.push(Vec::new());
                }
            }
            Tag::TableCell => {
                if let Some(table) = &mut self.table {
                    table.cell = Some(Vec::new());
                }
            }
            Tag::Emphasis => self.push_style(self.theme.emphasis),
            Tag::Strong => self.push_style(self.theme.strong),
            Tag::Strikethrough => self.push_style(Style::new().add_modifier(Modifier::CROSSED_OUT)),
            Tag::Link { dest_url, .. } => {
                self.push_style(self.theme.link);
                self.links
                    .push((dest_url.to_string(), String::new(), false));
            }
            Tag::Image { dest_url, .. } => {
                self.push_style(self.theme.link);
                self.text("[image: ", self.style());
                self.links.push((dest_url.to_string(), String::new(), true));
            }
            Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::MetadataBlock(_) => self.flush_inline(),
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph | TagEnd::HtmlBlock => {
                self.flush_inline();
                self.pending_blank = true;
            }
            TagEnd::Heading(_) => {
                self.flush_inline();
                self.pop_style();
                self.pending_blank = true;
            }
            TagEnd::BlockQuote(_) => {
                self.flush_inline();
                self.containers.pop();
                self.pop_style();
                self.pending_blank = true;
            }
            TagEnd::CodeBlock => {} // handled in `event` while `code` is open
            TagEnd::List(_) => {
                self.flush_inline();
                self.lists.pop();
                let in_item = self
                    .containers
                    .iter()
                    .any(|c| matches!(c, Container::Item { .. }));
                if !in_item {
                    self.pending_blank = true;
                }
            }
            TagEnd::Item => {
                self.flush_inline();
                if let Some(Container::Item {
                    marker_pending: true,
                    ..
                }) = self.containers.last()
                {
                    // An empty item (often one still streaming in) still shows its marker.
                    self.push_line(Vec::new());
                }
                self.containers.pop();
            }
            TagEnd::Table => {
                self.render_table();
                self.pending_blank = true;
            }
            TagEnd::TableHead => self.pop_style(),
            TagEnd::TableRow => {}
            TagEnd::TableCell => {
                if let Some(table) = &mut self.table {
                    let cell = table.cell.take().unwrap_or_default();
                    if let Some(row) = table.rows.last_mut() {
                        row.push(cell);
                    }
                }
            }
            TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough => self.pop_style(),
            TagEnd::Link | TagEnd::Image => {
                self.pop_style();
                if let Some((url, text, image)) = self.links.pop() {
                    if image {
                        self.text("]", self.style().patch(self.theme.link));
                    }
                    if !url.is_empty() && url != text && url.strip_prefix("mailto:") != Some(&text)
                    {
                        let style = self.style().patch(self.theme.link_url);
                        self.text(&format!(" ({url})"), style);
                    }
                }
            }
            TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::MetadataBlock(_) => self.flush_inline(),
        }
    }

    fn finish(mut self) -> Vec<Line<'static>> {
        // The parser closes every block at the end of input; these only guard against a
        // parser that does not.
        if self.code.is_some() {
            self.render_code();
        }
        if self.table.is_some() {
            self.render_table();
        }
        self.flush_inline();
        self.lines
    }

    fn render_code(&mut self) {
        let Some(code) = self.code.take() else { return };
        let avail = self.avail();
        let pad_left = usize::from(avail >= 8);
        let inner = avail - pad_left;
        let block = self.base.patch(self.theme.code_block);
        let highlighted = if code.lang.is_empty() || self.theme.syntect_theme.is_empty() {
            None
        } else {
            highlight(&self.theme.syntect_theme, &code.lang, &code.text)
        };
        let lines: Vec<Vec<(Style, String)>> = match highlighted {
            Some(lines) => lines
                .into_iter()
                .map(|tokens| {
                    tokens
                        .into_iter()
                        .map(|(s, t)| (syntect_style(block, s), t))
                        .collect()
                })
                .collect(),
            None => code
                .text
                .lines()
                .map(|line| vec![(block, line.to_string())])
                .collect(),
        };
        if lines.is_empty() {
            self.push_line(vec![Span::styled(" ".repeat(avail), block)]);
        }
        for tokens in lines {
            let mut spans = Vec::new();
            if pad_left > 0 {
                push_span(&mut spans, " ", block);
            }
            let mut content = Vec::new();
            for (style, piece) in &tokens {
                push_span(&mut content, &clean(piece).replace('\n', ""), *style);
            }
            let content = truncate_spans(content, inner, true);
            let used = spans_width(&content);
            spans.extend(content);
            push_span(&mut spans, &" ".repeat(inner.saturating_sub(used)), block);
            self.push_line(spans);
        }
    }

    fn render_table(&mut self) {
        let Some(mut table) = self.table.take() else {
            return;
        };
        if let Some(cell) = table.cell.take() {
            if let Some(row) = table.rows.last_mut() {
                row.push(cell);
            }
        }
        let ncols = table
            .rows
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(table.aligns.len());
        if ncols == 0 {
            return;
        }
        let avail = self.avail();
        let overhead = 3 * ncols + 1;
        let border = self.base.patch(self.theme.table_border);
        if avail < overhead + ncols {
            // Too narrow for boxes: one paragraph per row, cells separated by `│`.
            for row in &table.rows {
                let mut runs = Vec::new();
                for (i, cell) in row.iter().enumerate() {
                    if i > 0 {
                        push_run(&mut runs, " │ ", border);
                    }
                    for run in cell {
                        push_run(&mut runs, &run.text, run.style);
                    }
                }
                for line in wrap_runs(&runs, avail) {
                    self.push_line(line);
                }
            }
            return;
        }
        let natural: Vec<usize> = (0..ncols)
            .map(|c| {
                table
                    .rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.iter().map(|r| r.text.width()).sum::<usize>())
                    .max()
                    .unwrap_or(0)
                    .max(1)
            })
            .collect();
        let widths = fit_widths(&natural, avail - overhead);

        let rule = |left: &str, mid: &str, right: &str| {
            let mut s = String::from(left);
            for (i, w) in widths.iter().enumerate() {
                if i > 0 {
                    s.push_str(mid);
                }
                s.push_str(&"─".repeat(w + 2));
            }
            s.push_str(right);
            vec![Span::styled(s, border)]
        };
        self.push_line(rule("┌", "┬", "┐"));
        let nrows = table.rows.len();
        for (r, row) in table.rows.iter().enumerate() {
            let cells: Vec<Vec<Vec<Span<'static>>>> = (0..ncols)
                .map(|c| match row.get(c) {
                    Some(cell) if !cell.is_empty() => wrap_runs(cell, widths[c]),
                    _ => vec![Vec::new()],
                })
                .collect();
            let height = cells.iter().map(Vec::len).max().unwrap_or(1);
            for l in 0..height {
                let mut spans = Vec::new();
                push_span(&mut spans, "│", border);
                for (c, cell) in cells.iter().enumerate() {
                    let content = cell.get(l).cloned().unwrap_or_default();
                    let content = truncate_spans(content, widths[c], true);
                    let free = widths[c].saturating_sub(spans_width(&content));
                    let (before, after) = match table.aligns.get(c) {
                        Some(Alignment::Right) => (free, 0),
                        Some(Alignment::Center) => (free / 2, free - free / 2),
                        _ => (0, free),
                    };
                    push_span(&mut spans, &" ".repeat(before + 1), self.base);
                    spans.extend(content);
                    push_span(&mut spans, &" ".repeat(after + 1), self.base);
                    push_span(&mut spans, "│", border);
                }
                self.push_line(spans);
            }
            if r == 0 && nrows > 1 {
                self.push_line(rule("├", "┼", "┤"));
            }
        }
        self.push_line(rule("└", "┴", "┘"));
    }
}

/// One highlighted line: syntect styles and text (with its `\n`, if it had one).
type Tokens = Vec<(syntect::highlighting::Style, String)>;

/// A code block highlighted up to the end of its last complete line, with syntect's state
/// there, so a block that grows while streaming resumes instead of starting over.
struct Highlighted {
    syntect_theme: String,
    lang: String,
    /// The complete lines (each ending in `\n`) that `lines` covers.
    text: String,
    lines: Vec<Tokens>,
    parse: ParseState,
    highlight: HighlightState,
}

/// Recently highlighted blocks, least recently used first.
static HIGHLIGHTED: Mutex<Vec<Highlighted>> = Mutex::new(Vec::new());
/// Blocks kept in [`HIGHLIGHTED`].
const MAX_HIGHLIGHTED: usize = 256;

/// Highlights `text` as `lang`; `None` when the language or theme is unknown, the block is
/// too large, or syntect fails (the caller then shows it plain).
///
/// Re-rendering the same document (every frame while streaming) costs a prefix compare
/// per finished block and syntect work only for the lines that are new.
fn highlight(syntect_theme: &str, lang: &str, text: &str) -> Option<Vec<Tokens>> {
    if text.len() > MAX_HIGHLIGHT_BYTES {
        return None;
    }
    let syntax = syntaxes().find_syntax_by_token(lang)?;
    let theme = syntect_themes().themes.get(syntect_theme)?;
    let highlighter = Highlighter::new(theme);
    let complete_len = text.rfind('\n').map_or(0, |i| i + 1);
    let (complete, partial) = text.split_at(complete_len);

    // A poisoned lock only means another render panicked mid-update; entries are replaced
    // whole, so the cache is still consistent.
    let mut cache = HIGHLIGHTED.lock().unwrap_or_else(|e| e.into_inner());
    let best = cache
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.syntect_theme == syntect_theme && e.lang == lang && complete.starts_with(&e.text)
        })
        .max_by_key(|(_, e)| e.text.len())
        .map(|(i, _)| i);
    let mut entry = match best {
        Some(i) => cache.remove(i),
        None => Highlighted {
            syntect_theme: syntect_theme.to_string(),
            lang: lang.to_string(),
            text: String::new(),
            lines: Vec::new(),
            parse: ParseState::new(syntax),
            highlight: HighlightState::new(&highlighter, ScopeStack::new()),
        },
    };
    let new_text = complete.get(entry.text.len()..).unwrap_or("");
    for line in LinesWithEndings::from(new_text) {
        let tokens = highlight_line(&highlighter, &mut entry.parse, &mut entry.highlight, line)?;
        entry.lines.push(tokens);
        entry.text.push_str(line);
    }
    let mut out = entry.lines.clone();
    if !partial.is_empty() {
        // The unfinished last line is highlighted from copies: its state is not kept.
        let (mut parse, mut state) = (entry.parse.clone(), entry.highlight.clone());
        out.push(highlight_line(
            &highlighter,
            &mut parse,
            &mut state,
            partial,
        )?);
    }
    cache.push(entry);
    if cache.len() > MAX_HIGHLIGHTED {
        cache.remove(0);
    }
    Some(out)
}

fn highlight_line(
    highlighter: &Highlighter<'_>,
    parse: &mut ParseState,
    state: &mut HighlightState,
    line: &str,
) -> Option<Tokens> {
    let ops = parse.parse_line(line, syntaxes()).ok()?;
    Some(
        HighlightIterator::new(state, &ops, line, highlighter)
            .map(|(style, text)| (style, text.to_string()))
            .collect(),
    )
}

/// Column widths summing to at most `budget` (which is at least `natural.len()`): columns
/// that fit their natural width keep it; the rest share what is left evenly.
fn fit_widths(natural: &[usize], budget: usize) -> Vec<usize> {
    if natural.iter().sum::<usize>() <= budget {
        return natural.to_vec();
    }
    let mut order: Vec<usize> = (0..natural.len()).collect();
    order.sort_by_key(|&i| natural[i]);
    let mut widths = vec![1; natural.len()];
    let mut remaining = budget;
    for (k, &i) in order.iter().enumerate() {
        let share = remaining / (natural.len() - k);
        let w = natural[i].min(share).max(1);
        widths[i] = w;
        remaining = remaining.saturating_sub(w);
    }
    widths
}

/// A syntect token's colour and font style over the code block's style (whose background
/// wins, so blocks match the theme).
fn syntect_style(block: Style, style: syntect::highlighting::Style) -> Style {
    let fg = style.foreground;
    let mut out = block.fg(Color::Rgb(fg.r, fg.g, fg.b));
    if style.font_style.contains(FontStyle::BOLD) {
        out = out.add_modifier(Modifier::BOLD);
    }
    if style.font_style.contains(FontStyle::ITALIC) {
        out = out.add_modifier(Modifier::ITALIC);
    }
    if style.font_style.contains(FontStyle::UNDERLINE) {
        out = out.add_modifier(Modifier::UNDERLINED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of each line, spans concatenated.
    fn texts(lines: &[Line<'_>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    /// A snapshot view: each line followed by `|` so trailing spaces show.
    fn snapshot(lines: &[Line<'_>]) -> String {
        texts(lines).iter().map(|t| format!("{t}|\n")).collect()
    }

    fn render_text(md: &str, width: u16) -> Vec<String> {
        texts(&render(md, width, &Theme::dark()))
    }

    fn assert_fits(lines: &[Line<'_>], width: u16, input: &str) {
        for line in lines {
            assert!(
                line.width() <= usize::from(width),
                "line {:?} is wider than {width} for input {input:?}",
                line.spans
                    .iter()
                    .map(|s| s.content.as_ref())
                    .collect::<String>()
            );
        }
    }

    #[test]
    fn plain_lines_wrap_at_word_boundaries() {
        let lines = texts(&plain_lines(
            "the quick brown fox jumps over",
            10,
            Style::new(),
        ));
        assert_eq!(lines, ["the quick", "brown fox", "jumps over"]);
    }

    #[test]
    fn long_words_are_broken_at_the_width() {
        let lines = texts(&plain_lines(
            "a supercalifragilistic word",
            10,
            Style::new(),
        ));
        assert_eq!(lines, ["a", "supercalif", "ragilistic", "word"]);
    }

    #[test]
    fn cjk_wraps_by_display_width() {
        let text = "日本語のテキストを折り返す";
        let lines = plain_lines(text, 10, Style::new());
        assert_fits(&lines, 10, text);
        assert_eq!(texts(&lines), ["日本語のテ", "キストを折", "り返す"]);
        // Emoji with a variation selector is two columns wide; it must not overflow.
        let lines = plain_lines("ab ❤️❤️❤️❤️❤️ x", 4, Style::new());
        assert_fits(&lines, 4, "emoji");
    }

    #[test]
    fn plain_lines_keep_hard_breaks_and_indentation() {
        let lines = texts(&plain_lines(
            "fn main() {\n    body();\n}\n\nend",
            40,
            Style::new(),
        ));
        assert_eq!(lines, ["fn main() {", "    body();", "}", "", "end"]);
        assert!(plain_lines("", 10, Style::new()).is_empty());
    }

    #[test]
    fn control_characters_are_dropped() {
        let lines = render_text("red \u{1b}[31mtext\u{7} here", 40);
        assert_eq!(lines, ["red [31mtext here"]);
        let lines = texts(&plain_lines("a\tb\r", 20, Style::new()));
        assert_eq!(lines, ["a    b"]);
    }

    #[test]
    fn paragraphs_are_separated_by_one_blank_line() {
        assert_eq!(
            render_text("one\ntwo\n\nthree", 40),
            ["one two", "", "three"]
        );
    }

    #[test]
    fn nested_lists_have_hanging_indents() {
        let md = "- first item wraps here\n  - nested one\n  - nested two\n- second\n\n3. three\n4. four is longer";
        let lines = render_text(md, 16);
        assert_eq!(
            lines,
            [
                "• first item",
                "  wraps here",
                "  ◦ nested one",
                "  ◦ nested two",
                "• second",
                "",
                "3. three",
                "4. four is",
                "   longer",
            ]
        );
    }

    #[test]
    fn list_markers_use_the_accent_style() {
        let theme = Theme::dark();
        let lines = render("- item", 20, &theme);
        assert_eq!(lines[0].spans[0].content, "• ");
        assert_eq!(
            lines[0].spans[0].style,
            theme.assistant_text.patch(theme.accent)
        );
    }

    #[test]
    fn quotes_get_a_gutter_on_every_line() {
        let lines = render_text("> a quoted line that wraps\n>\n> second paragraph", 14);
        assert_eq!(
            lines,
            [
                "│ a quoted",
                "│ line that",
                "│ wraps",
                "│",
                "│ second",
                "│ paragraph"
            ]
        );
        let lines = render_text("> outer\n> > inner", 20);
        assert_eq!(lines, ["│ outer", "│", "│ │ inner"]);
    }

    #[test]
    fn inline_styles_are_applied() {
        let theme = Theme::dark();
        let lines = render("plain **bold** *it* `code` ~~gone~~", 80, &theme);
        let spans = &lines[0].spans;
        let find = |text: &str| spans.iter().find(|s| s.content == text).map(|s| s.style);
        assert_eq!(find("bold"), Some(theme.assistant_text.patch(theme.strong)));
        assert_eq!(find("it"), Some(theme.assistant_text.patch(theme.emphasis)));
        assert_eq!(
            find("code"),
            Some(theme.assistant_text.patch(theme.inline_code))
        );
        assert!(find("gone").is_some_and(|s| s.add_modifier.contains(Modifier::CROSSED_OUT)));
    }

    #[test]
    fn links_show_their_url_unless_it_is_the_text() {
        assert_eq!(
            render_text("see [docs](https://x.dev) now", 80),
            ["see docs (https://x.dev) now"]
        );
        assert_eq!(render_text("<https://x.dev>", 80), ["https://x.dev"]);
    }

    #[test]
    fn headings_keep_their_hashes() {
        assert_eq!(
            render_text("# Title\n## Sub\ntext", 40),
            ["# Title", "", "## Sub", "", "text"]
        );
    }

    #[test]
    fn rules_span_the_width() {
        assert_eq!(render_text("a\n\n---\n\nb", 5), ["a", "", "─────", "", "b"]);
    }

    #[test]
    fn unclosed_fence_renders_as_code_so_far() {
        let lines = render_text("text\n\n```rust\nfn main() {\n    let x = 1;", 30);
        assert_eq!(
            lines,
            [
                "text",
                "",
                " fn main() {                  ",
                "     let x = 1;               ",
            ]
        );
        // Just the opening fence: an empty block, not a panic.
        assert_eq!(render_text("```py\n", 10), ["          "]);
    }

    #[test]
    fn code_lines_are_cut_not_wrapped() {
        let lines = render_text("```\nlet a_really_long_identifier = 42;\n```", 20);
        assert_eq!(lines, [" let a_really_long_…"]);
        assert_fits(
            &render(
                "```\nlet a_really_long_identifier = 42;\n```",
                20,
                &Theme::dark(),
            ),
            20,
            "",
        );
    }

    #[test]
    fn rust_code_is_highlighted_and_unknown_languages_are_plain() {
        let theme = Theme::dark();
        let block = theme.assistant_text.patch(theme.code_block);
        let rust = render("```rust\nfn main() {}\n```", 40, &theme);
        assert!(
            rust[0].spans.iter().any(|s| s.style.fg != block.fg),
            "no highlighting: {rust:?}"
        );
        assert!(rust[0].spans.iter().all(|s| s.style.bg == block.bg));
        let plain = render("```nosuchlang\nfn main() {}\n```", 40, &theme);
        assert!(plain[0].spans.iter().all(|s| s.style == block), "{plain:?}");
        let no_color = render("```rust\nfn main() {}\n```", 40, &Theme::no_color());
        assert!(no_color[0]
            .spans
            .iter()
            .all(|s| s.style.fg.is_none() && s.style.bg.is_none()));
    }

    #[test]
    fn cached_highlighting_matches_highlighting_from_scratch() {
        let code = "/// doc\nfn main() {\n    let s = \"a\\\"b\";\n    /* multi\n       line */ let x = 1;\n}\n";
        let ss = syntaxes();
        let theme = &syntect_themes().themes["base16-ocean.dark"];
        let syntax = ss.find_syntax_by_token("rust").map(|s| s.name.clone());
        assert_eq!(syntax.as_deref(), Some("Rust"));
        // Every prefix, as a stream would deliver it, including ones that end mid-line.
        for end in (0..=code.len()).filter(|&i| code.is_char_boundary(i)) {
            let text = &code[..end];
            let cached = highlight("base16-ocean.dark", "rust", text).unwrap_or_default();
            let mut fresh = syntect::easy::HighlightLines::new(
                ss.find_syntax_by_token("rust")
                    .unwrap_or_else(|| ss.find_syntax_plain_text()),
                theme,
            );
            let expected: Vec<Tokens> = LinesWithEndings::from(text)
                .map(|line| {
                    fresh
                        .highlight_line(line, ss)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(style, t)| (style, t.to_string()))
                        .collect()
                })
                .collect();
            assert_eq!(cached, expected, "prefix {text:?}");
        }
    }

    const TABLE: &str = "| Model | Params | Notes |\n|:--|--:|:-:|\n| Nemotron-H | 8B | hybrid Mamba-2 and attention layers |\n| Nano | 9B | reasoning on/off |\n";

    #[test]
    fn table_at_80_columns_uses_natural_widths() {
        let lines = render_text(TABLE, 80);
        assert_eq!(
            lines,
            [
                "┌────────────┬────────┬─────────────────────────────────────┐",
                "│ Model      │ Params │                Notes                │",
                "├────────────┼────────┼─────────────────────────────────────┤",
                "│ Nemotron-H │     8B │ hybrid Mamba-2 and attention layers │",
                "│ Nano       │     9B │          reasoning on/off           │",
                "└────────────┴────────┴─────────────────────────────────────┘",
            ]
        );
    }

    #[test]
    fn table_at_30_columns_wraps_cells() {
        let lines = render("x\n\n".to_string().as_str(), 30, &Theme::dark());
        assert_eq!(texts(&lines), ["x"]);
        let lines = render(TABLE, 30, &Theme::dark());
        assert_fits(&lines, 30, TABLE);
        let text = texts(&lines);
        assert!(text.iter().all(|l| l.chars().count() == 30), "{text:#?}");
        assert!(text.iter().any(|l| l.contains("hybrid")), "{text:#?}");
    }

    #[test]
    fn very_narrow_tables_fall_back_to_rows() {
        let lines = render(TABLE, 8, &Theme::dark());
        assert_fits(&lines, 8, TABLE);
        assert!(texts(&lines).iter().any(|l| l.contains('│')));
    }

    #[test]
    fn half_tables_do_not_panic() {
        for end in 0..=TABLE.len() {
            if let Some(prefix) = TABLE.get(..end) {
                for width in [1, 5, 30, 80] {
                    assert_fits(&render(prefix, width, &Theme::dark()), width.max(2), prefix);
                }
            }
        }
    }

    #[test]
    fn fit_widths_shares_what_is_left() {
        assert_eq!(fit_widths(&[3, 4], 10), [3, 4]);
        assert_eq!(fit_widths(&[3, 40, 40], 23), [3, 10, 10]);
        assert_eq!(fit_widths(&[5, 5, 5], 3), [1, 1, 1]);
    }

    /// A small deterministic generator, so the fuzz test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    #[test]
    fn random_markdown_never_panics_and_fits() {
        const PIECES: &[&str] = &[
            "# ",
            "## ",
            "> ",
            "- ",
            "* ",
            "1. ",
            "  ",
            "    ",
            "\n",
            "\n\n",
            "```",
            "```rust\n",
            "~~~",
            "| a | b |\n",
            "|---|:-:|\n",
            "| 1 |",
            "**",
            "*",
            "_",
            "`",
            "~~",
            "[",
            "](",
            ")",
            "<http://a.b>",
            "---",
            "word ",
            "longerwordwithoutspaces",
            "日本語",
            "👩‍👩‍👧",
            "❤️",
            "e\u{301}",
            "\t",
            "\u{1b}[1m",
            "- [ ] ",
            "- [x] ",
            "<b>",
            "</b>",
            "\\",
            "&amp;",
            "![alt](img.png)",
            "***",
            "+ ",
            "10) ",
            "| x |\n| - |\n| y |",
            ">>",
            " ",
        ];
        let theme = Theme::dark();
        let mut rng = Lcg(7);
        for _ in 0..400 {
            let mut doc = String::new();
            for _ in 0..rng.next(40) {
                doc.push_str(PIECES[rng.next(PIECES.len())]);
            }
            let width = 1 + rng.next(100) as u16;
            let lines = render(&doc, width, &theme);
            let plain = plain_lines(&doc, width, Style::new());
            if width >= 2 {
                assert_fits(&lines, width, &doc);
                assert_fits(&plain, width, &doc);
            }
            for line in lines.iter().chain(&plain) {
                for span in &line.spans {
                    assert!(
                        !span.content.chars().any(char::is_control),
                        "control char from {doc:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn two_thousand_lines_render_quickly() {
        let mut doc = String::new();
        for i in 0..120 {
            doc.push_str(&format!("## Section {i}\n\nSome *prose* with `code` and a [link](https://example.com) that wraps around the width of the terminal more than once, with enough words.\n\n"));
            doc.push_str(
                "- item one\n- item two\n  - nested\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n",
            );
            doc.push_str(&format!(
                "```rust\nfn main() {{\n    println!(\"hello {i}\");\n}}\n```\n\n"
            ));
        }
        assert!(doc.lines().count() >= 2000, "{}", doc.lines().count());
        let theme = Theme::dark();
        warm_up();
        // Syntect compiles a language's regexes on first use; keep that out of the timing.
        render("```rust\nfn f() {}\n```", 80, &theme);
        let time = |doc: &str, theme: &Theme| {
            let start = std::time::Instant::now();
            let lines = render(doc, 80, theme);
            (lines.len(), start.elapsed())
        };
        let (n, first) = time(&doc, &theme);
        assert!(n > 2000);
        doc.push_str("```rust\nlet streaming = 1;\n");
        let (_, again) = time(&doc, &theme);
        let mut plain = theme.clone();
        plain.syntect_theme.clear();
        let (_, unhighlighted) = time(&doc, &plain);
        eprintln!("{n} lines: first {first:?}, streaming re-render {again:?}, no highlighting {unhighlighted:?}");
        // Generous bounds for slow, shared CI machines (measured numbers are in the docs).
        assert!(again.as_millis() < 250, "re-render took {again:?}");
        assert!(first.as_millis() < 1000, "first render took {first:?}");
    }

    const DOC: &str = "# Nemotron on your machine\n\nThis guide shows how to **run** a *hybrid* Mamba-2 model locally, with `nemo chat` as the entry point. See [the docs](https://example.com/docs).\n\n- Download the weights\n- Pick a thinking budget:\n  1. small for chat\n  2. large for maths\n- Start chatting\n\n> Tip: press `?` for help.\n";

    const RUST: &str = "```rust\n/// Adds two numbers.\nfn add(a: i32, b: i32) -> i32 {\n\ta + b // the long comment here makes the line wider than forty columns\n}\n```\n";

    #[test]
    fn snapshot_prose_80() {
        insta::assert_snapshot!(snapshot(&render(DOC, 80, &Theme::dark())));
    }

    #[test]
    fn snapshot_prose_40() {
        insta::assert_snapshot!(snapshot(&render(DOC, 40, &Theme::dark())));
    }

    #[test]
    fn snapshot_rust_code_80() {
        insta::assert_snapshot!(snapshot(&render(RUST, 80, &Theme::dark())));
    }

    #[test]
    fn snapshot_rust_code_40() {
        insta::assert_snapshot!(snapshot(&render(RUST, 40, &Theme::dark())));
    }

    #[test]
    fn snapshot_table_80() {
        insta::assert_snapshot!(snapshot(&render(TABLE, 80, &Theme::dark())));
    }

    #[test]
    fn snapshot_table_40() {
        insta::assert_snapshot!(snapshot(&render(TABLE, 40, &Theme::dark())));
    }
}
