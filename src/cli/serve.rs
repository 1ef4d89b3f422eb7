//! `nemo serve`: loads the model, checks the address and key, then hands the session to
//! `nemo::serve`, which answers the OpenAI API until SIGTERM or Ctrl+C.
//!
//! The bound address is printed on stderr as `nemo serve: listening on http://ADDR/v1`
//! (with `--port 0` the system picks a free port; scripts and tests read it there).

use clap::Args;

use nemo::engine::SessionOptions;
use nemo::protocol::SamplingParams;
use nemo::serve::{ServeConfig, ServeError};

use super::device::place;
use super::{usage, ModelArgs};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on; outside 127.0.0.0/8 and ::1 it needs --api-key.
    #[arg(long, default_value = "127.0.0.1", env = "NEMO_SERVE_HOST")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000, env = "NEMO_SERVE_PORT")]
    pub port: u16,
    /// Requests must send `Authorization: Bearer KEY`.
    #[arg(long, env = "NEMO_SERVE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model name `/v1/models` lists and requests must use (default: the repo id or
    /// the file's stem).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests that may wait behind the running one; past that: 429.
    #[arg(long, default_value_t = 16)]
    pub max_queue: usize,
    /// Conversations whose sequence state is kept for reuse (LRU), each its Mamba
    /// checkpoints and a copy of its KV rows (on the GPU: 1).
    #[arg(long, default_value_t = 4)]
    pub max_sessions: usize,
    /// Context length (default: the model's; on the GPU at most what fits).
    #[arg(long)]
    pub context: Option<usize>,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    if a.max_sessions == 0 {
        return Err(usage("--max-sessions must be at least 1"));
    }
    // Before anything loads: a public address without a key is refused in one line.
    nemo::serve::check_bind(&a.host, a.api_key.as_deref()).map_err(|e| match e {
        ServeError::PublicWithoutKey { .. } | ServeError::BadHost(_) => usage(e.to_string()),
        e => e.into(),
    })?;
    // The model settings through the one path: config.toml < NEMO_* < these flags.
    let model_args = a.model.with_settings()?;
    let device = model_args.device()?;
    super::init_threads(model_args.threads)?;
    let choice =
        super::pull::resolve_model(model_args.model.as_deref(), super::pull::Missing::Required)?;
    let folder = nemo::model::ModelFolder::open(&choice.path)?;
    let cache = model_args.cache_config(folder.model.weight_dtype());
    let mut sampling = SamplingParams::default();
    folder.generation.apply(&mut sampling);
    let opts = SessionOptions {
        cache,
        context: a.context,
        ..Default::default()
    };
    let placed = place(device, &folder, opts, &mut |_, _| {})?;
    if let Some(n) = &placed.notice {
        eprintln!("nemo: {n}");
    }
    // On the GPU one conversation is kept: its caches are allocated once on the device,
    // and parking others is neither in the GPU memory plan nor written. Said at start.
    let max_sessions = if a.max_sessions > 1 && !placed.session.can_park() {
        eprintln!(
            "nemo serve: warning: --max-sessions {}: on the GPU serve keeps one conversation (its caches are allocated once on the device, and kept conversations are not in the GPU memory plan); keeping 1",
            a.max_sessions
        );
        1
    } else {
        a.max_sessions
    };
    let served = a.served_model_name.clone().unwrap_or_else(|| {
        let name = choice.name.clone();
        name.strip_suffix(".gguf")
            .map(str::to_string)
            .unwrap_or(name)
    });
    let cfg = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        served_model_name: served.clone(),
        max_queue: a.max_queue,
        max_sessions,
        sampling,
        device: placed.device.clone(),
    };
    let (max_queue, device) = (a.max_queue, placed.device.clone());
    let kept = match max_sessions {
        1 => "1 conversation kept".to_string(),
        n => format!("{n} conversations kept"),
    };
    nemo::serve::run(cfg, placed.session, |addr| {
        eprintln!("nemo serve: {served} on {device}, max queue {max_queue}, {kept}");
        eprintln!("nemo serve: listening on http://{addr}/v1");
    })?;
    eprintln!("nemo serve: stopped");
    Ok(())
}
