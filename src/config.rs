//! The user's settings (`config.toml`) and where nemo keeps its files.
//!
//! Layering, lowest to highest; each layer only replaces the keys it sets:
//! 1. built-in defaults (every key `None`; the consumer picks its own default),
//! 2. `config.toml` in the platform config dir ([`Config::load`]),
//! 3. `NEMO_<KEY>` environment variables, e.g. `NEMO_TEMPERATURE=0.6`
//!    ([`Config::apply_env`]): the one place nemo reads them (clap reads none),
//! 4. command-line flags, which the CLI collects into a `Config` and lays on top with
//!    [`Config::merge_over`] (`cli::settings`, the one path of `run`, `chat`, `bench` and
//!    `debug`).
//!
//! One exception, on purpose: `nemo run` never takes `approval` from this file or the
//! environment (`agent::policy::run_mode` reads its flag alone), so a file cannot turn a
//! script into one that runs commands.
//!
//! Paths: `config.toml` lives in `ProjectDirs::from("", "", "nemo").config_dir()`,
//! history and sessions in its `data_dir()`. `NEMO_CONFIG` (a file path) and
//! `NEMO_DATA_DIR` (a directory) override them ([`Paths::discover`]).
//!
//! Invariants:
//! - nemo never writes `config.toml`; a file it cannot read is reported, never replaced.
//! - A missing config file is the same as an empty one; a corrupt one (bad TOML, unknown
//!   key, wrong type, bad `budget`, a sampling value outside its range) is an error naming
//!   the file, the line and the key.
//! - Budgets are `protocol::Budget` and sampling ranges are `SamplingParams::validate`'s:
//!   the same as the flags, `/budget`, `/set` and session files.
//! - A bad `NEMO_*` value is an error naming the variable; an empty one counts as unset.
//! - Every key is listed once, in `for_each_key!`, so the file, the environment and the
//!   merge cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::agent::policy::ApprovalMode;
use crate::agent::user_tools::{UserTool, UserToolConfig};
use crate::agent::Sandbox;
use crate::backend::DType;
use crate::protocol::{Budget, SamplingParams};

/// Settings a user can fix in `config.toml`, the environment or flags. `None` = not set
/// at this layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model: a folder, a `.gguf` file, a repo id or an alias.
    pub model: Option<PathBuf>,
    /// Theme name.
    pub theme: Option<String>,
    /// Reasoning on or off.
    pub think: Option<bool>,
    /// Thinking budget: `"off"`, `"unlimited"` or a token count (`Budget`'s text).
    pub budget: Option<Budget>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    pub kv_cache_dtype: Option<KvCacheDtype>,
    pub mamba_ssm_cache_dtype: Option<SsmCacheDtype>,
    /// Where the model runs: `"auto"`, `"cpu"` or `"cuda"`.
    pub device: Option<Device>,
    pub threads: Option<usize>,
    pub show_reasoning: Option<bool>,
    /// Tool approvals in `nemo chat`: `"ask"`, `"read-only"` or `"auto"` (`nemo run` never
    /// reads it: it takes `auto` only from its own flag).
    pub approval: Option<ApprovalMode>,
    /// How commands are confined: `"landlock"` or `"off"`.
    pub sandbox: Option<Sandbox>,
    /// User tools: `[tools.NAME]` tables (`agent::user_tools`). Not a flat key: no
    /// environment variable or flag sets them, and they are checked when the file is read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, UserToolConfig>,
    /// `[mcp.servers.NAME]`: MCP servers whose tools the model is offered (`agent::mcp`).
    /// Only from the file: no environment variable or flag sets it.
    pub mcp: McpConfig,
}

/// The `[mcp]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// By the server's name, which prefixes its tools' names (`NAME.tool`).
    pub servers: BTreeMap<String, McpServerConfig>,
}

/// `[mcp.servers.NAME]`: a server nemo starts as a child process and speaks MCP to over its
/// stdin and stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The program, found on `PATH` unless it is a path.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Set for the server on top of nemo's own environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The server's tools (by the server's own names) that run without asking. Every other
    /// tool asks first; what the server says about its tools (`readOnlyHint`) is not trusted.
    #[serde(default)]
    pub read_only_tools: Vec<String>,
    /// Seconds the server has to start and list its tools (default 30).
    #[serde(default)]
    pub startup_timeout_sec: Option<u64>,
    /// Seconds a call of one of its tools may take (default: the tool timeout every tool gets).
    #[serde(default)]
    pub tool_timeout_sec: Option<u64>,
}

