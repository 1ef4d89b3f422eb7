//! One decode step of attention (`flash::attention`, n = 1) over a real KV cache, per
//! layer, at 200 and 2000 cached positions: SmolLM2-135M's shape (9 query heads, 3 KV
//! heads, head_dim 64) and Nano 9B v2's (40, 8, 128), with the f16 cache that quantized
//! GGUFs get and the bf16 one of bf16 weights. 30 layers' caches are cycled, so the keys
//! and values come from memory as in a real decode (a whole model's cache outgrows the
//! CPU's caches at 2k), not from L2. `cargo bench --bench attention`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use nemo::backend::cpu::flash::{self, Shape};
use nemo::backend::DType;
use nemo::model::synthetic::uniform;
use nemo::state::KvCache;

const LAYERS: usize = 30;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_attention");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, heads, kv_heads, hd) in [("smollm2", 9, 3, 64), ("nano-9b", 40, 8, 128)] {
        for dtype in [DType::F16, DType::BF16] {
            for past in [200, 2000] {
                let caches: Vec<KvCache> = (0..LAYERS)
                    .map(|l| {
                        let mut c = KvCache::new(dtype, kv_heads, hd);
                        let n = (past + 1) * kv_heads * hd;
                        c.append(
                            &uniform(2 * l as u64 + 1, n, 1.0),
                            &uniform(2 * l as u64 + 2, n, 1.0),
                        );
                        c
                    })
                    .collect();
                let q = uniform(99, heads * hd, 1.0);
                let mut out = vec![0f32; heads * hd];
                let sh = Shape {
                    n: 1,
                    past,
                    heads,
                    kv_heads,
                    head_dim: hd,
                    scale: (hd as f32).powf(-0.5),
                };
                g.throughput(Throughput::Elements(LAYERS as u64));
                g.bench_function(format!("{name}_{dtype}_past{past}"), |b| {
                    b.iter(|| {
                        for cache in &caches {
                            flash::attention(black_box(&q), sh, cache, &mut out);
                        }
                        black_box(out[0])
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
