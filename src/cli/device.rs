//! `--device` for `run` and `chat`: where the session runs.
//!
//! - `cpu` never touches CUDA.
//! - `cuda` puts the model on GPU 0, or fails with one line saying why not (exit 1): no
//!   driver, no GPU, no kernels for this GPU, or a model the GPU backend does not run yet
//!   (Llama, GGUF or FP8 weights), or not enough device memory.
//! - `auto` takes the GPU when a driver, a GPU, kernels for it and a supported model are
//!   all there; otherwise the CPU, with a one-line notice when there is an NVIDIA driver
//!   (silent on machines without one, and in builds without the `cuda` feature).

use nemo::config::Device;
use nemo::engine::{Session, SessionOptions};
use nemo::model::ModelFolder;

/// A session and where it runs.
pub struct Placed {
    pub session: Session,
    /// `cpu`, or `cuda · <GPU name>`.
    pub device: String,
    /// Why `auto` chose the CPU on a machine with an NVIDIA driver (one line).
    pub notice: Option<String>,
}

impl Placed {
    fn cpu(
        folder: &ModelFolder,
        opts: SessionOptions,
        notice: Option<String>,
    ) -> anyhow::Result<Self> {
        let session = Session::new(folder, opts)?;
        Ok(Placed {
            device: session.device(),
            session,
            notice,
        })
    }
}

/// The session for `folder` on `device`; `progress(done, total)` follows the weight upload
/// (checkpoint bytes) when it goes to the GPU.
pub fn place(
    device: Device,
    folder: &ModelFolder,
    opts: SessionOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Placed> {
    use nemo::backend::cuda;
    match device {
        Device::Cpu => Placed::cpu(folder, opts, None),
        Device::Cuda => {
            let session = gpu_session(folder, opts, progress)
                .map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
            Ok(Placed {
                device: session.device(),
                session,
                notice: None,
            })
        }
        Device::Auto if !cuda::driver_present() => Placed::cpu(folder, opts, None),
        Device::Auto => match gpu_session(folder, opts.clone(), progress) {
            Ok(session) => Ok(Placed {
                device: session.device(),
                session,
                notice: None,
            }),
            Err(e) => Placed::cpu(folder, opts, Some(format!("running on the CPU: {e}"))),
        },
    }
}

/// Probe, check the model, upload it, open a session on it (in a build without the
/// `cuda` feature the probe says so).
fn gpu_session(
    folder: &ModelFolder,
    opts: SessionOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Session> {
    use std::sync::Arc;

    use nemo::backend::cuda::{self, Gpu};
    use nemo::engine::Sequence;
    use nemo::model::cuda::{check_cuda, load_gpu_model};

    cuda::probe()?;
    // The model's kinds first: a model the GPU cannot run is refused before any upload.
    check_cuda(folder)?;
    let gpu = Arc::new(Gpu::new(0)?);
    let model = Arc::new(load_gpu_model(&gpu, folder, progress)?);
    let sequence = Sequence::cuda(gpu, model, &opts)?;
    Ok(Session::with_sequence(folder, sequence, opts)?)
}

/// A progress bar on stderr for the weight upload, only when stderr is a terminal.
pub struct UploadBar {
    bar: Option<indicatif::ProgressBar>,
    term: bool,
}

impl UploadBar {
    pub fn new() -> Self {
        use std::io::IsTerminal;
        UploadBar {
            bar: None,
            term: std::io::stderr().is_terminal(),
        }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if !self.term {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} {bar:28.cyan/blue} {decimal_bytes:>9}/{decimal_total_bytes:<9} {decimal_bytes_per_sec:>11}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            indicatif::ProgressBar::new(total as u64)
                .with_style(style)
                .with_message("nemo: weights to the GPU")
        });
        bar.set_position(done as u64);
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