impl McpConfig {
    /// The first bad server entry: the path of its key (`mcp`, `servers`, NAME[, field]) and
    /// what is wrong. A server's name becomes the prefix of its tools' names, so it is
    /// limited to what every function-calling format accepts and has no dot (the dot ends it
    /// in `NAME.tool`).
    pub fn validate(&self) -> Result<(), (Vec<String>, String)> {
        for (name, server) in &self.servers {
            let key = |field: Option<&str>| {
                ["mcp", "servers", name.as_str()]
                    .into_iter()
                    .chain(field)
                    .map(String::from)
                    .collect::<Vec<_>>()
            };
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err((
                    key(None),
                    "a server name is 1 to 64 of the characters A-Z a-z 0-9 _ -".into(),
                ));
            }
            if server.command.trim().is_empty() {
                return Err((key(Some("command")), "is empty".into()));
            }
            for (field, value) in [
                ("startup_timeout_sec", server.startup_timeout_sec),
                ("tool_timeout_sec", server.tool_timeout_sec),
            ] {
                if value == Some(0) {
                    return Err((key(Some(field)), "must be at least 1".into()));
                }
            }
        }
        Ok(())
    }
}

/// `--kv-cache-dtype` / `kv_cache_dtype`: the attention KV cache's dtype, or `auto`,
/// which follows the weights ([`KvCacheDtype::resolve`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheDtype {
    #[default]
    Auto,
    #[value(alias = "float32")]
    #[serde(alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    #[serde(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    #[serde(alias = "float16")]
    F16,
    #[value(name = "fp8_e4m3", alias = "fp8")]
    #[serde(alias = "fp8")]
    Fp8E4m3,
    #[value(name = "fp8_e5m2")]
    Fp8E5m2,
}

impl KvCacheDtype {
    /// The dtype for weights of `weights`: `auto` is bf16 for FP8 weights, f16 for
    /// block-quantized GGUF weights (llama.cpp's default KV type), else the weights' own.
    pub fn resolve(self, weights: DType) -> DType {
        match self {
            KvCacheDtype::Auto => match weights {
                DType::F8E4M3 | DType::F8E5M2 => DType::BF16,
                d if d.is_quantized() => DType::F16,
                d => d,
            },
            KvCacheDtype::F32 => DType::F32,
            KvCacheDtype::Bf16 => DType::BF16,
            KvCacheDtype::F16 => DType::F16,
            KvCacheDtype::Fp8E4m3 => DType::F8E4M3,
            KvCacheDtype::Fp8E5m2 => DType::F8E5M2,
        }
    }
}

/// `--mamba-ssm-cache-dtype` / `mamba_ssm_cache_dtype`: the SSM state's dtype (vLLM's
/// `mamba_ssm_cache_dtype`); the conv window is always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SsmCacheDtype {
    #[default]
    #[value(alias = "float32")]
    #[serde(alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    #[serde(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    #[serde(alias = "float16")]
    F16,
}

impl SsmCacheDtype {
    pub fn dtype(self) -> DType {
        match self {
            SsmCacheDtype::F32 => DType::F32,
            SsmCacheDtype::Bf16 => DType::BF16,
            SsmCacheDtype::F16 => DType::F16,
        }
    }
}

/// `--device` / `device`: where the model runs. `auto` takes the GPU when a driver, a GPU,
/// kernels for it and a supported model are all there, else the CPU (`cli/device.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The flag's spelling of a value (`fp8_e4m3`), for the choices above.
macro_rules! value_enum_text {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match clap::ValueEnum::to_possible_value(self) {
                    Some(v) => f.write_str(v.get_name()),
                    None => write!(f, "{self:?}"),
                }
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                <$t as clap::ValueEnum>::from_str(s, false).map_err(|_| {
                    let names: Vec<String> = <$t as clap::ValueEnum>::value_variants()
                        .iter()
                        .filter_map(clap::ValueEnum::to_possible_value)
                        .map(|v| v.get_name().to_string())
                        .collect();
                    format!("`{s}` is not one of {}", names.join(", "))
                })
            }
        }
    };
}
value_enum_text!(KvCacheDtype);
value_enum_text!(SsmCacheDtype);
value_enum_text!(Device);

