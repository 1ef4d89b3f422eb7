//! User tools: commands the user offers the model in `config.toml`.
//!
//! ```toml
//! [tools.grep_todo]
//! command = "grep -rn -e {pattern} src"
//! description = "Find a pattern under src/"
//! parameters = { type = "object", properties = { pattern = { type = "string" } }, required = ["pattern"] }
//! read_only = true   # default false: it asks before each run
//! ```
//!
//! Invariants:
//! - `command` is split once, when the config is read, into an argv by POSIX shell word
//!   rules (the `shlex` crate): blanks separate words; `'…'` keeps everything literally;
//!   `"…"` keeps blanks and takes `\"`, `\\`, `` \` `` and `\$` as escapes; a backslash
//!   outside quotes escapes the next character. Nothing else a shell does happens: no
//!   variables, `~`, globs, pipes or redirections, and a word that is only a shell operator
//!   (`|`, `>`, `&&`, `;`, …) is refused with a line saying so.
//! - The argv is run directly (`execvp` of its first word), never through `sh -c`, in the
//!   workspace, with the same limits and sandbox as `shell` (`tools::shell::run_command`).
//! - `{name}` stands for argument `name` inside one argv word and stays inside it: a value
//!   with blanks, quotes or `;` is still one word. `{{` and `}}` are literal braces.
//!   A string is put in as it is; a number or boolean as its JSON text; an array or an
//!   object as JSON. A word that is only `{name}` is left out when the optional argument is
//!   not given; elsewhere an absent argument is the empty string. The first word (the
//!   program) cannot hold a placeholder, and every placeholder must name a property of
//!   `parameters`.
//! - Arguments are checked against `parameters` (`agent::schema`) before anything runs.
//! - `read_only = true` is the user's word that the command changes nothing; without it the
//!   tool is `Effect::Executes` and asks in `ask` mode.

use std::collections::BTreeMap;
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tools::shell::run_command;
use super::tools::BUILTIN_NAMES;
use super::{schema, Effect, Tool, ToolContext, ToolError, ToolOutput};
use crate::protocol::ToolSpec;

/// One `[tools.NAME]` table of config.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserToolConfig {
    pub command: String,
    #[serde(default)]
    pub description: String,
    /// A JSON schema of the arguments object (as a TOML table).
    #[serde(default = "empty_schema")]
    pub parameters: Value,
    /// The user vouches that the command changes nothing: it runs without asking.
    #[serde(default)]
    pub read_only: bool,
}

fn empty_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Why a `[tools.NAME]` table cannot be used: `field` is the key within it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tools.{tool}.{field}: {message}")]
pub struct UserToolError {
    pub tool: String,
    pub field: &'static str,
    pub message: String,
}

/// A piece of one argv word.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Arg(String),
}

/// A user tool, ready to run.
#[derive(Debug)]
pub struct UserTool {
    spec: ToolSpec,
    read_only: bool,
    program: String,
    words: Vec<Vec<Piece>>,
}

/// Every `[tools.NAME]` table as a tool, in name order; the first bad one is an error.
pub fn from_config(
    tables: &BTreeMap<String, UserToolConfig>,
) -> Result<Vec<UserTool>, UserToolError> {
    tables
        .iter()
        .map(|(name, cfg)| UserTool::new(name, cfg))
        .collect()
}

impl UserTool {
    pub fn new(name: &str, cfg: &UserToolConfig) -> Result<UserTool, UserToolError> {
        let err = |field: &'static str, message: String| UserToolError {
            tool: name.to_string(),
            field,
            message,
        };
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(err(
                "name",
                "a tool name is 1 to 64 letters, digits, `_` or `-`".into(),
            ));
        }
        if BUILTIN_NAMES.contains(&name) {
            return Err(err("name", format!("`{name}` is a built-in tool's name")));
        }
        schema::check_schema(&cfg.parameters).map_err(|m| err("parameters", m))?;
        let props: Vec<String> = cfg
            .parameters
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let argv = shlex::split(&cfg.command).ok_or_else(|| {
            err(
                "command",
                "unbalanced quotes or a trailing backslash".into(),
            )
        })?;
        let Some((program, rest)) = argv.split_first() else {
            return Err(err("command", "empty command".into()));
        };
        for w in &argv {
            if matches!(
                w.as_str(),
                "|" | "||" | "&" | "&&" | ";" | ">" | ">>" | "<" | "<<" | "2>" | "2>&1"
            ) {
                return Err(err(
                    "command",
                    format!("`{w}` is a shell operator, and user tools run without a shell (it would reach the program as an argument); write a script and name it here"),
                ));
            }
        }
        let first = parse_word(program).map_err(|m| err("command", m))?;
        let program = match first.as_slice() {
            [] => {
                return Err(err(
                    "command",
                    "the program (the first word) is empty".into(),
                ))
            }
            [Piece::Text(t)] => t.clone(),
            _ => {
                return Err(err(
                    "command",
                    "the program (the first word) cannot hold a {placeholder}".into(),
                ))
            }
        };
        let mut words = Vec::new();
        for w in rest {
            let pieces = parse_word(w).map_err(|m| err("command", m))?;
            for p in &pieces {
                if let Piece::Arg(a) = p {
                    if !props.contains(a) {
                        return Err(err(
                            "command",
                            format!("{{{a}}} names no property of `parameters`"),
                        ));
                    }
                }
            }
            words.push(pieces);
        }
        Ok(UserTool {
            spec: ToolSpec {
                name: name.to_string(),
                description: if cfg.description.is_empty() {
                    format!("Runs `{}`", cfg.command)
                } else {
                    cfg.description.clone()
                },
                parameters: cfg.parameters.clone(),
            },
            read_only: cfg.read_only,
            program,
            words,
        })
    }

    /// The argv for `args` (checked against the schema first).
    pub fn argv(&self, args: &Value) -> Result<Vec<String>, ToolError> {
        schema::check(args, &self.spec.parameters).map_err(|message| ToolError::BadArguments {
            tool: self.spec.name.clone(),
            message,
        })?;
        let mut argv = vec![self.program.clone()];
        for word in &self.words {
            if let [Piece::Arg(a)] = word.as_slice() {
                if args.get(a).is_none_or(Value::is_null) {
                    continue;
                }
            }
            let mut s = String::new();
            for p in word {
                match p {
                    Piece::Text(t) => s.push_str(t),
                    Piece::Arg(a) => match args.get(a) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(v)) => s.push_str(v),
                        Some(v) => s.push_str(&v.to_string()),
                    },
                }
            }
            if s.contains('\0') {
                return Err(ToolError::BadArguments {
                    tool: self.spec.name.clone(),
                    message: "an argument cannot contain a NUL byte".into(),
                });
            }
            argv.push(s);
        }
        Ok(argv)
    }
}

