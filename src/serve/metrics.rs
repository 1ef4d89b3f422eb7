//! `GET /metrics`: Prometheus text exposition (version 0.0.4), written by hand: a few
//! counters, two gauges and two histograms need no library.
//!
//! - `nemo_time_to_first_token_seconds` (histogram): from the request's arrival (queue
//!   time included) to its first generated text.
//! - `nemo_inter_token_latency_seconds` (histogram): between successive pieces of text.
//! - `nemo_prompt_tokens_total`, `nemo_generation_tokens_total`,
//!   `nemo_reasoning_tokens_total`, `nemo_prompt_tokens_cached_total` (prompt tokens a
//!   checkpoint saved) (counters).
//! - `nemo_requests_total{endpoint,status}` (counter), `nemo_queue_depth` (requests
//!   waiting), `nemo_requests_running` (0 or 1), `nemo_conversations_kept` and
//!   `nemo_conversation_state_bytes` (the session pool) (gauges).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the sum and the count.
    counts: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    fn observe(&self, v: f64) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            c.0[i] += 1;
        }
        c.1 += v;
        c.2 += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, n) in self.bounds.iter().zip(&c.0) {
            cum += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", c.2);
        let _ = writeln!(out, "{name}_sum {}", c.1);
        let _ = writeln!(out, "{name}_count {}", c.2);
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct Metrics {
    ttft: Histogram,
    itl: Histogram,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    reasoning_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Requests admitted and not finished (waiting or running).
    pub pending: AtomicUsize,
    pub running: AtomicUsize,
    /// Conversations whose state is held, and the host bytes they hold.
    conversations: AtomicUsize,
    conversation_bytes: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            reasoning_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            pending: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            conversations: AtomicUsize::new(0),
            conversation_bytes: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    pub fn ttft(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    pub fn itl(&self, seconds: f64) {
        self.itl.observe(seconds);
    }

    pub fn tokens(&self, prompt: usize, cached: usize, generated: usize, reasoning: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        self.reasoning_tokens
            .fetch_add(reasoning as u64, Ordering::Relaxed);
    }

    pub fn conversations(&self, kept: usize, bytes: usize) {
        self.conversations.store(kept, Ordering::Relaxed);
        self.conversation_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((endpoint, status)).or_insert(0) += 1;
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.ttft.write(
            &mut out,
            "nemo_time_to_first_token_seconds",
            "Time from a request's arrival to its first generated text.",
        );
        self.itl.write(
            &mut out,
            "nemo_inter_token_latency_seconds",
            "Time between successive pieces of generated text.",
        );
        let counters = [
            (
                "nemo_prompt_tokens_total",
                "Prompt tokens of finished requests.",
                &self.prompt_tokens,
            ),
            (
                "nemo_prompt_tokens_cached_total",
                "Prompt tokens restored from a session checkpoint instead of fed again.",
                &self.cached_tokens,
            ),
            (
                "nemo_generation_tokens_total",
                "Generated tokens (reasoning included).",
                &self.generation_tokens,
            ),
            (
                "nemo_reasoning_tokens_total",
                "Generated reasoning tokens.",
                &self.reasoning_tokens,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP nemo_requests_total Requests answered, by endpoint and status.\n# TYPE nemo_requests_total counter"
        );
        for ((ep, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "nemo_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}"
            );
        }
        let pending = self.pending.load(Ordering::SeqCst);
        let running = self.running.load(Ordering::SeqCst);
        let _ = writeln!(
            out,
            "# HELP nemo_queue_depth Requests waiting for the engine.\n# TYPE nemo_queue_depth gauge\nnemo_queue_depth {}",
            pending.saturating_sub(running)
        );
        let _ = writeln!(
            out,
            "# HELP nemo_requests_running Requests the engine is generating.\n# TYPE nemo_requests_running gauge\nnemo_requests_running {running}"
        );
        let _ = writeln!(
            out,
            "# HELP nemo_conversations_kept Conversations whose sequence state is kept for reuse (--max-sessions).\n# TYPE nemo_conversations_kept gauge\nnemo_conversations_kept {}",
            self.conversations.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP nemo_conversation_state_bytes Host bytes of the kept conversations' states and checkpoints.\n# TYPE nemo_conversation_state_bytes gauge\nnemo_conversation_state_bytes {}",
            self.conversation_bytes.load(Ordering::Relaxed)
        );
        out
    }
}
