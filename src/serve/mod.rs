//! `nemo serve`: the OpenAI API over HTTP (axum on tokio) in front of one engine.
//!
//! Files: `wire.rs` (request bodies → `protocol::Request`), `http.rs` (routes, auth,
//! admission, SSE), `turn.rs` (events → OpenAI deltas and messages), `worker.rs` (the
//! engine thread), `pool.rs` (which conversation's sequence serves a request),
//! `metrics.rs` (`/metrics`), `error.rs` (OpenAI's error shape).
//!
//! Invariants:
//! - One engine, one request at a time, in arrival order. At most `max_queue` requests
//!   wait behind the running one; past that a request is answered 429 at once.
//! - A client that goes away cancels its request: a queued one never starts, a running
//!   one stops at its next step (its guard is dropped with the handler or the stream).
//! - Binding an address outside the loopback range needs an API key.
//! - SIGTERM (or SIGINT): no new connections, waiting requests answered 503, the running
//!   one finishes, then `run` returns.

mod error;
mod http;
mod metrics;
mod pool;
mod turn;
mod wire;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use error::ApiError;

use crate::engine::Session;
use crate::protocol::{SamplingParams, ToolFormat};

/// The largest request body (413 past it).
pub const MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--host {host}: binding an address outside 127.0.0.0/8 and ::1 without an API key would let anyone who reaches it use the model; pass --api-key KEY (or NEMO_SERVE_API_KEY), or bind 127.0.0.1")]
    PublicWithoutKey { host: String },
    #[error("--host {0}: not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1) or `localhost`")]
    BadHost(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// What `nemo serve` runs with.
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// What `/v1/models` lists and requests must name.
    pub served_model_name: String,
    pub max_queue: usize,
    pub max_sessions: usize,
    /// The model's sampling defaults, under each request's own values.
    pub sampling: SamplingParams,
    /// Where the model runs (`cpu`, `cuda · …`), for the startup line.
    pub device: String,
}

/// The address `host` names; `localhost` is 127.0.0.1.
pub fn parse_host(host: &str) -> Result<IpAddr, ServeError> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| ServeError::BadHost(host.to_string()))
}

/// Checks the address and key before anything loads: a public address needs a key.
pub fn check_bind(host: &str, api_key: Option<&str>) -> Result<IpAddr, ServeError> {
    let ip = parse_host(host)?;
    if !ip.is_loopback() && api_key.is_none_or(str::is_empty) {
        return Err(ServeError::PublicWithoutKey {
            host: host.to_string(),
        });
    }
    Ok(ip)
}

/// Serves until SIGTERM or SIGINT; `ready` is called with the bound address once the
/// server listens (the CLI prints it; `--port 0` picks a free port).
pub fn run(
    cfg: ServeConfig,
    session: Session,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let ip = check_bind(&cfg.host, cfg.api_key.as_deref())?;
    let addr = SocketAddr::new(ip, cfg.port);
    let metrics = Arc::new(metrics::Metrics::default());
    let context = session.context();
    let detected: Option<ToolFormat> = session.detected_tool_format();
    let worker = worker::Worker::spawn(session, cfg.max_sessions, metrics.clone())?;
    let state = Arc::new(http::AppState::new(cfg, worker, metrics, context, detected));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nemo-serve-http")
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        ready(listener.local_addr()?);
        let app = http::router(state.clone());
        let st = state.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                st.close();
            })
            .await?;
        Ok::<(), ServeError>(())
    });
    // The running request has finished with its connection; the thread ends with it.
    state.join();
    rt.shutdown_background();
    served
}

/// SIGTERM or SIGINT (Ctrl+C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
