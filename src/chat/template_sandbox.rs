//! Renders chat templates where a bad one cannot hurt: a template comes with a downloaded
//! model and is a program (loops, string arithmetic), so it renders in a helper process
//! that can be capped in memory and killed.
//!
//! Invariants:
//! - On Linux, when a helper executable is known ([`serve_if_helper`], called first thing
//!   in `main`, registers the running `nemo` binary; tests register it with
//!   [`set_helper_exe`]), every render of a [`TemplateRenderer`] runs in its helper: the
//!   same binary started with the argument [`HELPER_ARG`], once per renderer and kept for
//!   the next request. It holds the compiled template and the messages of the last
//!   request, so a request ships only the messages after the ones it shares with the last.
//! - The helper renders under the request's [`RenderLimits`]: minijinja fuel, an address
//!   space limit (`RLIMIT_AS` = its size + `memory_bytes`: an allocation past it aborts
//!   the helper, never this process) and the output cap. This side waits at most
//!   `timeout_ms` and polls the cancel flag every 10 ms, and kills the helper on either.
//!   A helper that died or was killed is reaped at once and replaced on the next request.
//! - Before this process compiles an untrusted template ([`ChatTemplate::new`]), a helper
//!   compiles it under [`COMPILE_MEMORY`] and [`COMPILE_TIMEOUT`] ([`check_compile`]).
//! - Starting a process, not forking this one: a fork copies the page tables of
//!   everything this process has mapped (the KV cache, the checkpoints), measured at
//!   70-100 ms per GiB on the CI VM, on every request; the helper's start (30 ms there,
//!   debug build) is paid once per session.
//! - The helper's stderr is /dev/null and it has its own process group: nothing it does
//!   reaches the terminal, and a Ctrl-C at the terminal does not reach it. It exits when
//!   its stdin closes (this side dropped it, or this process ended).
//! - Elsewhere (other systems, or no helper executable known: library users and most
//!   tests), templates render in this process with the step budget and the output cap
//!   only: no memory cap, and a cancel takes effect once the render (bounded by its fuel)
//!   returns.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use minijinja::Value;
use serde::{Deserialize, Serialize};

use super::template::{ChatTemplate, RenderLimits, Rendered, TemplateError};
use crate::protocol::Message;

/// The first argument that makes `nemo` serve as a template helper.
pub const HELPER_ARG: &str = "__render-chat-template";

/// Bumped when the messages between the two sides change.
const PROTOCOL: u32 = 1;

/// Memory and time a helper may take to compile a template.
pub const COMPILE_MEMORY: u64 = 256 << 20;
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(10);

static HELPER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Registers `path` (a `nemo` binary) as the template helper for this process; the first
/// registration wins.
pub fn set_helper_exe(path: impl Into<PathBuf>) {
    let _ = HELPER_EXE.set(path.into());
}

/// Called first thing in `main`: serves as the template helper when started as one (the
/// return value is then the exit code), else registers this binary as the helper.
pub fn serve_if_helper() -> Option<i32> {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(HELPER_ARG)) {
        return Some(helper::serve());
    }
    // `/proc/self/exe` still runs this binary after an upgrade replaced its file.
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        set_helper_exe(proc_exe);
    } else if let Ok(exe) = std::env::current_exe() {
        set_helper_exe(exe);
    }
    None
}

fn helper_exe() -> Option<PathBuf> {
    if cfg!(target_os = "linux") {
        HELPER_EXE.get().cloned()
    } else {
        None
    }
}

/// Renders one template, in a helper process when there is one (module doc).
pub struct TemplateRenderer {
    template: Arc<ChatTemplate>,
    exe: Option<PathBuf>,
    helper: Option<Helper>,
}

/// A running helper and the messages it holds (those of the last request).
struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    sent: Vec<Message>,
}

#[derive(Serialize, Deserialize)]
struct Init {
    protocol: u32,
    source: String,
    name: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
}

/// A request as the helper reads it.
#[derive(Deserialize)]
struct Job {
    /// Messages of the last request the helper keeps; `messages` follow them.
    keep: usize,
    messages: Vec<serde_json::Value>,
    extra: serde_json::Map<String, serde_json::Value>,
    prefixes: Vec<usize>,
    limits: RenderLimits,
}

