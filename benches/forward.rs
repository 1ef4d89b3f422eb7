//! One decode step and one 64-token prefill chunk of the CPU forward, on synthetic weights:
//! the `tiny` shape (overheads: threading, small matmuls) and `nano-9b-v2-slice` (Nano 9B
//! v2's real dimensions, one layer of each kind, pattern `M-M*`), so kernel work can be
//! tracked from commit to commit. `cargo bench` runs all of it in a couple of minutes;
//! `cargo bench -- tiny` picks one group.
//!
//! A decode step starts from a state that has seen 64 tokens, cloned outside the timing, so
//! every iteration does the same work (the KV cache never grows). `decode_step` includes
//! the LM head (for Nano 9B v2 a 1.17 GB bf16 matrix, most of the slice's bytes);
//! `decode_step_no_logits` times the layers alone.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use nemo::backend::DType;
use nemo::model::{synthetic, Logits, NemotronH};
use nemo::state::CacheConfig;

const PREFILL: usize = 64;
const CONTEXT: usize = 64;

/// Deterministic pseudo-random token ids below `vocab`.
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    synthetic::token_ids(seed | 1, n, vocab)
}

fn build(shape: &str) -> NemotronH {
    match synthetic::build(shape, DType::BF16, None) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("benches/forward: cannot build shape {shape}: {e}");
            std::process::exit(1);
        }
    }
}

fn bench_shape(c: &mut Criterion, shape: &str, measurement: Duration) {
    let model = build(shape);
    let vocab = model.config.vocab_size;
    let cache = CacheConfig {
        ssm_dtype: DType::F32,
        kv_dtype: model.weight_dtype,
    };
    let prompt = ids(PREFILL, vocab, 7);
    let mut context = model.new_state(cache);
    if let Err(e) = model.forward(&ids(CONTEXT, vocab, 11), &mut context, Logits::None) {
        eprintln!("benches/forward: {shape}: {e}");
        std::process::exit(1);
    }
    let next = ids(1, vocab, 13);

    let mut g = c.benchmark_group(shape);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement);

    g.throughput(Throughput::Elements(PREFILL as u64));
    g.bench_function(format!("prefill_{PREFILL}"), |b| {
        b.iter_batched_ref(
            || model.new_state(cache),
            |s| black_box(model.forward(black_box(&prompt), s, Logits::Last)),
            BatchSize::PerIteration,
        )
    });

    g.throughput(Throughput::Elements(1));
    for (name, want) in [
        ("decode_step", Logits::Last),
        ("decode_step_no_logits", Logits::None),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || context.clone(),
                |s| black_box(model.forward(black_box(&next), s, want)),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn forward(c: &mut Criterion) {
    bench_shape(c, "tiny", Duration::from_secs(2));
    bench_shape(c, "nano-9b-v2-slice", Duration::from_secs(7));
}

criterion_group!(benches, forward);
criterion_main!(benches);
