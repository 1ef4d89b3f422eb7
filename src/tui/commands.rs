//! Slash commands: one enum, a spec table (name, arguments, help) that the help overlay
//! and the completion popup read, and a parser whose errors are one helpful line.
//!
//! Invariants:
//! - Every [`Command`] variant has exactly one [`CommandSpec`] in [`specs`], whose `name`
//!   (without the leading `/`) is what [`Command::name`] returns; aliases (`/nothink`,
//!   `/exit`, `/q`, `/?`, and `/save!`, which is `/save` allowed to replace a file) parse
//!   but are not listed, so completion shows each command once.
//! - [`parse`] never panics and every [`CommandError`] displays as a single line: user
//!   text echoed back is cut to [`ECHO_MAX`] chars with control characters replaced.
//! - Numbers are range-checked here (sampling values by `SamplingParams::validate`, the
//!   budget by `Budget`'s parser: the same ranges as the flags and config.toml), so the
//!   app can apply a parsed [`SetArg`] or [`Budget`] without checking again.
//! - Session names match `[A-Za-z0-9._-]{1,64}` and do not start with `.` (the same rule
//!   as `chat::session_store::validate_name`), so they can never name a path outside the
//!   sessions directory.

use thiserror::Error;

use crate::agent::policy::ApprovalMode;
use crate::protocol::{Budget, SamplingParams, ToolChoice};

/// A sampling setting changed by `/set KEY VALUE`; values are already range-checked.
#[derive(Clone, Debug, PartialEq)]
pub enum SetArg {
    /// `0..=5`; 0 means greedy.
    Temperature(f32),
    /// `0..=1`; 1 disables the filter.
    TopP(f32),
    /// 0 disables the filter.
    TopK(usize),
    /// `None` (`none` / `random`): a new random seed each turn.
    Seed(Option<u64>),
    /// At least 1.
    MaxTokens(usize),
}

/// A parsed slash command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Think,
    NoThink,
    Budget(Budget),
    /// The new system message; empty clears it.
    System(String),
    Clear,
    Retry,
    Undo,
    /// `/save [NAME]`; `None`: under the session's own id. `replace` (`/save! NAME`): write
    /// over a file of that name that holds another session or is not one.
    Save {
        name: Option<String>,
        replace: bool,
    },
    /// A session name or id (a trailing `.json` is kept; the store accepts it).
    Load(String),
    Sessions,
    /// A path ending in `.md` (any directory).
    Export(String),
    Model,
    /// `/tools` lists; `/tools on|off` offers the tools to the next turns or not.
    Tools(Option<bool>),
    /// What the first step of the next turns must do.
    ToolChoice(ToolChoice),
    Approval(ApprovalMode),
    Set(SetArg),
    Copy,
    Wrap,
    Help,
    Quit,
}

impl Command {
    /// The canonical name (without `/`), as listed in [`specs`].
    pub fn name(&self) -> &'static str {
        match self {
            Command::Think => "think",
            Command::NoThink => "no_think",
            Command::Budget(_) => "budget",
            Command::System(_) => "system",
            Command::Clear => "clear",
            Command::Retry => "retry",
            Command::Undo => "undo",
            Command::Save { .. } => "save",
            Command::Load(_) => "load",
            Command::Sessions => "sessions",
            Command::Export(_) => "export",
            Command::Model => "model",
            Command::Tools(_) => "tools",
            Command::ToolChoice(_) => "tool_choice",
            Command::Approval(_) => "approval",
            Command::Set(_) => "set",
            Command::Copy => "copy",
            Command::Wrap => "wrap",
            Command::Help => "help",
            Command::Quit => "quit",
        }
    }
}

/// Most chars of user text echoed back in an error.
pub const ECHO_MAX: usize = 40;
const SET_KEYS: &str = "temperature, top_p, top_k, seed, max_tokens";
const NAME_RULE: &str = "use 1-64 of A-Z a-z 0-9 . _ -, not starting with `.`";

