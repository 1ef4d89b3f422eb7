//! Helpers of the GPU tests (feature `cuda`): the GPU or a `SKIP` line, reproducible random
//! inputs, uploads, relative errors.

use std::ops::Deref;
use std::sync::{Mutex, MutexGuard};

use cudarc::driver::{CudaSlice, DeviceRepr};
use nemo::backend::cuda::Gpu;

/// One GPU test at a time within a test binary (libtest runs tests on parallel threads):
/// a test capturing a CUDA graph must not meet another thread's module loading or
/// allocation on the same context. Held for the test's whole life by `GpuGuard`.
static GPU_TESTS: Mutex<()> = Mutex::new(());

/// The GPU for one test, with the lock that keeps other GPU tests of this binary waiting.
pub struct GpuGuard<G> {
    gpu: G,
    _turn: MutexGuard<'static, ()>,
}

impl<G> Deref for GpuGuard<G> {
    type Target = G;
    fn deref(&self) -> &G {
        &self.gpu
    }
}

/// Opens GPU 0 for a test, waiting for its turn; None (after a `SKIP` line) when there is
/// no usable GPU, unless `require_gpu`, which makes that a failure. The CPU the GPU is
/// held to runs its f32 math (`super::f32_math`).
pub fn open<G>(test: &str, wrap: impl FnOnce(Gpu) -> G) -> Option<GpuGuard<G>> {
    super::f32_math();
    // A test that panicked while holding the lock leaves nothing behind to protect.
    let turn = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    match Gpu::new(0) {
        Ok(g) => Some(GpuGuard {
            gpu: wrap(g),
            _turn: turn,
        }),
        Err(e) => {
            if require_gpu() {
                panic!("NEMO_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            super::skip::skip(&format!("no usable GPU ({test}): {e}"));
            None
        }
    }
}

/// Whether a missing GPU must fail the test (`NEMO_REQUIRE_GPU=1`, set by
/// scripts/gpu-check.sh) instead of skipping it.
pub fn require_gpu() -> bool {
    std::env::var("NEMO_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU (one test at a time), or None after printing why the test is skipped.
pub fn gpu(test: &str) -> Option<GpuGuard<Gpu>> {
    open(test, |g| g)
}

/// xorshift64*: fresh but reproducible inputs (the seed is printed on failure).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-a, a).
    pub fn f(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(a)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A fresh seed per run (printed by the tests that use it).
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

pub fn up<T: DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.upload(v).unwrap()
}

/// Relative L2 error ‖got − want‖ / ‖want‖.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "lengths");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt() as f32
}

/// Unit roundoff of a cache format (0 for f32).
pub fn unit_roundoff(d: nemo::backend::DType) -> f32 {
    use nemo::backend::DType;
    match d {
        DType::BF16 => 2f32.powi(-8),
        DType::F16 => 2f32.powi(-11),
        DType::F8E4M3 => 2f32.powi(-4),
        DType::F8E5M2 => 2f32.powi(-3),
        _ => 0.0,
    }
}

/// Relative-L2 bound of the whole GPU model's logits against `bf16_reference`'s CPU model
/// with cache formats `c` (derived in tests/cuda_model.rs's module doc): 2^-6 for the
/// GPU's bf16 GEMM inputs, plus √(2^-8·u) for each rounded cache.
pub fn model_bound(c: nemo::state::CacheConfig) -> f32 {
    let act = 2f32.powi(-8);
    2f32.powi(-6)
        + (act * unit_roundoff(c.ssm_dtype)).sqrt()
        + (act * unit_roundoff(c.kv_dtype)).sqrt()
}

/// The CPU reference for a GPU run of fixture `name`: the config, the store the GPU
/// uploads (as stored, after `edit`), and the CPU model on the same weights as the GPU
/// sees them: every 2-D tensor the GPU keeps in bf16 rounded the way the upload rounds
/// it, except those `keep_f32` names (which both sides keep in f32). `edit` may replace a
/// tensor on both sides first (e.g. pin a router bias).
pub fn bf16_reference(
    name: &str,
    edit: impl Fn(&str, nemo::model::weights::Tensor) -> nemo::model::weights::Tensor,
    keep_f32: impl Fn(&str) -> bool,
) -> (
    nemo::model::NemotronHConfig,
    nemo::model::weights::WeightStore,
    nemo::model::NemotronH,
) {
    use nemo::backend::DType;
    use nemo::model::weights::{Tensor, WeightStore};
    use nemo::model::{NemotronH, NemotronHConfig};
    let dir = super::fixture(name);
    let cfg = NemotronHConfig::from_file(&dir.join("config.json")).unwrap();
    let store = WeightStore::open_dir(&dir).unwrap();
    let (mut as_stored, mut rounded) = (vec![], vec![]);
    // Every tensor with the shape its file states (read from the safetensors headers).
    for f in &store.files {
        let bytes = std::fs::read(f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (tname, view) in st.tensors() {
            let t = edit(&tname, store.get(&tname, view.shape()).unwrap());
            if t.shape.len() == 2 && !keep_f32(&tname) {
                let b: Vec<u8> = t
                    .to_f32()
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
                    .collect();
                rounded.push(Tensor::from_owned(&tname, DType::BF16, t.shape.clone(), b));
            } else {
                rounded.push(t.clone());
            }
            as_stored.push(t);
        }
    }
    let cpu = NemotronH::load(cfg.clone(), &WeightStore::from_tensors(rounded)).unwrap();
    (cfg, WeightStore::from_tensors(as_stored), cpu)
}

/// Inputs of one Mamba2 scan (`ssm::chunk_scan` / `ssm::update`), shared by the scan tests
/// of tests/cuda_ops.rs (decode step) and tests/cuda_tc.rs (tensor-core prompt scan).
pub struct ScanCase {
    pub sh: nemo::backend::cuda::ssm::ScanShape,
    pub xbc: Vec<f32>,
    pub dt_raw: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub a: Vec<f32>,
    pub d: Vec<f32>,
    pub state: Vec<f32>,
}

/// Random inputs for `n` tokens; `positive` makes x, B, C and the state positive, so that
/// every term of y has the same sign (an error bound relative to Σ|terms| is then relative
/// to |y|).
pub fn scan_case(
    r: &mut Rng,
    sh: nemo::backend::cuda::ssm::ScanShape,
    n: usize,
    dt_stride: usize,
    positive: bool,
) -> ScanCase {
    let cd = sh.heads * sh.head_dim + 2 * sh.n_groups * sh.d_state;
    let mut xbc = r.vec(n * cd, 1.0);
    let mut state = r.vec(sh.heads * sh.head_dim * sh.d_state, 0.5);
    if positive {
        xbc.iter_mut().for_each(|v| *v = v.abs());
        state.iter_mut().for_each(|v| *v = v.abs());
    }
    ScanCase {
        sh,
        xbc,
        dt_raw: r.vec(n * dt_stride, 3.0),
        dt_bias: r.vec(sh.heads, 1.0),
        a: (0..sh.heads).map(|_| -(r.f(1.0) + 1.5).exp()).collect(),
        d: r.vec(sh.heads, 1.0),
        state,
    }
}

/// Runs one scan on the GPU with the state in `dtype`: the prompt form in chunks of
/// `chunk` when it is Some, else one decode step. Returns (y, state widened to f32).
pub fn run_scan(
    g: &Gpu,
    c: &ScanCase,
    n: usize,
    dt_stride: usize,
    chunk: Option<usize>,
    dt_min: f32,
    dtype: nemo::backend::DType,
) -> (Vec<f32>, Vec<f32>) {
    use half::{bf16, f16};
    use nemo::backend::cuda::ssm;
    use nemo::backend::DType;
    let sh = &c.sh;
    let (xbc, dt, bias, a, d) = (
        up(g, &c.xbc),
        up(g, &c.dt_raw),
        up(g, &c.dt_bias),
        up(g, &c.a),
        up(g, &c.d),
    );
    let mut y = g.zeros::<f32>(n * sh.heads * sh.head_dim).unwrap();
    macro_rules! go {
        ($to:expr, $back:expr) => {{
            let st0: Vec<_> = c.state.iter().map(|v| $to(*v)).collect();
            let mut st = up(g, &st0);
            match chunk {
                Some(cs) => ssm::chunk_scan(
                    g, sh, n, cs, &xbc, &dt, 0, dt_stride, &bias, &a, &d, dt_min, &mut st, &mut y,
                )
                .unwrap(),
                None => ssm::update(g, sh, &xbc, &dt, 0, &bias, &a, &d, &mut st, &mut y).unwrap(),
            }
            let back: Vec<f32> = g.download(&st).unwrap().iter().map($back).collect();
            (g.download(&y).unwrap(), back)
        }};
    }
    match dtype {
        DType::F16 => go!(f16::from_f32, |v: &f16| v.to_f32()),
        DType::BF16 => go!(bf16::from_f32, |v: &bf16| v.to_f32()),
        _ => go!(|v: f32| v, |v: &f32| *v),
    }
}

/// `v` rounded to `dtype` and widened back (f32 and others: unchanged).
pub fn rounded(dtype: nemo::backend::DType, v: &[f32]) -> Vec<f32> {
    use nemo::backend::DType;
    v.iter()
        .map(|x| match dtype {
            DType::F16 => half::f16::from_f32(*x).to_f32(),
            DType::BF16 => half::bf16::from_f32(*x).to_f32(),
            _ => *x,
        })
        .collect()
}

/// max |a − b| ≤ rel · max(max |b|, floor), with the worst index in the message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, floor: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= rel * scale,
        "{what}: |Δ| = {worst} at {at} (got {}, want {}), bound {rel} × {scale}",
        got[at],
        want[at]
    );
}

/// `v` rounded to bf16.
pub fn bf16s(v: &[f32]) -> Vec<half::bf16> {
    v.iter().map(|x| half::bf16::from_f32(*x)).collect()
}
