//! Colour themes for the terminal interface.
//!
//! A theme is a TOML file of flat keys. `themes/dark.toml` is embedded in the binary and is
//! the default; `light` and `high-contrast` are embedded too. A user's theme file is a
//! *patch*: it starts from the embedded default (or from the built-in theme named by its
//! optional `extends` key) and changes only the keys it sets.
//!
//! Value forms:
//! - `background`, `foreground`: a colour, `"#rrggbb"`, a ratatui name (`"red"`,
//!   `"darkgray"`, `"reset"`) or a 256-colour index (`"208"`).
//! - every style key: either a colour string (sets the foreground only) or an inline
//!   table `{ fg = "...", bg = "...", bold = true, italic = true, dim = true,
//!   underline = true, reversed = true, crossed_out = true }`. A patch replaces the whole
//!   style of a key it sets; unset fields inherit from the widget's surrounding style.
//! - `syntect_theme`: a theme name from syntect's default set (see
//!   [`syntect_theme_names`]), or `""` for no highlighting.
//!
//! Invariants:
//! - Every key of [`Theme`] appears in each embedded file (a test checks it), so built-in
//!   themes never depend on the fallback values in code.
//! - An unknown key or a bad value is an error naming the key (and the file, when loaded
//!   from one); nothing is silently ignored.
//! - [`Theme::no_color`] carries no colour at all (only modifiers such as bold and
//!   reversed, which `NO_COLOR` allows and without which a selection would be invisible).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ratatui::style::{Color, Modifier, Style};
use syntect::highlighting::ThemeSet;

/// The default theme, embedded.
const DARK_TOML: &str = include_str!("../../themes/dark.toml");
const LIGHT_TOML: &str = include_str!("../../themes/light.toml");
const HIGH_CONTRAST_TOML: &str = include_str!("../../themes/high-contrast.toml");

/// Names accepted by [`Theme::builtin`].
pub const BUILTIN_THEMES: &[&str] = &["dark", "light", "high-contrast"];

static SYNTECT_THEMES: OnceLock<ThemeSet> = OnceLock::new();

/// syntect's default theme set, loaded once on first use (`markdown::warm_up` preloads it).
pub(crate) fn syntect_themes() -> &'static ThemeSet {
    SYNTECT_THEMES.get_or_init(ThemeSet::load_defaults)
}

/// Names of the syntect themes a [`Theme::syntect_theme`] may use, sorted.
pub fn syntect_theme_names() -> Vec<String> {
    syntect_themes().themes.keys().cloned().collect()
}

/// Errors from parsing or loading a theme.
#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("unknown theme key `{key}`")]
    UnknownKey { key: String },
    #[error("theme key `{key}`: {reason}")]
    BadValue { key: String, reason: String },
    #[error(
        "theme `{name}` is not a built-in theme ({}) and cannot be read: {source}",
        BUILTIN_THEMES.join(", ")
    )]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("theme file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ThemeError>,
    },
}