/// Why a line starting with `/` is not a valid command. Displays as one line.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CommandError {
    #[error("commands start with `/`; /help lists them")]
    NotACommand,
    #[error("unknown command `/{name}`{hint}")]
    Unknown { name: String, hint: String },
    #[error("/{command} needs {expected}")]
    MissingArgument {
        command: &'static str,
        expected: &'static str,
    },
    #[error("/{command} takes no arguments (got `{got}`)")]
    UnexpectedArgument { command: &'static str, got: String },
    #[error("/{command}: `{value}` is not {expected}")]
    BadNumber {
        command: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("/{command}: {what} must be {range} (got {value})")]
    OutOfRange {
        command: &'static str,
        what: &'static str,
        range: &'static str,
        value: String,
    },
    #[error("/{command}: `{value}` is not {expected}")]
    BadValue {
        command: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("/set: unknown setting `{key}`; valid: {SET_KEYS}")]
    UnknownSetKey { key: String },
    #[error("/set takes one KEY and one VALUE (got `{got}`)")]
    SetTooManyArgs { got: String },
    #[error("/{command}: `{name}` is not a session name; {NAME_RULE}")]
    BadName { command: &'static str, name: String },
    #[error("/export needs a FILE ending in .md (got `{path}`)")]
    BadExportPath { path: String },
}

/// One row of the help overlay and the completion popup.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandSpec {
    /// Without the leading `/`.
    pub name: &'static str,
    /// Argument synopsis, empty when the command takes none.
    pub args: &'static str,
    pub help: &'static str,
}

const SPECS: &[CommandSpec] = &[
    CommandSpec {
        name: "think",
        args: "",
        help: "reasoning on",
    },
    CommandSpec {
        name: "no_think",
        args: "",
        help: "reasoning off (alias /nothink)",
    },
    CommandSpec {
        name: "budget",
        args: "N|off|unlimited",
        help: "thinking budget in tokens (also Alt+←/→)",
    },
    CommandSpec {
        name: "wrap",
        args: "",
        help: "wrap up now: end thinking, answer from it (Ctrl+G)",
    },
    CommandSpec {
        name: "system",
        args: "TEXT",
        help: "set the system message (empty clears it)",
    },
    CommandSpec {
        name: "retry",
        args: "",
        help: "regenerate the last answer",
    },
    CommandSpec {
        name: "undo",
        args: "",
        help: "drop the last exchange",
    },
    CommandSpec {
        name: "clear",
        args: "",
        help: "start over",
    },
    CommandSpec {
        name: "save",
        args: "[NAME]",
        help: "save the session (it also autosaves)",
    },
    CommandSpec {
        name: "load",
        args: "NAME",
        help: "load a saved session",
    },
    CommandSpec {
        name: "sessions",
        args: "",
        help: "list saved sessions",
    },
    CommandSpec {
        name: "export",
        args: "FILE.md",
        help: "write the conversation as Markdown",
    },
    CommandSpec {
        name: "model",
        args: "",
        help: "what is loaded: arch, dtype, sizes, caches",
    },
    CommandSpec {
        name: "tools",
        args: "[on|off]",
        help: "list the tools, or offer them (on) or not (off)",
    },
    CommandSpec {
        name: "tool_choice",
        args: "CHOICE",
        help: "auto|none|required|NAME: the first step of each turn",
    },
    CommandSpec {
        name: "approval",
        args: "MODE",
        help: "ask|read-only|auto: which calls run without asking",
    },
    CommandSpec {
        name: "set",
        args: "KEY VALUE",
        help: "temperature|top_p|top_k|seed|max_tokens",
    },
    CommandSpec {
        name: "copy",
        args: "",
        help: "copy the last answer (OSC 52)",
    },
    CommandSpec {
        name: "help",
        args: "",
        help: "keys and commands (also ? or F1)",
    },
    CommandSpec {
        name: "quit",
        args: "",
        help: "leave (also Ctrl+D)",
    },
];

/// Every command, in the order the help overlay and completion show them.
pub fn specs() -> &'static [CommandSpec] {
    SPECS
}

/// Commands whose name starts with `prefix` (the text typed after `/`; a leading `/` is
/// also accepted), in [`specs`] order. Case-insensitive; an empty prefix lists all.
pub fn complete(prefix: &str) -> Vec<&'static CommandSpec> {
    let prefix = prefix.strip_prefix('/').unwrap_or(prefix).to_lowercase();
    SPECS
        .iter()
        .filter(|s| s.name.starts_with(&prefix))
        .collect()
}

