//! Subcommands, one file each. Errors become one line on stderr and an exit code:
//! 0 success, 2 bad usage, 1 model or runtime errors, 3 a tool call refused (`debug tool`),
//! 130 interrupted; `chat` ended by a
//! termination signal exits with 128 + its number, silently.

mod bench;
mod chat;
mod debug;
mod device;
mod list;
mod pull;
mod rm;
mod run;
mod serve;
mod tools;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use nemo::backend::DType;
use nemo::config::{Config, ConfigError, Device, KvCacheDtype, Paths, SsmCacheDtype};
use nemo::model::ModelFolder;
use nemo::state::CacheConfig;

#[derive(Parser, Debug)]
#[command(
    name = "nemo",
    version,
    about = "Run NVIDIA Nemotron models on your own machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The full-screen chat.
    Chat(chat::ChatArgs),
    /// One shot: prompt from arguments or stdin; the answer on stdout.
    Run(run::RunArgs),
    /// The OpenAI API (chat and completions) over this engine, for other tools.
    Serve(serve::ServeArgs),
    /// Benchmarks: load time, prefill and decode speed.
    Bench(bench::BenchArgs),
    /// Download a model from the Hugging Face hub into the shared HF cache.
    Pull(pull::PullArgs),
    /// The models in the HF cache that nemo can load.
    List(list::ListArgs),
    /// Remove a model from the HF cache.
    Rm(rm::RmArgs),
    /// Tools for checking nemo against other implementations.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

/// Flags shared by every command that loads a model. Each is also a config.toml key and a
/// `NEMO_*` variable; a command reads them through [`settings`] ([`ModelArgs::with_settings`]),
/// so an unset flag takes the lower layers' value and a set one always wins.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Model: a folder (config.json, safetensors, tokenizer.json), a `.gguf` file, a hub repo
    /// id (`org/name`, `org/name:file.gguf`) or an alias (`nemo list --aliases`); a hub model
    /// not in the HF cache is pulled first.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache dtype (default auto: follows the weights).
    #[arg(long, value_enum)]
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// Mamba SSM state dtype (default f32).
    #[arg(long, value_enum)]
    pub mamba_ssm_cache_dtype: Option<SsmCacheDtype>,
    /// Where to run (default auto: a CUDA GPU when it can run the model, else the CPU).
    #[arg(long, value_enum)]
    pub device: Option<Device>,
}

/// Sampling flags shared by `run` and `chat`; unset ones keep the lower layer's value.
#[derive(Args, Debug, Clone, Default)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Same seed, same output.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The flags that are settings keys (config.toml, `NEMO_*`), as a layer over them.
    pub fn layer(&self) -> Config {
        Config {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            seed: self.seed,
            ..Config::default()
        }
    }

    /// These flags with every settings key taken from `settings` (the flags laid over
    /// config.toml and `NEMO_*`); the penalties are flags only.
    pub fn with_settings(&self, settings: &Config) -> SamplingArgs {
        SamplingArgs {
            temperature: settings.temperature,
            top_p: settings.top_p,
            top_k: settings.top_k,
            min_p: settings.min_p,
            seed: settings.seed,
            ..self.clone()
        }
    }

    /// Range checks (`SamplingParams::validate`'s ranges), each a usage error naming the
    /// flag.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut p = nemo::protocol::SamplingParams::default();
        self.apply(&mut p);
        p.validate().map_err(|e| {
            usage(format!(
                "--{}: {} is outside {}",
                e.field.replace('_', "-"),
                e.value,
                e.range
            ))
        })
    }

    pub fn apply(&self, p: &mut nemo::protocol::SamplingParams) {
        if let Some(v) = self.temperature {
            p.temperature = v;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.top_k {
            p.top_k = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        if let Some(v) = self.presence_penalty {
            p.presence_penalty = v;
        }
        if self.seed.is_some() {
            p.seed = self.seed;
        }
    }
}

/// A user mistake in flags or arguments: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Generation was interrupted by the user (Ctrl+C): exit code 130.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// `chat` quit on a termination signal (its number): exit code 128 + the number, the
/// convention for a process ended by a signal, and no message (after SIGHUP there is no
/// terminal to print to).
#[derive(Debug)]
pub struct Signalled(pub i32);

impl std::fmt::Display for Signalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quit on signal {}", self.0)
    }
}

impl std::error::Error for Signalled {}

/// config.toml and the `NEMO_*` environment: the layers under a command's flags. A bad
/// `NEMO_*` value is a usage error naming the variable; a bad file is an error naming the
/// file, the line and the key.
pub fn file_and_env() -> anyhow::Result<(Paths, Config)> {
    let paths = Paths::discover()?;
    let mut cfg = Config::load(&paths.config_file)?;
    cfg.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| match e {
            e @ ConfigError::Env { .. } => usage(e.to_string()),
            e => e.into(),
        })?;
    Ok((paths, cfg))
}

/// The settings a command runs with: built-in defaults < config.toml < `NEMO_*` < `flags`
/// (the keys the command's flags set, as a `Config`). The one path `run`, `chat`, `bench`
/// and `debug` take.
pub fn settings(flags: &Config) -> anyhow::Result<(Paths, Config)> {
    let (paths, mut cfg) = file_and_env()?;
    cfg.merge_over(flags);
    Ok((paths, cfg))
}