/// Declares the style fields once: the struct, the key list and the key → field map.
macro_rules! theme_struct {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// Every colour and style the interface uses. Build with [`Theme::builtin`],
        /// [`Theme::load`] or [`Theme::resolve`].
        #[derive(Clone, Debug, PartialEq)]
        pub struct Theme {
            /// Screen background.
            pub background: Color,
            /// Default text colour.
            pub foreground: Color,
            $($(#[$doc])* pub $field: Style,)*
            /// Name of a syntect theme for code blocks; `""` disables highlighting.
            pub syntect_theme: String,
        }

        impl Theme {
            /// The TOML keys holding a [`Style`] (besides `background`, `foreground` and
            /// `syntect_theme`).
            pub const STYLE_KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn style_mut(&mut self, key: &str) -> Option<&mut Style> {
                match key {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }

            fn styles_mut(&mut self) -> Vec<&mut Style> {
                vec![$(&mut self.$field),*]
            }

            /// All styles empty, colours reset: the starting point for parsing.
            fn blank() -> Theme {
                Theme {
                    background: Color::Reset,
                    foreground: Color::Reset,
                    $($field: Style::new(),)*
                    syntect_theme: String::new(),
                }
            }
        }
    };
}

theme_struct! {
    /// "You" label in front of a user message.
    user_label,
    /// Text of a user message.
    user_text,
    /// Label in front of an assistant message.
    assistant_label,
    /// Body text of an assistant message (the base for all markdown styles).
    assistant_text,
    /// Reasoning ("thinking") text; usually dim and italic.
    reasoning,
    /// Markdown headings.
    heading,
    /// `*emphasis*`.
    emphasis,
    /// `**strong**`.
    strong,
    /// Link text.
    link,
    /// The URL shown after a link's text.
    link_url,
    /// `inline code`.
    inline_code,
    /// Fenced code blocks: its `bg` fills the block; its `fg` colours unhighlighted code.
    code_block,
    /// Block quotes (text and the `│` gutter).
    quote,
    /// Table borders and horizontal rules.
    table_border,
    /// Table header cells.
    table_header,
    /// Status bar.
    status,
    /// Thinking-budget slider, the used part.
    slider_filled,
    /// Thinking-budget slider, the unused part.
    slider_empty,
    /// Thinking-budget slider, past the budget.
    slider_over,
    /// Accent: list markers, prompts, highlights.
    accent,
    /// Error messages.
    error,
    /// Warnings.
    warning,
    /// Help overlay (text and background).
    help,
    /// Selected row in a popup or menu.
    popup_selected,
}

impl Default for Theme {
    fn default() -> Self {
        Theme::dark()
    }
}

impl Theme {
    /// The embedded default theme.
    pub fn dark() -> Theme {
        // The embedded file is checked by tests; should it ever fail to parse, fall back to
        // a colourless theme rather than crash the interface.
        Theme::from_toml_patch(&Theme::blank(), DARK_TOML).unwrap_or_else(|_| Theme::no_color())
    }

    /// A built-in theme by name: `dark`, `light` or `high-contrast`.
    pub fn builtin(name: &str) -> Option<Theme> {
        let text = match name {
            "dark" => return Some(Theme::dark()),
            "light" => LIGHT_TOML,
            "high-contrast" => HIGH_CONTRAST_TOML,
            _ => return None,
        };
        Theme::from_toml_patch(&Theme::dark(), text).ok()
    }

    /// Applies the keys set in `text` (TOML) over `base`.
    ///
    /// An `extends = "<builtin>"` key, if present, replaces `base` by that built-in theme
    /// before the other keys apply.
    pub fn from_toml_patch(base: &Theme, text: &str) -> Result<Theme, ThemeError> {
        let table: toml::Table = text.parse()?;
        let mut theme = match table.get("extends") {
            None => base.clone(),
            Some(toml::Value::String(name)) => {
                Theme::builtin(name).ok_or_else(|| ThemeError::BadValue {
                    key: "extends".into(),
                    reason: format!(
                        "`{name}` is not a built-in theme ({})",
                        BUILTIN_THEMES.join(", ")
                    ),
                })?
            }
            Some(other) => {
                return Err(bad(
                    "extends",
                    format!("expected a string, found {}", other.type_str()),
                ))
            }
        };
        for (key, value) in &table {
            match key.as_str() {
                "extends" => {}
                "background" => theme.background = parse_color(key, value)?,
                "foreground" => theme.foreground = parse_color(key, value)?,
                "syntect_theme" => theme.syntect_theme = parse_syntect_theme(value)?,
                _ => {
                    let style = parse_style(key, value)?;
                    match theme.style_mut(key) {
                        Some(slot) => *slot = style,
                        None => return Err(ThemeError::UnknownKey { key: key.clone() }),
                    }
                }
            }
        }
        Ok(theme)
    }

    /// A built-in theme by name, or else a path to a TOML patch over the default theme.
    pub fn load(name_or_path: &str) -> Result<Theme, ThemeError> {
        if let Some(theme) = Theme::builtin(name_or_path) {
            return Ok(theme);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| ThemeError::Read {
            name: name_or_path.to_string(),
            source,
        })?;
        Theme::from_toml_patch(&Theme::dark(), &text).map_err(|e| ThemeError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// No colours anywhere (for `NO_COLOR`): background and foreground reset, styles keep
    /// only their modifiers (bold, italic, reversed…), code is not highlighted.
    pub fn no_color() -> Theme {
        let mut theme = Theme::blank();
        // Modifiers come from the default theme, so headings stay bold and quotes italic.
        let mut dark =
            Theme::from_toml_patch(&Theme::blank(), DARK_TOML).unwrap_or_else(|_| Theme::blank());
        for (slot, from) in theme.styles_mut().into_iter().zip(dark.styles_mut()) {
            let mut style = Style::new();
            style.add_modifier = from.add_modifier;
            *slot = style;
        }
        // A selection must stay visible without colour.
        theme.popup_selected = theme.popup_selected.add_modifier(Modifier::REVERSED);
        theme.status = theme.status.add_modifier(Modifier::REVERSED);
        theme.slider_filled = theme.slider_filled.add_modifier(Modifier::REVERSED);
        theme
    }

    /// The theme to run with: [`Theme::no_color`] when the environment variable `NO_COLOR`
    /// is set and non-empty, else the requested theme (name or path), else `dark`.
    pub fn resolve(name_or_path: Option<&str>) -> Result<Theme, ThemeError> {
        resolve_with(
            name_or_path,
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        )
    }

    /// The style for a whole screen area: `foreground` on `background`.
    pub fn base(&self) -> Style {
        Style::new().fg(self.foreground).bg(self.background)
    }
}

fn resolve_with(name_or_path: Option<&str>, no_color: bool) -> Result<Theme, ThemeError> {
    if no_color {
        return Ok(Theme::no_color());
    }
    match name_or_path {
        Some(name) => Theme::load(name),
        None => Ok(Theme::dark()),
    }
}

fn bad(key: &str, reason: String) -> ThemeError {
    ThemeError::BadValue {
        key: key.to_string(),
        reason,
    }
}

fn parse_color(key: &str, value: &toml::Value) -> Result<Color, ThemeError> {
    let toml::Value::String(s) = value else {
        return Err(bad(
            key,
            format!("expected a colour string, found {}", value.type_str()),
        ));
    };
    s.parse::<Color>().map_err(|_| {
        bad(
            key,
            format!("`{s}` is not a colour (use \"#rrggbb\", a name such as \"darkgray\", or \"reset\")"),
        )
    })
}

fn parse_syntect_theme(value: &toml::Value) -> Result<String, ThemeError> {
    let key = "syntect_theme";
    let toml::Value::String(name) = value else {
        return Err(bad(
            key,
            format!("expected a string, found {}", value.type_str()),
        ));
    };
    let names = syntect_theme_names();
    if !name.is_empty() && !names.iter().any(|n| n == name) {
        return Err(bad(
            key,
            format!(
                "unknown syntect theme `{name}` (known: {})",
                names.join(", ")
            ),
        ));
    }
    Ok(name.clone())
}

fn parse_style(key: &str, value: &toml::Value) -> Result<Style, ThemeError> {
    let table = match value {
        toml::Value::String(_) => return Ok(Style::new().fg(parse_color(key, value)?)),
        toml::Value::Table(table) => table,
        other => {
            return Err(bad(
                key,
                format!(
                    "expected a colour string or a table, found {}",
                    other.type_str()
                ),
            ))
        }
    };
    let mut style = Style::new();
    for (field, v) in table {
        let full = format!("{key}.{field}");
        let modifier = match field.as_str() {
            "fg" => {
                style = style.fg(parse_color(&full, v)?);
                continue;
            }
            "bg" => {
                style = style.bg(parse_color(&full, v)?);
                continue;
            }
            "bold" => Modifier::BOLD,
            "italic" => Modifier::ITALIC,
            "dim" => Modifier::DIM,
            "underline" => Modifier::UNDERLINED,
            "reversed" => Modifier::REVERSED,
            "crossed_out" => Modifier::CROSSED_OUT,
            _ => return Err(ThemeError::UnknownKey { key: full }),
        };
        match v {
            toml::Value::Boolean(true) => style = style.add_modifier(modifier),
            toml::Value::Boolean(false) => {}
            other => {
                return Err(bad(
                    &full,
                    format!("expected true or false, found {}", other.type_str()),
                ))
            }
        }
    }
    Ok(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(text: &str) -> Vec<String> {
        let table: toml::Table = text.parse().unwrap_or_default();
        table.keys().cloned().collect()
    }

    #[test]
    fn every_builtin_file_sets_every_key() {
        for (name, text) in [
            ("dark", DARK_TOML),
            ("light", LIGHT_TOML),
            ("high-contrast", HIGH_CONTRAST_TOML),
        ] {
            let keys = keys_of(text);
            for key in
                Theme::STYLE_KEYS
                    .iter()
                    .chain(&["background", "foreground", "syntect_theme"])
            {
                assert!(keys.iter().any(|k| k == key), "{name}.toml misses `{key}`");
            }
        }
    }

    #[test]
    fn builtin_themes_parse_and_differ() {
        let dark = Theme::from_toml_patch(&Theme::blank(), DARK_TOML).expect("dark.toml parses");
        let light = Theme::from_toml_patch(&Theme::blank(), LIGHT_TOML).expect("light.toml parses");
        let hc = Theme::from_toml_patch(&Theme::blank(), HIGH_CONTRAST_TOML)
            .expect("high-contrast.toml parses");
        assert_eq!(Theme::builtin("dark"), Some(dark.clone()));
        assert_eq!(Theme::builtin("light"), Some(light.clone()));
        assert_eq!(Theme::builtin("high-contrast"), Some(hc.clone()));
        assert_ne!(dark, light);
        assert_ne!(dark, hc);
        assert_eq!(Theme::builtin("solarized"), None);
        assert_eq!(Theme::default(), dark);
    }

    #[test]
    fn builtin_syntect_themes_exist() {
        let names = syntect_theme_names();
        for name in BUILTIN_THEMES {
            let theme = Theme::builtin(name).expect("builtin");
            assert!(
                names.contains(&theme.syntect_theme),
                "{name}: {}",
                theme.syntect_theme
            );
        }
    }

    #[test]
    fn patch_changes_only_the_keys_it_sets() {
        let dark = Theme::dark();
        let patched = Theme::from_toml_patch(
            &dark,
            "heading = \"#ff0000\"\nerror = { fg = \"red\", bg = \"darkgray\", bold = true }\nbackground = \"reset\"",
        )
        .expect("valid patch");
        assert_eq!(patched.heading, Style::new().fg(Color::Rgb(255, 0, 0)));
        assert_eq!(
            patched.error,
            Style::new()
                .fg(Color::Red)
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD)
        );
        assert_eq!(patched.background, Color::Reset);
        let mut expected = patched.clone();
        expected.heading = dark.heading;
        expected.error = dark.error;
        expected.background = dark.background;
        assert_eq!(expected, dark);
    }

    #[test]
    fn patch_extends_a_builtin() {
        let t = Theme::from_toml_patch(&Theme::dark(), "extends = \"light\"\naccent = \"blue\"")
            .expect("valid");
        let mut light = Theme::builtin("light").expect("light");
        light.accent = Style::new().fg(Color::Blue);
        assert_eq!(t, light);
        let err = Theme::from_toml_patch(&Theme::dark(), "extends = \"nope\"").unwrap_err();
        assert!(err.to_string().contains("extends"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Theme::from_toml_patch(&Theme::dark(), "haeding = \"red\"").unwrap_err();
        assert!(
            matches!(&err, ThemeError::UnknownKey { key } if key == "haeding"),
            "{err}"
        );
        let err =
            Theme::from_toml_patch(&Theme::dark(), "heading = { colour = \"red\" }").unwrap_err();
        assert!(err.to_string().contains("heading.colour"), "{err}");
    }

    #[test]
    fn bad_colour_is_an_error_naming_the_key() {
        let err = Theme::from_toml_patch(&Theme::dark(), "link = \"#12345\"").unwrap_err();
        assert!(
            matches!(&err, ThemeError::BadValue { key, .. } if key == "link"),
            "{err}"
        );
        let err =
            Theme::from_toml_patch(&Theme::dark(), "quote = { bg = \"blurple\" }").unwrap_err();
        assert!(err.to_string().contains("quote.bg"), "{err}");
        let err =
            Theme::from_toml_patch(&Theme::dark(), "strong = { bold = \"yes\" }").unwrap_err();
        assert!(err.to_string().contains("strong.bold"), "{err}");
        let err = Theme::from_toml_patch(&Theme::dark(), "foreground = 3").unwrap_err();
        assert!(err.to_string().contains("foreground"), "{err}");
        let err = Theme::from_toml_patch(&Theme::dark(), "syntect_theme = \"nope\"").unwrap_err();
        assert!(err.to_string().contains("syntect_theme"), "{err}");
        assert!(Theme::from_toml_patch(&Theme::dark(), "this is = not toml [").is_err());
    }

    #[test]
    fn load_reads_builtins_and_files() {
        assert_eq!(Theme::load("light").ok(), Theme::builtin("light"));
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("mine.toml");
        std::fs::write(&good, "accent = \"#010203\"\n").expect("write");
        let theme = Theme::load(good.to_str().expect("utf-8 path")).expect("loads");
        assert_eq!(theme.accent, Style::new().fg(Color::Rgb(1, 2, 3)));
        assert_eq!(theme.heading, Theme::dark().heading);

        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "accent = \"nocolour\"\n").expect("write");
        let err = Theme::load(broken.to_str().expect("utf-8 path"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.toml") && err.contains("accent"),
            "{err}"
        );

        let err = Theme::load("/no/such/theme.toml").unwrap_err().to_string();
        assert!(err.contains("/no/such/theme.toml"), "{err}");
    }

    #[test]
    fn no_color_has_no_colours_but_keeps_selection_visible() {
        let t = Theme::no_color();
        assert_eq!(t.background, Color::Reset);
        assert_eq!(t.foreground, Color::Reset);
        let mut t2 = t.clone();
        for style in t2.styles_mut() {
            assert_eq!(style.fg, None);
            assert_eq!(style.bg, None);
        }
        assert!(t.popup_selected.add_modifier.contains(Modifier::REVERSED));
        assert!(t.syntect_theme.is_empty());
    }

    #[test]
    fn resolve_prefers_no_color_then_request_then_dark() {
        assert_eq!(
            resolve_with(Some("light"), true).ok(),
            Some(Theme::no_color())
        );
        assert_eq!(
            resolve_with(Some("light"), false).ok(),
            Theme::builtin("light")
        );
        assert_eq!(resolve_with(None, false).ok(), Some(Theme::dark()));
        assert!(resolve_with(Some("/no/such.toml"), false).is_err());
    }
}