/// Parses a line that starts with `/` (surrounding whitespace is ignored; the command
/// name is case-insensitive). `/system` keeps its text verbatim, inner newlines included.
pub fn parse(input: &str) -> Result<Command, CommandError> {
    let body = input
        .trim()
        .strip_prefix('/')
        .ok_or(CommandError::NotACommand)?;
    let (name, rest) = match body.find(char::is_whitespace) {
        Some(i) => (&body[..i], body[i..].trim()),
        None => (body, ""),
    };
    let name = name.to_lowercase();
    let no_args = |command: &'static str, c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(CommandError::UnexpectedArgument {
                command,
                got: echo(rest),
            })
        }
    };
    match name.as_str() {
        "think" => no_args("think", Command::Think),
        "no_think" | "nothink" => no_args("no_think", Command::NoThink),
        "budget" => parse_budget(rest),
        "system" => Ok(Command::System(rest.to_string())),
        "clear" => no_args("clear", Command::Clear),
        "retry" => no_args("retry", Command::Retry),
        "undo" => no_args("undo", Command::Undo),
        "save" | "save!" => {
            let replace = name == "save!";
            let name = match rest {
                "" => None,
                n => Some(session_name("save", n)?),
            };
            Ok(Command::Save { name, replace })
        }
        "load" if rest.is_empty() => Err(CommandError::MissingArgument {
            command: "load",
            expected: "a session NAME (/sessions lists them)",
        }),
        "load" => {
            let stem = rest.strip_suffix(".json").unwrap_or(rest);
            session_name("load", stem).map(|_| Command::Load(rest.to_string()))
        }
        "sessions" => no_args("sessions", Command::Sessions),
        "export" => parse_export(rest),
        "model" => no_args("model", Command::Model),
        "tools" => match rest {
            "" => Ok(Command::Tools(None)),
            "on" => Ok(Command::Tools(Some(true))),
            "off" => Ok(Command::Tools(Some(false))),
            other => Err(CommandError::BadValue {
                command: "tools",
                value: echo(other),
                expected: "on or off",
            }),
        },
        "tool_choice" if rest.is_empty() => Err(CommandError::MissingArgument {
            command: "tool_choice",
            expected: "auto, none, required or a tool NAME",
        }),
        "tool_choice" => {
            rest.parse()
                .map(Command::ToolChoice)
                .map_err(|_| CommandError::BadValue {
                    command: "tool_choice",
                    value: echo(rest),
                    expected: "auto, none, required or a tool NAME",
                })
        }
        "approval" => rest
            .parse()
            .map(Command::Approval)
            .map_err(|_| CommandError::BadValue {
                command: "approval",
                value: echo(rest),
                expected: "ask, read-only or auto",
            }),
        "set" => parse_set(rest),
        "copy" => no_args("copy", Command::Copy),
        "wrap" => no_args("wrap", Command::Wrap),
        "help" | "?" => no_args("help", Command::Help),
        "quit" | "exit" | "q" => no_args("quit", Command::Quit),
        _ => Err(CommandError::Unknown {
            hint: suggestion(&name),
            name: echo(&name),
        }),
    }
}

fn parse_budget(rest: &str) -> Result<Command, CommandError> {
    const EXPECTED: &str = "a number up to 1000000, `off` or `unlimited`";
    if rest.trim().is_empty() {
        return Err(CommandError::MissingArgument {
            command: "budget",
            expected: EXPECTED,
        });
    }
    rest.parse::<Budget>()
        .map(Command::Budget)
        .map_err(|_| CommandError::BadNumber {
            command: "budget",
            value: echo(rest),
            expected: EXPECTED,
        })
}

fn parse_export(rest: &str) -> Result<Command, CommandError> {
    if rest.is_empty() {
        return Err(CommandError::MissingArgument {
            command: "export",
            expected: "a FILE ending in .md",
        });
    }
    let file_name = rest.rsplit(['/', '\\']).next().unwrap_or(rest);
    let lower = file_name.to_lowercase();
    if !lower.ends_with(".md") || lower == ".md" {
        return Err(CommandError::BadExportPath { path: echo(rest) });
    }
    Ok(Command::Export(rest.to_string()))
}