impl ModelArgs {
    /// The flags given, as a layer over config.toml and `NEMO_*`.
    pub fn layer(&self) -> Config {
        Config {
            model: self.model.clone(),
            threads: self.threads,
            kv_cache_dtype: self.kv_cache_dtype,
            mamba_ssm_cache_dtype: self.mamba_ssm_cache_dtype,
            device: self.device,
            ..Config::default()
        }
    }

    /// The model settings in `settings` (flags already laid over the lower layers).
    pub fn from_settings(settings: &Config) -> ModelArgs {
        ModelArgs {
            model: settings.model.clone(),
            threads: settings.threads,
            kv_cache_dtype: settings.kv_cache_dtype,
            mamba_ssm_cache_dtype: settings.mamba_ssm_cache_dtype,
            device: settings.device,
        }
    }

    /// These flags over config.toml and `NEMO_*` ([`settings`]), for the commands whose
    /// other flags are not settings (`bench`, `debug logits`).
    pub fn with_settings(&self) -> anyhow::Result<ModelArgs> {
        let (_, cfg) = settings(&self.layer())?;
        Ok(ModelArgs::from_settings(&cfg))
    }

    pub fn init_threads(&self) -> anyhow::Result<()> {
        self.check_device()?;
        init_threads(self.threads)
    }

    /// `--device` for `run` and `chat` (see `device.rs`): parsed, and `cuda` probed at
    /// once, so a machine that cannot run it fails in one line before anything loads.
    pub fn device(&self) -> anyhow::Result<Device> {
        let d = self.device.unwrap_or_default();
        if d == Device::Cuda {
            nemo::backend::cuda::probe().map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
        }
        Ok(d)
    }

    /// `--device` for the commands that run on the CPU here (`debug`, and `bench` unless
    /// `--device cuda`, which `bench` handles before this): `cuda` fails with one line;
    /// `auto` runs on the CPU, with a one-line notice when there is an NVIDIA driver
    /// (silent on machines without one).
    pub fn check_device(&self) -> anyhow::Result<()> {
        use nemo::backend::cuda;
        match self.device.unwrap_or_default() {
            Device::Cpu => Ok(()),
            Device::Cuda => match cuda::probe() {
                Err(e) => Err(anyhow::anyhow!("--device cuda: {e}")),
                Ok(_) => Err(anyhow::anyhow!(
                    "--device cuda: this command runs on the CPU only (`run`, `chat` and `bench` run on the GPU); use --device cpu"
                )),
            },
            Device::Auto => {
                if cuda::driver_present() {
                    match cuda::probe() {
                        Err(e) => eprintln!("nemo: running on the CPU: {e}"),
                        Ok(gpu) => eprintln!(
                            "nemo: running on the CPU ({} runs `run`, `chat` and `bench --device cuda`)",
                            gpu.name
                        ),
                    }
                }
                Ok(())
            }
        }
    }

    /// The caches' dtypes for weights of `weights` (unset flags take their defaults).
    pub fn cache_config(&self, weights: DType) -> CacheConfig {
        CacheConfig {
            ssm_dtype: self.mamba_ssm_cache_dtype.unwrap_or_default().dtype(),
            kv_dtype: self.kv_cache_dtype.unwrap_or_default().resolve(weights),
        }
    }

    /// `--model` as a path to open (pulled from the hub if needed); required here.
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(pull::resolve_model(self.model.as_deref(), pull::Missing::Required)?.path)
    }

    pub fn load(&self) -> anyhow::Result<ModelFolder> {
        let dir = self.model_dir()?;
        Ok(ModelFolder::open(&dir)?)
    }
}

/// `--threads`: the rayon pool (and so the decode team, sized from it). More threads than
/// cores only slows the spinning team down (5000 threads: 0.02 s became 30 s), so a larger
/// number is clamped to the available parallelism with a one-line note on stderr.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(usage("--threads must be at least 1"));
        }
        let cores = std::thread::available_parallelism().map_or(n, |c| c.get());
        let n = if n > cores {
            eprintln!("nemo: --threads {n} is more than the {cores} cores here; using {cores}");
            cores
        } else {
            n
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))?;
    }
    Ok(())
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One line, like every other error: clap's first line names the flag and the
            // value; the usage and the "try --help" lines are left out.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad usage");
            eprintln!("nemo: {}", first.trim_start_matches("error: "));
            return 2;
        }
    };
    let result = match cli.command {
        Command::Chat(a) => chat::run(a),
        Command::Run(a) => run::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Pull(a) => pull::run(a),
        Command::List(a) => list::run(a),
        Command::Rm(a) => rm::run(a),
        Command::Debug(c) => debug::run(c),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return 0; // the reader closed the pipe (`| head`): not an error
            }
            if let Some(Signalled(sig)) = e.downcast_ref::<Signalled>() {
                return 128 + sig;
            }
            if e.downcast_ref::<debug::ToolFailed>().is_some() {
                eprintln!("nemo: {e}");
                return 1;
            }
            if e.downcast_ref::<debug::Refused>().is_some() {
                eprintln!("nemo: {}", e.to_string().replace('\n', " "));
                return 3;
            }
            if e.downcast_ref::<Interrupted>().is_some() {
                eprintln!("nemo: interrupted");
                return 130;
            }
            // One line. Our errors carry their cause in their own message already.
            eprintln!("nemo: {}", e.to_string().replace('\n', " "));
            if e.downcast_ref::<UsageError>().is_some() {
                2
            } else {
                1
            }
        }
    }
}