/// A request as this side writes it (the fields of [`Job`]).
#[derive(Serialize)]
struct JobOut<'a> {
    keep: usize,
    messages: &'a [Message],
    extra: &'a serde_json::Map<String, serde_json::Value>,
    prefixes: &'a [usize],
    limits: &'a RenderLimits,
}

/// What the helper answers; a rendered prompt follows `Ok` as a frame of its own.
#[derive(Serialize, Deserialize)]
enum Reply {
    Ok { prefixes: Vec<Option<usize>> },
    Failed(WireError),
}

/// A [`TemplateError`] as the helper sends it (the template's label is added here).
#[derive(Serialize, Deserialize)]
enum WireError {
    Compile(String),
    Render(String),
    StepBudget(u64),
    OutputTooLarge { bytes: usize, cap: usize },
    Panicked(String),
}

/// Why waiting on the helper stopped.
enum Wait {
    Cancelled,
    TimedOut,
    /// End of stream or a read error: the helper is gone.
    Closed,
    /// A frame longer than its cap: the helper is not speaking the protocol.
    TooLarge,
}

impl TemplateRenderer {
    pub fn new(template: Arc<ChatTemplate>) -> Self {
        TemplateRenderer {
            template,
            exe: helper_exe(),
            helper: None,
        }
    }

    /// Renders in this process even when a helper exists (for comparisons in tests).
    pub fn in_process(template: Arc<ChatTemplate>) -> Self {
        TemplateRenderer {
            template,
            exe: None,
            helper: None,
        }
    }

    pub fn template(&self) -> &Arc<ChatTemplate> {
        &self.template
    }

    /// The running helper's process id, if one is running.
    pub fn helper_pid(&self) -> Option<u32> {
        self.helper.as_ref().map(|h| h.child.id())
    }