fn parse_set(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split_whitespace();
    let Some(key) = words.next() else {
        return Err(CommandError::MissingArgument {
            command: "set",
            expected: "KEY VALUE (keys: temperature, top_p, top_k, seed, max_tokens)",
        });
    };
    let key = key.to_lowercase();
    let canonical = match key.as_str() {
        "temperature" | "temp" => "temperature",
        "top_p" | "top-p" | "topp" => "top_p",
        "top_k" | "top-k" | "topk" => "top_k",
        "seed" => "seed",
        "max_tokens" | "max-tokens" | "maxtokens" => "max_tokens",
        _ => return Err(CommandError::UnknownSetKey { key: echo(&key) }),
    };
    let Some(value) = words.next() else {
        return Err(CommandError::MissingArgument {
            command: "set",
            expected: set_value_expected(canonical),
        });
    };
    if words.next().is_some() {
        return Err(CommandError::SetTooManyArgs { got: echo(rest) });
    }
    let bad = || CommandError::BadNumber {
        command: "set",
        value: echo(value),
        expected: set_value_expected(canonical),
    };
    let out_of_range = |what: &'static str, range: &'static str| CommandError::OutOfRange {
        command: "set",
        what,
        range,
        value: echo(value),
    };
    let arg = match canonical {
        "temperature" => {
            let v: f32 = value.parse().map_err(|_| bad())?;
            in_range(SamplingParams {
                temperature: v,
                ..SamplingParams::default()
            })?;
            SetArg::Temperature(v)
        }
        "top_p" => {
            let v: f32 = value.parse().map_err(|_| bad())?;
            in_range(SamplingParams {
                top_p: v,
                ..SamplingParams::default()
            })?;
            SetArg::TopP(v)
        }
        "top_k" => {
            let v: usize = value.parse().map_err(|_| bad())?;
            in_range(SamplingParams {
                top_k: v,
                ..SamplingParams::default()
            })?;
            SetArg::TopK(v)
        }
        "seed" => match value.to_lowercase().as_str() {
            "none" | "random" => SetArg::Seed(None),
            _ => SetArg::Seed(Some(value.parse().map_err(|_| bad())?)),
        },
        _ => {
            let v: usize = value.parse().map_err(|_| bad())?;
            if v == 0 {
                return Err(out_of_range("max_tokens", "at least 1"));
            }
            SetArg::MaxTokens(v)
        }
    };
    Ok(Command::Set(arg))
}

/// The one range check of sampling values (`SamplingParams::validate`), as a `/set` error.
fn in_range(p: SamplingParams) -> Result<(), CommandError> {
    p.validate().map_err(|e| CommandError::OutOfRange {
        command: "set",
        what: e.field,
        range: e.range,
        value: echo(&e.value),
    })
}

fn set_value_expected(key: &str) -> &'static str {
    match key {
        "temperature" => "a temperature between 0 and 5",
        "top_p" => "a top_p between 0 and 1",
        "top_k" => "a whole number for top_k (0 turns it off)",
        "seed" => "a whole number for seed, or `random`",
        _ => "a whole number of max_tokens (at least 1)",
    }
}

/// Checks a session name for `/save` and `/load`.
fn session_name(command: &'static str, name: &str) -> Result<String, CommandError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(CommandError::BadName {
            command,
            name: echo(name),
        })
    }
}