/// Calls `$m!(field, "ENV_SUFFIX", kind)` for every key; `kind` picks the env parser.
macro_rules! for_each_key {
    ($m:ident) => {
        $m!(model, "MODEL", path);
        $m!(theme, "THEME", string);
        $m!(think, "THINK", bool);
        $m!(budget, "BUDGET", budget);
        $m!(temperature, "TEMPERATURE", sampling);
        $m!(top_p, "TOP_P", sampling);
        $m!(top_k, "TOP_K", sampling);
        $m!(min_p, "MIN_P", sampling);
        $m!(seed, "SEED", number);
        $m!(max_tokens, "MAX_TOKENS", number);
        $m!(kv_cache_dtype, "KV_CACHE_DTYPE", parsed);
        $m!(mamba_ssm_cache_dtype, "MAMBA_SSM_CACHE_DTYPE", parsed);
        $m!(device, "DEVICE", parsed);
        $m!(threads, "THREADS", number);
        $m!(show_reasoning, "SHOW_REASONING", bool);
        $m!(approval, "APPROVAL", parsed);
        $m!(sandbox, "SANDBOX", parsed);
    };
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("no home directory found; set NEMO_CONFIG and NEMO_DATA_DIR")]
    NoHome,
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}{}{}: {message}",
        path.display(),
        line.map(|l| format!(", line {l}")).unwrap_or_default(),
        key.as_ref().map(|k| format!(", key `{k}`")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        /// 1-based.
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
}

/// Where nemo reads and writes its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
    /// `<data_dir>/history`: the chat input history.
    pub history_file: PathBuf,
    /// `<data_dir>/sessions`: saved chat sessions.
    pub sessions_dir: PathBuf,
}

impl Paths {
    /// The platform locations, with `NEMO_CONFIG` and `NEMO_DATA_DIR` taking precedence.
    pub fn discover() -> Result<Paths, ConfigError> {
        Self::discover_with(|k| std::env::var(k).ok())
    }