/// `{name}` placeholders and `{{`/`}}` escapes in one word.
fn parse_word(w: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = w.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "`{w}`: a `{{` without its `}}` (write `{{{{` for a brace)"
                            ))
                        }
                    }
                }
                if name.is_empty() {
                    return Err(format!("`{w}`: an empty {{}}"));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Arg(name));
            }
            '}' => {
                return Err(format!(
                    "`{w}`: a `}}` without its `{{` (write `}}}}` for a brace)"
                ))
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl Tool for UserTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effect(&self) -> Effect {
        if self.read_only {
            Effect::ReadOnly
        } else {
            Effect::Executes
        }
    }

    fn runs_in_sandbox(&self) -> bool {
        true
    }

    fn check(&self, args: &Value, _ctx: &ToolContext) -> Result<(), ToolError> {
        self.argv(args).map(|_| ())
    }

    fn preview(&self, args: &Value, _ctx: &ToolContext) -> Option<String> {
        let argv = self.argv(args).ok()?;
        let shown: Vec<String> = argv
            .iter()
            .map(|a| {
                shlex::try_quote(a)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| format!("{a:?}"))
            })
            .collect();
        Some(format!("$ {}", shown.join(" ")))
    }

    fn run(&self, args: &Value, ctx: &ToolContext) -> Result<ToolOutput, ToolError> {
        let argv = self.argv(args)?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        run_command(&self.spec.name, cmd, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(command: &str) -> Result<UserTool, UserToolError> {
        UserTool::new(
            "t",
            &UserToolConfig {
                command: command.into(),
                description: String::new(),
                parameters: json!({"type": "object", "properties": {"a": {"type": "string"}, "n": {"type": "integer"}}}),
                read_only: false,
            },
        )
    }

    #[test]
    fn placeholders_stay_inside_their_word() {
        let t = tool("echo -n 'x y' --a={a} {a} {n}").unwrap();
        let argv = t
            .argv(&json!({"a": "it's \"one\"; rm -rf /", "n": 3}))
            .unwrap();
        assert_eq!(
            argv,
            [
                "echo",
                "-n",
                "x y",
                "--a=it's \"one\"; rm -rf /",
                "it's \"one\"; rm -rf /",
                "3"
            ]
        );
        // An absent optional argument drops a word that is only its placeholder.
        assert_eq!(t.argv(&json!({})).unwrap(), ["echo", "-n", "x y", "--a="]);
    }

    #[test]
    fn braces_escape_and_bad_commands_are_refused() {
        let t = tool("printf {{}}{a}").unwrap();
        assert_eq!(t.argv(&json!({"a": "z"})).unwrap(), ["printf", "{}z"]);
        for (cmd, want) in [
            ("", "empty command"),
            ("'' x", "is empty"),
            ("echo 'open", "unbalanced quotes"),
            ("{a} x", "program"),
            ("echo {b}", "{b} names no property"),
            ("echo {a", "without its"),
            ("grep x | head", "shell operator"),
        ] {
            let e = tool(cmd).unwrap_err();
            assert_eq!(
                e.field,
                if want == "program" {
                    "command"
                } else {
                    e.field
                }
            );
            assert!(e.to_string().contains(want), "{cmd}: {e}");
            assert!(e.to_string().starts_with("tools.t."), "{e}");
        }
    }
}