/// The hint after an unknown command: the one command it is a prefix of, else the
/// closest by edit distance when that is close (at most 2, and less than the name's
/// length), else a pointer to /help.
fn suggestion(name: &str) -> String {
    let by_prefix = complete(name);
    let best = match by_prefix.as_slice() {
        [only] if !name.is_empty() => Some(only.name),
        _ => SPECS
            .iter()
            .map(|s| (edit_distance(name, s.name), s.name))
            .min()
            .filter(|&(d, _)| d <= 2 && d < name.chars().count())
            .map(|(_, n)| n),
    };
    match best {
        Some(n) => format!("; did you mean /{n}?"),
        None => "; /help lists them".to_string(),
    }
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// User text made safe for a one-line message: controls shown as spaces, cut to
/// [`ECHO_MAX`] chars with an ellipsis.
fn echo(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(ECHO_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > ECHO_MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        match parse(s) {
            Ok(c) => panic!("{s} parsed as {c:?}"),
            Err(e) => {
                let m = e.to_string();
                assert_eq!(m.lines().count(), 1, "{s}: one line: {m}");
                m
            }
        }
    }

    fn ok(s: &str) -> Command {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn assert_err(input: &str, needle: &str) {
        let e = err(input);
        assert!(e.contains(needle), "{input}: `{e}` lacks `{needle}`");
    }

    #[test]
    fn think_parses_and_rejects_arguments() {
        assert_eq!(ok("/think"), Command::Think);
        assert_eq!(ok("  /THINK  "), Command::Think);
        assert_err("/think hard", "/think takes no arguments (got `hard`)");
    }

    #[test]
    fn no_think_parses_with_alias() {
        assert_eq!(ok("/no_think"), Command::NoThink);
        assert_eq!(ok("/nothink"), Command::NoThink);
        assert_err("/nothink x", "/no_think takes no arguments");
    }

    #[test]
    fn budget_accepts_numbers_off_and_unlimited() {
        assert_eq!(ok("/budget 256"), Command::Budget(Budget::tokens(256)));
        assert_eq!(
            ok("/budget 1000000"),
            Command::Budget(Budget::tokens(1_000_000))
        );
        assert_eq!(ok("/budget off"), Command::Budget(Budget::Off));
        assert_eq!(ok("/budget 0"), Command::Budget(Budget::Off));
        assert_eq!(ok("/budget Unlimited"), Command::Budget(Budget::Unlimited));
    }

    #[test]
    fn budget_rejects_missing_bad_and_huge_values() {
        assert_err(
            "/budget",
            "/budget needs a number up to 1000000, `off` or `unlimited`",
        );
        assert_err(
            "/budget lots",
            "`lots` is not a number up to 1000000, `off` or `unlimited`",
        );
        assert_err("/budget -5", "is not a number");
        assert_err("/budget 1000001", "`1000001` is not a number up to 1000000");
    }

    #[test]
    fn system_keeps_text_and_allows_empty_to_clear() {
        assert_eq!(
            ok("/system Be brief.\nUse lists."),
            Command::System("Be brief.\nUse lists.".into())
        );
        assert_eq!(ok("/system"), Command::System(String::new()));
    }

    #[test]
    fn clear_retry_undo_take_no_arguments() {
        assert_eq!(ok("/clear"), Command::Clear);
        assert_eq!(ok("/retry"), Command::Retry);
        assert_eq!(ok("/undo"), Command::Undo);
        assert_err("/clear all", "/clear takes no arguments");
        assert_err("/retry 2", "/retry takes no arguments");
        assert_err("/undo 2", "/undo takes no arguments");
    }

    #[test]
    fn save_takes_an_optional_safe_name() {
        assert_eq!(
            ok("/save"),
            Command::Save {
                name: None,
                replace: false
            }
        );
        assert_eq!(
            ok("/save! keep"),
            Command::Save {
                name: Some("keep".into()),
                replace: true
            }
        );
        assert_err("/save! ../x", "is not a session name");
        assert_eq!(
            ok("/save my-chat_1.v2"),
            Command::Save {
                name: Some("my-chat_1.v2".into()),
                replace: false
            }
        );
        assert_err("/save ../x", "is not a session name");
        assert_err("/save a/b", "is not a session name");
        assert_err("/save .hidden", "not starting with `.`");
        assert_err("/save two words", "`two words` is not a session name");
        assert_err(&format!("/save {}", "a".repeat(65)), "1-64");
    }

    #[test]
    fn load_needs_a_safe_name() {
        assert_eq!(ok("/load chat1"), Command::Load("chat1".into()));
        assert_eq!(ok("/load chat1.json"), Command::Load("chat1.json".into()));
        assert_err("/load", "/load needs a session NAME");
        assert_err("/load /etc/passwd", "is not a session name");
        assert_err("/load ..", "is not a session name");
    }

    #[test]
    fn sessions_model_copy_wrap_take_no_arguments() {
        assert_eq!(ok("/sessions"), Command::Sessions);
        assert_eq!(ok("/model"), Command::Model);
        assert_eq!(ok("/copy"), Command::Copy);
        assert_eq!(ok("/wrap"), Command::Wrap);
        assert_err("/sessions all", "/sessions takes no arguments");
        assert_err("/model x", "/model takes no arguments");
        assert_err("/copy x", "/copy takes no arguments");
        assert_err("/wrap now", "/wrap takes no arguments");
    }

    #[test]
    fn export_needs_a_markdown_path_anywhere() {
        assert_eq!(
            ok("/export notes/chat.md"),
            Command::Export("notes/chat.md".into())
        );
        assert_eq!(
            ok("/export /tmp/My Chat.MD"),
            Command::Export("/tmp/My Chat.MD".into())
        );
        assert_err("/export", "/export needs a FILE ending in .md");
        assert_err(
            "/export chat.txt",
            "/export needs a FILE ending in .md (got `chat.txt`)",
        );
        assert_err("/export dir/.md", "ending in .md");
    }

    #[test]
    fn set_parses_every_key() {
        assert_eq!(
            ok("/set temperature 0.7"),
            Command::Set(SetArg::Temperature(0.7))
        );
        assert_eq!(ok("/set temp 0"), Command::Set(SetArg::Temperature(0.0)));
        assert_eq!(ok("/set top_p 1"), Command::Set(SetArg::TopP(1.0)));
        assert_eq!(ok("/set top-p 0.9"), Command::Set(SetArg::TopP(0.9)));
        assert_eq!(ok("/set top_k 0"), Command::Set(SetArg::TopK(0)));
        assert_eq!(ok("/set top_k 40"), Command::Set(SetArg::TopK(40)));
        assert_eq!(ok("/set seed 7"), Command::Set(SetArg::Seed(Some(7))));
        assert_eq!(ok("/set seed random"), Command::Set(SetArg::Seed(None)));
        assert_eq!(ok("/set seed none"), Command::Set(SetArg::Seed(None)));
        assert_eq!(
            ok("/set max_tokens 100"),
            Command::Set(SetArg::MaxTokens(100))
        );
    }

    #[test]
    fn set_rejects_missing_bad_and_out_of_range_values() {
        assert_err(
            "/set",
            "/set needs KEY VALUE (keys: temperature, top_p, top_k, seed, max_tokens)",
        );
        assert_err(
            "/set temperature",
            "/set needs a temperature between 0 and 5",
        );
        assert_err(
            "/set temperature hot",
            "`hot` is not a temperature between 0 and 5",
        );
        assert_err("/set temperature 9", "temperature must be 0..=5 (got 9)");
        assert_err("/set temperature nan", "must be 0..=5");
        assert_err("/set temperature inf", "must be 0..=5");
        assert_err("/set top_p 1.5", "top_p must be 0..=1");
        assert_err("/set top_k -1", "is not a whole number for top_k");
        assert_err("/set seed abc", "seed, or `random`");
        assert_err("/set max_tokens 0", "max_tokens must be at least 1");
        assert_err("/set temperature 1 2", "/set takes one KEY and one VALUE");
    }

    #[test]
    fn set_unknown_key_lists_valid_keys() {
        assert_err(
            "/set colour red",
            "unknown setting `colour`; valid: temperature, top_p, top_k, seed, max_tokens",
        );
    }

    #[test]
    fn help_and_quit_parse_with_aliases() {
        assert_eq!(ok("/help"), Command::Help);
        assert_eq!(ok("/?"), Command::Help);
        assert_eq!(ok("/quit"), Command::Quit);
        assert_eq!(ok("/exit"), Command::Quit);
        assert_eq!(ok("/q"), Command::Quit);
        assert_err("/help me", "/help takes no arguments");
        assert_err("/exit now", "/quit takes no arguments");
    }

    #[test]
    fn unknown_commands_suggest_the_closest() {
        assert_err(
            "/budgte 5",
            "unknown command `/budgte`; did you mean /budget?",
        );
        assert_err("/sesions", "did you mean /sessions?");
        assert_err("/expo", "did you mean /export?");
        assert_err("/xyzzy", "unknown command `/xyzzy`; /help lists them");
        assert_err("/", "unknown command `/`; /help lists them");
    }

    #[test]
    fn text_without_slash_is_not_a_command() {
        assert_eq!(parse("hello"), Err(CommandError::NotACommand));
    }

    #[test]
    fn errors_echo_long_or_multiline_input_on_one_line() {
        let e = err(&format!("/save {}\nmore", "x".repeat(100)));
        assert!(e.contains('…'), "{e}");
        assert!(e.chars().count() < 200, "{e}");
    }

    #[test]
    fn every_command_has_one_spec_named_like_it() {
        let samples = [
            "/think",
            "/no_think",
            "/budget 1",
            "/system x",
            "/clear",
            "/retry",
            "/undo",
            "/save",
            "/load a",
            "/sessions",
            "/export a.md",
            "/model",
            "/tools on",
            "/tool_choice auto",
            "/approval ask",
            "/set top_k 1",
            "/copy",
            "/wrap",
            "/help",
            "/quit",
        ];
        assert_eq!(samples.len(), specs().len());
        for s in samples {
            let name = ok(s).name();
            assert_eq!(
                specs().iter().filter(|sp| sp.name == name).count(),
                1,
                "{name}"
            );
        }
    }

    #[test]
    fn completion_lists_commands_by_prefix_in_spec_order() {
        let names = |p: &str| complete(p).iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names("s"), ["system", "save", "sessions", "set"]);
        assert_eq!(names("/se"), ["sessions", "set"]);
        assert_eq!(names("Th"), ["think"]);
        assert_eq!(complete("").len(), specs().len());
        assert!(complete("zz").is_empty());
        assert!(complete("set t").is_empty());
    }
}