    /// [`Paths::discover`] with the environment passed in (for tests). The platform dirs
    /// are only needed for what the overrides leave open.
    pub fn discover_with(vars: impl Fn(&str) -> Option<String>) -> Result<Paths, ConfigError> {
        let var = |k: &str| vars(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (config_override, data_override) = (var("NEMO_CONFIG"), var("NEMO_DATA_DIR"));
        let dirs = if config_override.is_none() || data_override.is_none() {
            Some(directories::ProjectDirs::from("", "", "nemo").ok_or(ConfigError::NoHome)?)
        } else {
            None
        };
        let config_file = match (config_override, &dirs) {
            (Some(p), _) => p,
            (None, Some(d)) => d.config_dir().join("config.toml"),
            (None, None) => return Err(ConfigError::NoHome),
        };
        let data_dir = match (data_override, &dirs) {
            (Some(p), _) => p,
            (None, Some(d)) => d.data_dir().to_path_buf(),
            (None, None) => return Err(ConfigError::NoHome),
        };
        Ok(Paths {
            config_file,
            history_file: data_dir.join("history"),
            sessions_dir: data_dir.join("sessions"),
            data_dir,
        })
    }
}

impl Config {
    /// Reads `path`; a missing file gives the default. Never writes.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let key = unknown_key(e.message()).or_else(|| line.and_then(|l| key_on_line(text, l)));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Err(e) = config.sampling_over(SamplingParams::default()).validate() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                line: line_of_key(text, e.field),
                key: Some(e.field.into()),
                message: e.to_string(),
            });
        }
        for (name, table) in &config.tools {
            if let Err(e) = UserTool::new(name, table) {
                let key = format!("tools.{name}.{}", e.field);
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    line: line_of_table(text, name, e.field),
                    key: Some(key),
                    message: e.message,
                });
            }
        }
        if let Err((key, message)) = config.mcp.validate() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                line: line_of_table_key(text, &key),
                key: Some(dotted_key(&key)),
                message,
            });
        }
        Ok(config)
    }

    /// Overrides each key from `NEMO_<KEY>` when `vars` has a non-empty value for it.
    pub fn apply_env(&mut self, vars: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        macro_rules! apply {
            ($field:ident, $suffix:literal, $kind:ident) => {
                let var = concat!("NEMO_", $suffix);
                if let Some(value) = vars(var).filter(|v| !v.trim().is_empty()) {
                    self.$field = Some(apply!(@parse $kind, value.trim()).map_err(|message| {
                        ConfigError::Env {
                            var: var.to_string(),
                            value: value.clone(),
                            message,
                        }
                    })?);
                }
            };
            (@parse string, $v:expr) => { Ok::<String, String>($v.to_string()) };
            (@parse path, $v:expr) => { Ok::<PathBuf, String>(PathBuf::from($v)) };
            (@parse bool, $v:expr) => { parse_bool($v) };
            (@parse budget, $v:expr) => { $v.parse::<Budget>().map_err(|e| e.to_string()) };
            (@parse number, $v:expr) => { $v.parse().map_err(|e| format!("not a valid number ({e})")) };
            (@parse sampling, $v:expr) => { $v.parse().map_err(|e| format!("not a valid number ({e})")) };
            (@parse parsed, $v:expr) => { $v.parse() };
        }
        for_each_key!(apply);
        // Ranges are checked on the values as they now stand, so the error names the
        // variable that brought the bad one in.
        if let Err(e) = self.sampling_over(SamplingParams::default()).validate() {
            let var = format!("NEMO_{}", e.field.to_ascii_uppercase());
            if let Some(value) = vars(&var).filter(|v| !v.trim().is_empty()) {
                return Err(ConfigError::Env {
                    var,
                    value,
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// `base` with the sampling keys this config sets laid over it.
    pub fn sampling_over(&self, mut base: SamplingParams) -> SamplingParams {
        if let Some(v) = self.temperature {
            base.temperature = v;
        }
        if let Some(v) = self.top_p {
            base.top_p = v;
        }
        if let Some(v) = self.top_k {
            base.top_k = v;
        }
        if let Some(v) = self.min_p {
            base.min_p = v;
        }
        if let Some(v) = self.seed {
            base.seed = Some(v);
        }
        base
    }

    /// The thinking budget these settings ask for: `think = false` is `Off`; otherwise
    /// `budget`, when set.
    pub fn thinking_budget(&self) -> Option<Budget> {
        match self.think {
            Some(false) => Some(Budget::Off),
            _ => self.budget,
        }
    }

    /// Lays `other` over `self`: every key `other` sets wins.
    pub fn merge_over(&mut self, other: &Config) {
        macro_rules! merge {
            ($field:ident, $suffix:literal, $kind:ident) => {
                if other.$field.is_some() {
                    self.$field = other.$field.clone();
                }
            };
        }
        for_each_key!(merge);
        // User tools come from the file only; another layer's tables add to them.
        for (name, table) in &other.tools {
            self.tools.insert(name.clone(), table.clone());
        }
        if other.mcp != McpConfig::default() {
            self.mcp = other.mcp.clone();
        }
    }

    /// The names of the environment variables [`Config::apply_env`] reads.
    pub fn env_vars() -> Vec<&'static str> {
        let mut names = Vec::new();
        macro_rules! name {
            ($field:ident, $suffix:literal, $kind:ident) => {
                names.push(concat!("NEMO_", $suffix));
            };
        }
        for_each_key!(name);
        names
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true/false, 1/0, yes/no or on/off".into()),
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key named by serde's "unknown field `x`, expected ..." message.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// The bare key assigned on 1-based `line`, if the line is `key = ...`.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let (key, _) = text.lines().nth(line.checked_sub(1)?)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(char::is_whitespace)).then(|| key.to_string())
}

/// The line of `field` inside `[tools.NAME]` (or of the table's header when the field is
/// not written there).
fn line_of_table(text: &str, name: &str, field: &str) -> Option<usize> {
    let header = |l: &str| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(|h| h.trim().replace([' ', '"'], ""))
    };
    let want = format!("tools.{name}");
    let start = text
        .lines()
        .position(|l| header(l).as_deref() == Some(want.as_str()))?;
    let in_table = text
        .lines()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| header(l).is_none());
    for (i, l) in in_table {
        if l.split_once('=').is_some_and(|(k, _)| k.trim() == field) {
            return Some(i + 1);
        }
    }
    Some(start + 1)
}

fn line_of_key(text: &str, key: &str) -> Option<usize> {
    (1..=text.lines().count()).find(|&l| key_on_line(text, l).as_deref() == Some(key))
}

/// `parts` as a TOML dotted key, each part quoted unless it is a bare key.
fn dotted_key(parts: &[String]) -> String {
    let bare = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    parts
        .iter()
        .map(|p| if bare(p) { p.clone() } else { format!("{p:?}") })
        .collect::<Vec<_>>()
        .join(".")
}

/// The parts of a TOML dotted key as written in a table header: split at dots outside
/// quotes, each part trimmed and unquoted.
fn key_parts(key: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quote = None;
    for c in key.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => parts.push(String::new()),
            (None, c) if c.is_whitespace() => {}
            (_, c) => parts.last_mut().into_iter().for_each(|p| p.push(c)),
        }
    }
    parts
}