    /// Renders `messages` (see [`ChatTemplate::render_prompt`]) under `limits`;
    /// `cancelled` is polled while the helper works.
    pub fn render(
        &mut self,
        messages: &[Message],
        extra: &serde_json::Map<String, serde_json::Value>,
        prefixes: &[usize],
        limits: &RenderLimits,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Rendered, TemplateError> {
        if cancelled() {
            return Err(TemplateError::Cancelled);
        }
        if self.exe.is_none() {
            let values: Vec<Value> = messages.iter().map(Value::from_serialize).collect();
            return self
                .template
                .render_prompt(&values, extra, prefixes, limits);
        }
        let deadline = Instant::now() + limits.timeout();
        let result = self.render_in_helper(messages, extra, prefixes, limits, deadline, cancelled);
        // A template error leaves the helper as it was; anything else leaves it unknown.
        if !matches!(
            result,
            Ok(_)
                | Err(TemplateError::Render(_)
                    | TemplateError::StepBudget { .. }
                    | TemplateError::OutputTooLarge { .. })
        ) {
            self.stop_helper();
        }
        result
    }

    fn render_in_helper(
        &mut self,
        messages: &[Message],
        extra: &serde_json::Map<String, serde_json::Value>,
        prefixes: &[usize],
        limits: &RenderLimits,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Rendered, TemplateError> {
        let label = self.template.label();
        let fresh = self.helper.is_none();
        let mut helper = match self.helper.take() {
            Some(h) => h,
            None => {
                let init = Init {
                    protocol: PROTOCOL,
                    source: self.template.source().to_string(),
                    name: self.template.name().map(str::to_string),
                    bos: self.template.bos_token().map(str::to_string),
                    eos: self.template.eos_token().map(str::to_string),
                };
                let exe = self.exe.clone().unwrap_or_default();
                start_helper(
                    &exe,
                    &init,
                    &label,
                    (deadline, limits.timeout_ms),
                    cancelled,
                )?
            }
        };
        let keep = helper
            .sent
            .iter()
            .zip(messages)
            .take_while(|(a, b)| a == b)
            .count();
        let job = JobOut {
            keep,
            messages: &messages[keep..],
            extra,
            prefixes,
            limits,
        };
        let frame = serde_json::to_vec(&job)
            .map_err(|e| renderer_error(&label, format!("cannot encode the request: {e}")))?;
        if let Err(e) = write_frame(&mut helper.stdin, &frame) {
            drop(helper);
            // A helper that ended since the last request (killed from outside): start anew.
            if !fresh {
                return self
                    .render_in_helper(messages, extra, prefixes, limits, deadline, cancelled);
            }
            return Err(renderer_error(
                &label,
                format!("the template helper failed: {e}"),
            ));
        }
        // The helper now holds these messages (or is stopped below).
        helper.sent.truncate(keep);
        helper.sent.extend_from_slice(&messages[keep..]);
        self.helper = Some(helper);
        match self.read_reply(deadline, cancelled, limits)? {
            Reply::Ok { prefixes } => {
                let text = self.read_text(deadline, cancelled, limits)?;
                Ok(Rendered { text, prefixes })
            }
            Reply::Failed(e) => Err(wire_error(&label, e)),
        }
    }

    fn read_reply(
        &mut self,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
        limits: &RenderLimits,
    ) -> Result<Reply, TemplateError> {
        let frame = self.read_helper_frame(deadline, cancelled, limits, 16 << 20)?;
        serde_json::from_slice(&frame)
            .map_err(|e| self.helper_gone(&format!("unreadable answer: {e}")))
    }

    fn read_text(
        &mut self,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
        limits: &RenderLimits,
    ) -> Result<String, TemplateError> {
        let cap = limits.output_bytes.saturating_add(1);
        let frame = self.read_helper_frame(deadline, cancelled, limits, cap)?;
        String::from_utf8(frame).map_err(|_| self.helper_gone("the prompt is not UTF-8"))
    }

    fn read_helper_frame(
        &mut self,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
        limits: &RenderLimits,
        cap: usize,
    ) -> Result<Vec<u8>, TemplateError> {
        let label = self.template.label();
        let Some(helper) = self.helper.as_mut() else {
            return Err(renderer_error(&label, "no template helper".into()));
        };
        match read_frame(&mut helper.stdout, deadline, cancelled, cap) {
            Ok(frame) => Ok(frame),
            Err(Wait::Cancelled) => {
                self.stop_helper();
                Err(TemplateError::Cancelled)
            }
            Err(Wait::TimedOut) => {
                self.stop_helper();
                Err(TemplateError::Timeout {
                    template: label,
                    secs: limits.timeout_ms.div_ceil(1000),
                })
            }
            Err(Wait::Closed) => Err(self.helper_died(limits)),
            Err(Wait::TooLarge) => Err(self.helper_gone("it sent more than it may")),
        }
    }

    /// The helper stopped answering: reap it and say why it ended.
    fn helper_died(&mut self, limits: &RenderLimits) -> TemplateError {
        let label = self.template.label();
        match self.helper.take() {
            Some(helper) => exit_error(&label, helper, limits.memory_bytes),
            None => renderer_error(&label, "no template helper".into()),
        }
    }

    fn helper_gone(&mut self, why: &str) -> TemplateError {
        self.stop_helper();
        renderer_error(
            &self.template.label(),
            format!("the template helper failed: {why}"),
        )
    }

    /// Kills and reaps the helper (the next request starts a new one).
    fn stop_helper(&mut self) {
        self.helper = None;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a helper for `init` and waits until it has compiled the template (at most until
/// `deadline`, which ends a limit of `limit_ms`).
fn start_helper(
    exe: &Path,
    init: &Init,
    label: &str,
    (deadline, limit_ms): (Instant, u64),
    cancelled: &dyn Fn() -> bool,
) -> Result<Helper, TemplateError> {
    let mut cmd = Command::new(exe);
    cmd.arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| {
        renderer_error(
            label,
            format!("cannot start the template helper {}: {e}", exe.display()),
        )
    })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(renderer_error(
            label,
            "the template helper has no pipes".into(),
        ));
    };
    let mut helper = Helper {
        child,
        stdin,
        stdout,
        sent: Vec::new(),
    };
    let frame = serde_json::to_vec(init)
        .map_err(|e| renderer_error(label, format!("cannot encode the template: {e}")))?;
    if write_frame(&mut helper.stdin, &frame).is_err() {
        return Err(exit_error(label, helper, COMPILE_MEMORY));
    }
    match read_frame(&mut helper.stdout, deadline, cancelled, 1 << 20) {
        Ok(reply) => match serde_json::from_slice::<Reply>(&reply) {
            Ok(Reply::Ok { .. }) => Ok(helper),
            Ok(Reply::Failed(e)) => Err(wire_error(label, e)),
            Err(e) => Err(renderer_error(
                label,
                format!("the template helper answered nonsense: {e}"),
            )),
        },
        Err(Wait::Cancelled) => Err(TemplateError::Cancelled),
        Err(Wait::TimedOut) => Err(TemplateError::Timeout {
            template: label.to_string(),
            secs: limit_ms.div_ceil(1000),
        }),
        Err(Wait::Closed | Wait::TooLarge) => Err(exit_error(label, helper, COMPILE_MEMORY)),
    }
}

/// Compiles `source` in a helper process first, when there is one: minijinja folds
/// constant expressions while compiling (`'x' * 100000000` becomes a 100 MB string, and a
/// chain of them as much as the chain holds), so an untrusted template is compiled here
/// only once a helper compiled it within [`COMPILE_MEMORY`] and [`COMPILE_TIMEOUT`].
fn check_compile(source: &str) -> Result<(), TemplateError> {
    let Some(exe) = helper_exe() else {
        return Ok(());
    };
    let init = Init {
        protocol: PROTOCOL,
        source: source.to_string(),
        name: None,
        bos: None,
        eos: None,
    };
    let limit = (
        Instant::now() + COMPILE_TIMEOUT,
        COMPILE_TIMEOUT.as_millis() as u64,
    );
    start_helper(&exe, &init, "chat template", limit, &|| false).map(drop)
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here with its line. Where templates
    /// render in a helper process, it compiles there first, under a memory cap and a time
    /// limit ([`check_compile`]: minijinja folds constants while compiling). It lives here,
    /// not in `template`, so that `template` does not depend on the process that runs it.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        check_compile(source)?;
        Self::compile(source, bos_token, eos_token)
    }
}

/// Reaps a helper that stopped answering and says why it ended: an allocation past
/// `RLIMIT_AS` aborts it (Rust's allocation-failure handler calls abort()).
fn exit_error(label: &str, mut helper: Helper, memory_bytes: u64) -> TemplateError {
    // It closed its output: it has exited or is about to; a kill makes sure.
    let status = match helper.child.try_wait() {
        Ok(Some(s)) => Some(s),
        _ => {
            std::thread::sleep(Duration::from_millis(20));
            match helper.child.try_wait() {
                Ok(Some(s)) => Some(s),
                _ => {
                    let _ = helper.child.kill();
                    helper.child.wait().ok()
                }
            }
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.and_then(|s| s.signal()) {
            if sig == libc::SIGABRT {
                return TemplateError::MemoryCap {
                    template: label.to_string(),
                    mib: memory_bytes >> 20,
                };
            }
            return renderer_error(label, format!("the template helper died of signal {sig}"));
        }
    }
    let code = status.and_then(|s| s.code());
    renderer_error(
        label,
        format!("the template helper exited unexpectedly (status {code:?})"),
    )
}

fn wire_error(label: &str, e: WireError) -> TemplateError {
    let template = label.to_string();
    match e {
        WireError::Compile(m) => TemplateError::Compile(m),
        WireError::Render(m) => TemplateError::Render(m),
        WireError::StepBudget(steps) => TemplateError::StepBudget { template, steps },
        WireError::OutputTooLarge { bytes, cap } => TemplateError::OutputTooLarge {
            template,
            bytes,
            cap,
        },
        WireError::Panicked(m) => {
            renderer_error(&template, format!("the template helper panicked: {m}"))
        }
    }
}

fn renderer_error(template: &str, message: String) -> TemplateError {
    TemplateError::Renderer {
        template: template.to_string(),
        message,
    }
}

fn write_frame(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)?;
    w.flush()
}

/// Reads one frame of at most `cap` bytes, waiting until `deadline` and polling
/// `cancelled` every 10 ms.
fn read_frame(
    r: &mut ChildStdout,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
    cap: usize,
) -> Result<Vec<u8>, Wait> {
    let mut len = [0u8; 8];
    read_exact_until(r, &mut len, deadline, cancelled)?;
    let len = u64::from_le_bytes(len);
    if len > cap as u64 {
        return Err(Wait::TooLarge);
    }
    let mut buf = vec![0u8; len as usize];
    read_exact_until(r, &mut buf, deadline, cancelled)?;
    Ok(buf)
}

fn read_exact_until(
    r: &mut ChildStdout,
    mut buf: &mut [u8],
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), Wait> {
    while !buf.is_empty() {
        if cancelled() {
            return Err(Wait::Cancelled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Wait::TimedOut);
        }
        if !readable_within(r, left.min(Duration::from_millis(10))) {
            continue;
        }
        match r.read(buf) {
            Ok(0) => return Err(Wait::Closed),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Wait::Closed),
        }
    }
    Ok(())
}

/// Whether `r` has data (or its end) within `wait`.
#[cfg(unix)]
fn readable_within(r: &ChildStdout, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    n > 0
}

#[cfg(not(unix))]
fn readable_within(_r: &ChildStdout, _wait: Duration) -> bool {
    true
}

/// The helper side: compiles the template it is sent, then renders requests until its
/// stdin closes.
mod helper {
    use std::io::{Read, Write};

    use minijinja::Value;

    use super::{Init, Job, Reply, WireError, PROTOCOL};
    use crate::chat::template::{ChatTemplate, TemplateError};

    pub fn serve() -> i32 {
        // Nothing may reach the terminal: stderr is /dev/null, and a panic becomes a reply.
        std::panic::set_hook(Box::new(|_| {}));
        no_core_files();
        let mut stdin = std::io::stdin().lock();
        let mut stdout = std::io::stdout().lock();
        let Some(init) = read_frame(&mut stdin) else {
            return 0;
        };
        let template = match serde_json::from_slice::<Init>(&init) {
            Ok(init) if init.protocol == PROTOCOL => {
                let limits = lower_limits(
                    super::COMPILE_MEMORY,
                    super::COMPILE_TIMEOUT.as_millis() as u64,
                );
                let compiled = ChatTemplate::compile(&init.source, init.bos, init.eos);
                drop(limits);
                match compiled {
                    Ok(t) => match init.name {
                        Some(n) => t.with_name(n),
                        None => t,
                    },
                    Err(e) => {
                        send(
                            &mut stdout,
                            &Reply::Failed(WireError::Compile(e.to_string())),
                            None,
                        );
                        return 1;
                    }
                }
            }
            _ => {
                send(
                    &mut stdout,
                    &Reply::Failed(WireError::Panicked(format!(
                        "the template helper speaks protocol {PROTOCOL}; this request is another"
                    ))),
                    None,
                );
                return 1;
            }
        };
        if !send(&mut stdout, &Reply::Ok { prefixes: vec![] }, None) {
            return 0;
        }
        let mut messages: Vec<Value> = Vec::new();
        while let Some(frame) = read_frame(&mut stdin) {
            let Ok(job) = serde_json::from_slice::<Job>(&frame) else {
                return 1;
            };
            messages.truncate(job.keep);
            messages.extend(job.messages.iter().map(Value::from_serialize));
            drop(job.messages);
            let limits = lower_limits(job.limits.memory_bytes, job.limits.timeout_ms);
            let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                template.render_prompt(&messages, &job.extra, &job.prefixes, &job.limits)
            }));
            drop(limits);
            let ok = match rendered {
                Ok(Ok(r)) => send(
                    &mut stdout,
                    &Reply::Ok {
                        prefixes: r.prefixes,
                    },
                    Some(r.text.as_bytes()),
                ),
                Ok(Err(e)) => send(&mut stdout, &Reply::Failed(wire(e)), None),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    send(&mut stdout, &Reply::Failed(WireError::Panicked(what)), None)
                }
            };
            if !ok {
                return 0;
            }
        }
        0
    }

    fn wire(e: TemplateError) -> WireError {
        match e {
            TemplateError::StepBudget { steps, .. } => WireError::StepBudget(steps),
            TemplateError::OutputTooLarge { bytes, cap, .. } => {
                WireError::OutputTooLarge { bytes, cap }
            }
            other => WireError::Render(other.to_string()),
        }
    }

    fn read_frame(r: &mut impl Read) -> Option<Vec<u8>> {
        let mut len = [0u8; 8];
        r.read_exact(&mut len).ok()?;
        let len = usize::try_from(u64::from_le_bytes(len)).ok()?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).ok()?;
        r.take(len as u64).read_to_end(&mut buf).ok()?;
        (buf.len() == len).then_some(buf)
    }

    /// Sends `reply`, then `text` as a frame of its own; false when the other side is gone.
    fn send(w: &mut impl Write, reply: &Reply, text: Option<&[u8]>) -> bool {
        let Ok(head) = serde_json::to_vec(reply) else {
            return false;
        };
        let mut ok = super::write_frame(w, &head).is_ok();
        if let (true, Some(text)) = (ok, text) {
            ok = super::write_frame(w, text).is_ok();
        }
        ok
    }

    /// A resource limit lowered while this lives, then put back.
    struct Lowered {
        #[cfg(unix)]
        restore: Option<(RlimitResource, libc::rlimit)>,
    }

    // glibc names the resource type; musl and the BSDs take an int.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    type RlimitResource = libc::__rlimit_resource_t;
    #[cfg(all(unix, not(all(target_os = "linux", target_env = "gnu"))))]
    type RlimitResource = libc::c_int;

    impl Lowered {
        /// The soft limit of `resource` lowered to `value` (never raised).
        #[cfg(unix)]
        fn to(resource: RlimitResource, value: Option<u64>) -> Self {
            let Some(value) = value else {
                return Lowered { restore: None };
            };
            let mut old = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit/setrlimit with valid pointers to rlimit values.
            unsafe {
                if libc::getrlimit(resource, &mut old) != 0 {
                    return Lowered { restore: None };
                }
                let new = libc::rlimit {
                    rlim_cur: (value as libc::rlim_t).min(old.rlim_cur),
                    rlim_max: old.rlim_max,
                };
                if libc::setrlimit(resource, &new) != 0 {
                    return Lowered { restore: None };
                }
            }
            Lowered {
                restore: Some((resource, old)),
            }
        }
    }

    impl Drop for Lowered {
        fn drop(&mut self) {
            #[cfg(unix)]
            if let Some((resource, old)) = self.restore {
                // SAFETY: setrlimit with a valid pointer; raising a soft limit back to its
                // old value (at most the hard limit) is always allowed.
                unsafe {
                    libc::setrlimit(resource, &old);
                }
            }
        }
    }

    /// Limits for one request: address space (this process's size + `memory_bytes`) and
    /// CPU time (what it used so far + the request's time limit, so a helper whose parent
    /// is gone stops too).
    #[cfg(unix)]
    fn lower_limits(memory_bytes: u64, timeout_ms: u64) -> [Lowered; 2] {
        let size = address_space_size().map(|s| s.saturating_add(memory_bytes));
        let cpu = cpu_seconds().map(|s| s + timeout_ms.div_ceil(1000) + 1);
        [
            Lowered::to(libc::RLIMIT_AS, size),
            Lowered::to(libc::RLIMIT_CPU, cpu),
        ]
    }

    #[cfg(not(unix))]
    fn lower_limits(_memory_bytes: u64, _timeout_ms: u64) -> [Lowered; 0] {
        []
    }

    /// No core files: an abort at the memory cap is this helper's normal way to fail.
    fn no_core_files() {
        #[cfg(unix)]
        std::mem::forget(Lowered::to(libc::RLIMIT_CORE, Some(0)));
    }

    /// The process's virtual size in bytes (`/proc/self/statm`, first field, in pages).
    #[cfg(unix)]
    fn address_space_size() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages.saturating_mul(u64::try_from(page).ok()?))
    }

    /// CPU seconds this process has used (user + system), rounded up.
    #[cfg(unix)]
    fn cpu_seconds() -> Option<u64> {
        // SAFETY: an all-zero rusage is a valid value; getrusage fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage with a valid pointer.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let secs = usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + 1;
        u64::try_from(secs).ok()
    }
}