/// 1-based line of the key at `path` (table names, then maybe a field): the `field = ...`
/// line under the table's `[...]` header, else the header itself.
fn line_of_table_key(text: &str, path: &[String]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let header_of = |table: &[String]| {
        lines.iter().position(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .is_some_and(|t| key_parts(t) == table)
        })
    };
    if let Some(at) = header_of(path) {
        return Some(at + 1);
    }
    let (field, table) = path.split_last()?;
    let at = header_of(table)?;
    let field_at = lines[at + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['))
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| key_parts(k) == [field.clone()])
        });
    Some(field_at.map_or(at, |i| at + 1 + i) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn missing_config_file_gives_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&dir.path().join("nope.toml")).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn config_file_sets_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = r#"
model = "nemotron-nano"
theme = "dark"
think = false
budget = "512"
temperature = 0.6
top_p = 0.95
top_k = 20
min_p = 0.05
seed = 7
max_tokens = 4096
kv_cache_dtype = "bf16"
mamba_ssm_cache_dtype = "f32"
threads = 8
show_reasoning = true
"#;
        std::fs::write(&path, text).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.model, Some(PathBuf::from("nemotron-nano")));
        assert_eq!(c.think, Some(false));
        assert_eq!(c.budget, Some(Budget::tokens(512)));
        assert_eq!(c.temperature, Some(0.6));
        assert_eq!(c.top_k, Some(20));
        assert_eq!(c.seed, Some(7));
        assert_eq!(c.threads, Some(8));
        assert_eq!(c.show_reasoning, Some(true));
        assert_eq!(c.mamba_ssm_cache_dtype, Some(SsmCacheDtype::F32));
    }

    #[test]
    fn unknown_key_is_an_error_naming_file_line_and_key_and_the_file_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "model = \"m\"\n\ntemprature = 0.5\n";
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path).unwrap_err();
        match &err {
            ConfigError::Parse { line, key, .. } => {
                assert_eq!(*line, Some(3));
                assert_eq!(key.as_deref(), Some("temprature"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains("config.toml"), "{shown}");
        assert!(shown.contains("line 3"), "{shown}");
        assert!(shown.contains("temprature"), "{shown}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn wrong_type_is_an_error_naming_line_and_key() {
        let err =
            Config::parse("top_k = 4\ntemperature = \"hot\"\n", Path::new("c.toml")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("line 2"), "{shown}");
        assert!(shown.contains("`temperature`"), "{shown}");
    }

    #[test]
    fn bad_toml_is_an_error_with_a_line() {
        let err = Config::parse("model = \"m\"\nthink = \n", Path::new("c.toml")).unwrap_err();
        match err {
            ConfigError::Parse { line, .. } => assert_eq!(line, Some(2)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_budget_in_file_names_the_key_and_line() {
        let err =
            Config::parse("think = true\nbudget = \"lots\"\n", Path::new("c.toml")).unwrap_err();
        match err {
            ConfigError::Parse { line, key, .. } => {
                assert_eq!(line, Some(2));
                assert_eq!(key.as_deref(), Some("budget"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn env_overrides_file_values_and_leaves_others() {
        let mut c = Config {
            model: Some("file-model".into()),
            temperature: Some(0.1),
            top_k: Some(5),
            ..Config::default()
        };
        c.apply_env(env(&[
            ("NEMO_TEMPERATURE", "0.7"),
            ("NEMO_THINK", "off"),
            ("NEMO_BUDGET", "unlimited"),
            ("NEMO_MAMBA_SSM_CACHE_DTYPE", "bf16"),
            ("NEMO_MODEL", ""),
        ]))
        .unwrap();
        assert_eq!(c.temperature, Some(0.7));
        assert_eq!(c.think, Some(false));
        assert_eq!(c.budget, Some(Budget::Unlimited));
        assert_eq!(c.mamba_ssm_cache_dtype, Some(SsmCacheDtype::Bf16));
        assert_eq!(
            c.model,
            Some(PathBuf::from("file-model")),
            "empty var counts as unset"
        );
        assert_eq!(c.top_k, Some(5));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        for (var, value) in [
            ("NEMO_TOP_K", "-3"),
            ("NEMO_THINK", "maybe"),
            ("NEMO_BUDGET", "lots"),
            ("NEMO_TEMPERATURE", "warm"),
        ] {
            let err = Config::default()
                .apply_env(env(&[(var, value)]))
                .unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn env_var_names_cover_every_key() {
        let names = Config::env_vars();
        assert_eq!(names.len(), 17);
        assert!(names.contains(&"NEMO_APPROVAL"));
        assert!(names.contains(&"NEMO_DEVICE"));
        assert!(names.contains(&"NEMO_SANDBOX"));
        assert!(names.contains(&"NEMO_KV_CACHE_DTYPE"));
        assert!(names.contains(&"NEMO_SHOW_REASONING"));
    }

    #[test]
    fn merge_over_lets_set_keys_win() {
        let mut base = Config {
            model: Some("a".into()),
            seed: Some(1),
            think: Some(true),
            ..Config::default()
        };
        let flags = Config {
            seed: Some(2),
            threads: Some(4),
            ..Config::default()
        };
        base.merge_over(&flags);
        assert_eq!(base.model, Some(PathBuf::from("a")));
        assert_eq!(base.seed, Some(2));
        assert_eq!(base.threads, Some(4));
        assert_eq!(base.think, Some(true));
    }

    #[test]
    fn budget_and_think_give_one_budget() {
        let c = Config::parse("budget = 256\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.thinking_budget(), Some(Budget::tokens(256)));
        let c = Config::parse("budget = \"off\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.thinking_budget(), Some(Budget::Off));
        let c = Config::parse("think = false\nbudget = 256\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.thinking_budget(), Some(Budget::Off));
        let c = Config::parse("think = true\n", Path::new("c.toml")).unwrap();
        assert_eq!(c.thinking_budget(), None);
        let err = Config::parse("budget = 2000000\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("`budget`"), "{err}");
    }

    #[test]
    fn sampling_out_of_range_in_file_or_env_is_refused_by_name() {
        let err = Config::parse("top_k = 4\ntemperature = -5\n", Path::new("c.toml")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("line 2"), "{shown}");
        assert!(shown.contains("`temperature`"), "{shown}");
        assert!(
            shown.contains("temperature: -5 is outside 0..=5"),
            "{shown}"
        );
        let mut c = Config::default();
        let err = c
            .apply_env(env(&[("NEMO_TOP_P", "1.5")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("NEMO_TOP_P"), "{err}");
        assert!(err.contains("top_p: 1.5 is outside 0..=1"), "{err}");
        let mut c = Config::default();
        c.apply_env(env(&[("NEMO_TEMPERATURE", "0.7"), ("NEMO_BUDGET", "off")]))
            .unwrap();
        assert_eq!(c.temperature, Some(0.7));
        assert_eq!(c.budget, Some(Budget::Off));
    }

    #[test]
    fn approval_sandbox_and_user_tools_are_read_from_the_file() {
        let text = r#"
approval = "read-only"
sandbox = "off"

[tools.todo]
command = "grep -rn -e {pattern} src"
description = "Find a pattern under src"
read_only = true
parameters = { type = "object", properties = { pattern = { type = "string" } }, required = ["pattern"] }

[tools.fmt]
command = "cargo fmt"
"#;
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.approval, Some(ApprovalMode::ReadOnly));
        assert_eq!(c.sandbox, Some(Sandbox::Off));
        assert_eq!(c.tools.len(), 2);
        let todo = &c.tools["todo"];
        assert_eq!(todo.command, "grep -rn -e {pattern} src");
        assert!(todo.read_only);
        assert_eq!(todo.parameters["required"][0], "pattern");
        assert!(!c.tools["fmt"].read_only, "read_only defaults to false");
    }

    #[test]
    fn bad_approval_sandbox_or_tool_table_names_line_and_key() {
        let err = Config::parse("approval = \"yes\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("`approval`"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = Config::parse("sandbox = \"docker\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("`sandbox`"), "{err}");
        let text = "model = \"m\"\n[tools.t]\ndescription = \"x\"\ncommand = \"echo {nope}\"\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("`tools.t.command`"), "{err}");
        assert!(err.contains("{nope} names no property"), "{err}");
        let err = Config::parse("[tools.shell]\ncommand = \"ls\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("built-in"), "{err}");
        let err = Config::parse(
            "[tools.t]\ncommand = \"ls\"\nreadonly = true\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("readonly"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn approval_and_sandbox_come_from_the_environment_too() {
        let mut c = Config::default();
        c.apply_env(env(&[("NEMO_APPROVAL", "auto"), ("NEMO_SANDBOX", "off")]))
            .unwrap();
        assert_eq!(c.approval, Some(ApprovalMode::Auto));
        assert_eq!(c.sandbox, Some(Sandbox::Off));
        let err = Config::default()
            .apply_env(env(&[("NEMO_APPROVAL", "sometimes")]))
            .unwrap_err();
        assert!(err.to_string().contains("NEMO_APPROVAL"), "{err}");
    }

    #[test]
    fn mcp_servers_are_read_from_their_tables() {
        let text = r#"
model = "m"

[mcp.servers.everything]
command = "npx"
args = ["-y", "@modelcontextprotocol/server-everything"]
env = { LOG_LEVEL = "debug" }
read_only_tools = ["echo"]
startup_timeout_sec = 60

[mcp.servers.git-tools]
command = "/usr/local/bin/git-mcp"
"#;
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.mcp.servers.len(), 2);
        let e = &c.mcp.servers["everything"];
        assert_eq!(e.command, "npx");
        assert_eq!(e.args, ["-y", "@modelcontextprotocol/server-everything"]);
        assert_eq!(e.env.get("LOG_LEVEL").map(String::as_str), Some("debug"));
        assert_eq!(e.read_only_tools, ["echo"]);
        assert_eq!(e.startup_timeout_sec, Some(60));
        assert_eq!(e.tool_timeout_sec, None);
        let g = &c.mcp.servers["git-tools"];
        assert!(g.args.is_empty() && g.env.is_empty() && g.read_only_tools.is_empty());
        assert_eq!(
            Config::parse("", Path::new("c.toml")).unwrap().mcp,
            McpConfig::default()
        );
    }

    #[test]
    fn bad_mcp_server_entries_name_the_line_and_key() {
        let cases = [
            // (text, line, key)
            (
                "[mcp.servers.\"my.server\"]\ncommand = \"x\"\n",
                1,
                "`mcp.servers.\"my.server\"`",
            ),
            (
                "[mcp.servers.a]\ncommand = \"x\"\n\n[mcp.servers.b]\nargs = []\ncommand = \" \"\n",
                6,
                "`mcp.servers.b.command`",
            ),
            (
                "[mcp.servers.a]\ncommand = \"x\"\ntool_timeout_sec = 0\n",
                3,
                "`mcp.servers.a.tool_timeout_sec`",
            ),
            (
                "[mcp.servers.a]\ncommand = \"x\"\nread_only = [\"echo\"]\n",
                3,
                "`read_only`",
            ),
            (
                "[mcp.servers.a]\nargs = [\"x\"]\n",
                1,
                "missing field `command`",
            ),
            ("[mcp]\nserver = {}\n", 2, "`server`"),
            (
                "[mcp.servers.'a b']\ncommand = \"x\"\n",
                1,
                "`mcp.servers.\"a b\"`",
            ),
        ];
        for (text, line, key) in cases {
            let err = Config::parse(text, Path::new("c.toml")).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains("c.toml"), "{shown}");
            assert!(shown.contains(&format!("line {line}")), "{text:?}: {shown}");
            assert!(shown.contains(key), "{text:?}: {shown}");
        }
    }

    #[test]
    fn paths_honour_env_overrides() {
        let p = Paths::discover_with(env(&[
            ("NEMO_CONFIG", "/tmp/x/my.toml"),
            ("NEMO_DATA_DIR", "/tmp/y"),
        ]))
        .unwrap();
        assert_eq!(p.config_file, PathBuf::from("/tmp/x/my.toml"));
        assert_eq!(p.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(p.history_file, PathBuf::from("/tmp/y/history"));
        assert_eq!(p.sessions_dir, PathBuf::from("/tmp/y/sessions"));
    }
}
