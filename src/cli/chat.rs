//! `nemo chat`: the full-screen interface. Needs a terminal on stdin and stdout. Sets the
//! terminal up (raw mode, alternate screen, bracketed paste, mouse) and always restores it:
//! on quit, on error, on panic, and on SIGTERM / SIGHUP / SIGINT. Shows a loading view while
//! the model loads and an error view if it cannot.
//!
//! Quitting restores the terminal first and never waits on the engine thread (see
//! `engine::engine_thread`). A termination signal is routed into the app loop as a quit (the
//! running turn is saved as on `/quit`), and the process exits with 128 + the signal's
//! number; if the loop does not end within `SIGNAL_GRACE` (stuck somewhere), the signal
//! thread restores the terminal and exits itself. A second signal exits at once.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
    KeyboardEnhancementFlags, PopKeyboardEnhancementFlags, PushKeyboardEnhancementFlags,
};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Alignment;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Terminal;

use nemo::chat::session_store::{ModelIdentity, SessionFile, SessionStore};
use nemo::config::{Config, Paths};
use nemo::engine::prompt::{thinking_style, ThinkingStyle};
use nemo::engine::{Engine, SessionOptions};
use nemo::model::ModelFolder;
use nemo::protocol::{Budget, SamplingParams, ThinkingOptions};
use nemo::remote::{Backend, Remote};
use nemo::tui::app::{App, ModelInfo};
use nemo::tui::event_loop::{AppMsg, EventLoop};
use nemo::tui::history::History;
use nemo::tui::theme::Theme;

use super::device::place;
use super::tools::ToolFlags;
use super::{usage, ModelArgs, SamplingArgs, Signalled};
use nemo::agent::mcp::McpServers;
use nemo::agent::turn::Agent;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Theme: dark | light | high-contrast | path to a .toml patch.
    #[arg(long)]
    pub theme: Option<String>,
    /// Continue the most recent session.
    #[arg(long)]
    pub resume: bool,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Reasoning off at start (the same as `--budget off`).
    #[arg(long = "no-think", conflicts_with = "budget")]
    pub no_think: bool,
    /// Thinking budget: N tokens, `off` or `unlimited`.
    #[arg(long)]
    pub budget: Option<Budget>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Context length (default: the model's; on the GPU at most what fits the free device
    /// memory).
    #[arg(long)]
    pub context: Option<usize>,
    #[command(flatten)]
    pub tools: ToolFlags,
    #[command(flatten)]
    pub endpoint: super::run::EndpointArgs,
}

/// Whether the terminal is in the state `restore_terminal` undoes.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Leaves raw mode and the alternate screen; does nothing when the terminal is not taken
/// (so the guard, the panic hook and the signal thread may all call it).
fn restore_terminal() {
    if !TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout();
    let _ = crossterm::execute!(out, PopKeyboardEnhancementFlags);
    let _ = crossterm::execute!(
        out,
        DisableBracketedPaste,
        DisableMouseCapture,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = disable_raw_mode();
    let _ = out.flush();
}

/// Restores the terminal when dropped: on return, on `?`, and on unwinding panics.
struct TerminalGuard;

/// How long a termination signal waits for the app to quit by itself before the signal
/// thread restores the terminal and exits.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);

/// SIGTERM, SIGHUP and SIGINT while the terminal is ours (raw mode makes Ctrl+C a key, so
/// a SIGINT comes from `kill`). The first is sent to the app loop as `AppMsg::Signal` once
/// it runs (before that, the loading loops poll `signalled`); if the process is still
/// there after `SIGNAL_GRACE`, or on a second signal, the signal thread restores the
/// terminal and exits with 128 + the signal.
struct SignalWatch {
    signalled: Arc<AtomicI32>,
    route: Arc<Mutex<Option<Sender<AppMsg>>>>,
}

impl SignalWatch {
    fn start() -> anyhow::Result<SignalWatch> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT])
            .map_err(|e| anyhow::anyhow!("cannot watch for termination signals: {e}"))?;
        let signalled = Arc::new(AtomicI32::new(0));
        let route: Arc<Mutex<Option<Sender<AppMsg>>>> = Arc::new(Mutex::new(None));
        let (flag, to_app) = (signalled.clone(), route.clone());
        std::thread::Builder::new()
            .name("nemo-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if flag.swap(sig, Ordering::SeqCst) != 0 {
                        exit_now(sig);
                    }
                    if let Some(tx) = to_app.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        let _ = tx.send(AppMsg::Signal(sig));
                    }
                    let _ = std::thread::Builder::new()
                        .name("nemo-signal-grace".into())
                        .spawn(move || {
                            std::thread::sleep(SIGNAL_GRACE);
                            exit_now(sig);
                        });
                }
            })?;
        Ok(SignalWatch { signalled, route })
    }

    /// The first signal received, if any.
    fn signalled(&self) -> Option<i32> {
        match self.signalled.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// From now on signals go to the app loop; one that came before is sent at once.
    fn route_to(&self, tx: Sender<AppMsg>) {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sig) = self.signalled() {
            let _ = tx.send(AppMsg::Signal(sig));
        }
        *route = Some(tx);
    }

    fn check(&self) -> anyhow::Result<()> {
        match self.signalled() {
            Some(sig) => Err(Signalled(sig).into()),
            None => Ok(()),
        }
    }
}

/// The last resort of a signal the app could not act on in time.
fn exit_now(sig: i32) -> ! {
    restore_terminal();
    std::process::exit(128 + sig)
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn centered_message(
    terminal: &mut Terminal<CrosstermBackend<std::io::Stdout>>,
    title: &str,
    lines: Vec<Line>,
) -> std::io::Result<()> {
    terminal.draw(|f| {
        let a = f.area();
        let h = (lines.len() as u16 + 4).min(a.height);
        let r = ratatui::layout::Rect {
            x: a.x + 2,
            y: a.y + a.height.saturating_sub(h) / 2,
            width: a.width.saturating_sub(4),
            height: h,
        };
        f.render_widget(
            Paragraph::new(lines)
                .alignment(Alignment::Center)
                .wrap(Wrap { trim: false })
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(title.to_string()),
                ),
            r,
        );
    })?;
    Ok(())
}

/// The error view: `msg` under `title`, until a key is pressed (or a signal comes).
fn error_view(
    terminal: &mut Terminal<CrosstermBackend<std::io::Stdout>>,
    theme: &Theme,
    title: &str,
    msg: &str,
    signals: &SignalWatch,
) -> anyhow::Result<()> {
    centered_message(
        terminal,
        title,
        vec![
            Line::from(msg.to_string()).style(theme.error),
            Line::from(""),
            Line::from("press any key to exit"),
        ],
    )?;
    loop {
        signals.check()?;
        if crossterm::event::poll(Duration::from_millis(100))? {
            if let crossterm::event::Event::Key(_) = crossterm::event::read()? {
                return Ok(());
            }
        }
    }
}

/// `[=====>     ]` for `done` of `total`, `width` cells inside the brackets.
fn upload_bar(done: usize, total: usize, width: usize) -> String {
    let fill = (done.min(total) * width).checked_div(total).unwrap_or(0);
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    s.push_str(&"=".repeat(fill));
    if fill < width {
        s.push('>');
        s.push_str(&" ".repeat(width - fill - 1));
    }
    s.push(']');
    s
}

/// The flags that are settings keys (config.toml, `NEMO_*`), as the layer over them:
/// `--no-think` is `think = false`.
fn settings_layer(a: &ChatArgs) -> Config {
    let mut layer = a.model.layer();
    layer.merge_over(&a.sampling.layer());
    layer.theme = a.theme.clone();
    layer.think = a.no_think.then_some(false);
    layer.budget = a.budget;
    layer.max_tokens = a.max_tokens;
    layer
}

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    a.sampling.check()?;
    // The one settings path: config.toml < NEMO_* < these flags.
    let (paths, cfg) = super::settings(&settings_layer(&a))?;
    let model_args = ModelArgs::from_settings(&cfg);
    let theme = Theme::resolve(cfg.theme.as_deref())?;
    // `--endpoint`: the server is asked which model it serves before the terminal is
    // taken over; no model loads here.
    let remote = match &a.endpoint.endpoint {
        Some(url) => Some(Remote::connect(
            &a.endpoint.options(url, a.model.model.as_deref())?,
        )?),
        None => None,
    };
    // Resolved (and any question asked) before the terminal is taken over.
    let choice = match &remote {
        Some(r) => super::pull::ModelChoice {
            path: PathBuf::new(),
            name: r.model().to_string(),
        },
        None => super::pull::resolve_model(
            model_args.model.as_deref(),
            super::pull::Missing::PickDefault { yes: false },
        )?,
    };
    let dir = choice.path.clone();
    let device = model_args.device()?;
    super::init_threads(model_args.threads)?;
    // `--no-think` and `think = false` are `off`.
    let budget = cfg.thinking_budget().unwrap_or(Budget::Unlimited);
    let (agent, _mcp_servers) = agent_for_chat(&a.tools, &cfg, &paths.config_file)?;
    let store = SessionStore::new(paths.sessions_dir.clone());
    let resumed = if a.resume {
        Some(latest_session(&store)?)
    } else {
        None
    };

    // Everything that can fail in one line on stderr (flags, config, model, sessions)
    // has been checked; only now must there be a terminal.
    if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return Err(usage(
            "chat needs a terminal on stdin and stdout; use `nemo run` for pipes and scripts",
        ));
    }
    // Terminal up; the guard, the panic hook and the signal watch put it back whatever
    // happens.
    let signals = SignalWatch::start()?;
    enable_raw_mode()?;
    TERMINAL_TAKEN.store(true, Ordering::SeqCst);
    let _guard = TerminalGuard;
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        prev_hook(info);
    }));
    let mut stdout = std::io::stdout();
    crossterm::execute!(
        stdout,
        EnterAlternateScreen,
        EnableBracketedPaste,
        EnableMouseCapture
    )?;
    // Shift+Enter is only reported with the keyboard enhancement protocol.
    if crossterm::terminal::supports_keyboard_enhancement().unwrap_or(false) {
        let _ = crossterm::execute!(
            stdout,
            PushKeyboardEnhancementFlags(KeyboardEnhancementFlags::DISAMBIGUATE_ESCAPE_CODES)
        );
    }
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;

    let (engine, info, session_file, history, history_error, notice) = match remote {
        Some(remote) => remote_setup(&a, &cfg, remote, budget, &paths),
        None => {
            // Load in a thread while the loading view shows progress.
            let t0 = Instant::now();
            let load_dir = dir.clone();
            let loader = std::thread::spawn(move || ModelFolder::open(&load_dir));
            let mut tick = 0usize;
            while !loader.is_finished() {
                // A signal ends the wait; the loader is left behind (the process exit ends it).
                signals.check()?;
                let spin = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"][tick % 10];
                centered_message(
                    &mut terminal,
                    " nemo ",
                    vec![
                        Line::from(format!("{spin} loading {}", dir.display())),
                        Line::from(format!("{:.1} s", t0.elapsed().as_secs_f64())),
                    ],
                )?;
                tick += 1;
                std::thread::sleep(std::time::Duration::from_millis(80));
            }
            let folder = match loader.join() {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    error_view(
                        &mut terminal,
                        &theme,
                        " nemo: the model could not be loaded ",
                        &e.to_string(),
                        &signals,
                    )?;
                    return Err(e.into());
                }
                Err(_) => return Err(anyhow::anyhow!("the model loader crashed")),
            };
            let cache = model_args.cache_config(folder.model.weight_dtype());
            let mut sampling = SamplingParams::default();
            folder.generation.apply(&mut sampling);
            // Layers: generation_config.json < config.toml / NEMO_* < flags.
            a.sampling.with_settings(&cfg).apply(&mut sampling);
            let thinking = ThinkingOptions {
                budget,
                ..Default::default()
            };
            // The loaded model's identity; a resumed session is checked against it below.
            let session_file = SessionFile::new(
                ModelIdentity::of(&dir).unwrap_or(ModelIdentity {
                    path: dir.display().to_string(),
                    config_hash: String::new(),
                    weights: None,
                }),
                sampling.clone(),
                thinking,
                a.system.clone(),
            );
            let history = History::load(&paths.history_file);
            let history_error = history.load_error().map(str::to_string);
            // The session on its device; a GPU upload shows its progress in the loading view.
            let opts = SessionOptions {
                cache,
                context: a.context,
                ..Default::default()
            };
            // Not a scoped thread: a signal must be able to leave it behind.
            let folder = Arc::new(folder);
            let uploaded = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
            let placed = {
                let (folder, up) = (folder.clone(), uploaded.clone());
                let job = std::thread::spawn(move || {
                    place(device, &folder, opts, &mut |d, t| {
                        up.0.store(d, Ordering::Relaxed);
                        up.1.store(t, Ordering::Relaxed);
                    })
                });
                while !job.is_finished() {
                    signals.check()?;
                    let (d, t) = (
                        uploaded.0.load(Ordering::Relaxed),
                        uploaded.1.load(Ordering::Relaxed),
                    );
                    if t > 0 {
                        centered_message(
                            &mut terminal,
                            " nemo ",
                            vec![
                                Line::from(format!("weights to the GPU: {}", upload_bar(d, t, 28))),
                                Line::from(format!(
                                    "{:.2} / {:.2} GB · {:.1} s",
                                    d as f64 / 1e9,
                                    t as f64 / 1e9,
                                    t0.elapsed().as_secs_f64()
                                )),
                            ],
                        )?;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(80));
                }
                job.join()
                    .map_err(|_| anyhow::anyhow!("the model loader crashed"))?
            };
            let placed = match placed {
                Ok(p) => p,
                Err(e) => {
                    error_view(
                        &mut terminal,
                        &theme,
                        " nemo: the model could not be placed ",
                        &e.to_string(),
                        &signals,
                    )?;
                    return Err(e);
                }
            };
            let session = placed.session;
            let m = &folder.model;
            let tools_line = format!(
                "{} format{}; {}{}",
                a.tools
                    .tool_format
                    .and_then(|f| f.0)
                    .or(session.detected_tool_format())
                    .unwrap_or(nemo::protocol::ToolFormat::Hermes),
                if a.tools.tool_format.and_then(|f| f.0).is_some() {
                    " (--tool-format)"
                } else if session.detected_tool_format().is_some() {
                    " (detected)"
                } else {
                    " (the default)"
                },
                session.tool_support().describe(),
                if session.device().starts_with("cuda") {
                    "; a draw held to a grammar (tool calls, structured output) is made by the host sampler"
                } else {
                    ""
                }
            );
            let info = ModelInfo {
                name: choice.name.clone(),
                backend: placed.device.clone(),
                arch: m.describe(),
                dtype: folder.model.weight_dtype().to_string(),
                pattern: m.pattern(),
                params: format!("{:.2} GB of weights", m.weight_bytes() as f64 / 1e9),
                context: session.context(),
                kv_cache_dtype: cache.kv_dtype.to_string(),
                ssm_cache_dtype: cache.ssm_dtype.to_string(),
                no_thinking_switch: folder
                    .template
                    .as_ref()
                    .is_some_and(|t| thinking_style(t) == ThinkingStyle::NoThinking),
                tools: tools_line,
            };

            (
                Backend::Local(Engine::spawn(session)),
                info,
                session_file,
                history,
                history_error,
                placed.notice,
            )
        }
    };
    let mut app = App::new(theme, info, session_file, history);
    if let Some(n) = notice {
        app.info(n);
    }
    if let Some((name, s, skipped)) = resumed {
        let mut warnings: Vec<String> = app.load_session(s).into_iter().collect();
        if let Some(first) = skipped.first() {
            let more = match skipped.len() {
                1 => String::new(),
                n => format!(" (and {} more, listed on stderr)", n - 1),
            };
            warnings.push(format!("skipped the newer, unreadable {first}{more}"));
        }
        if warnings.is_empty() {
            app.info("resumed the last session");
        } else {
            app.warn(format!("resumed `{name}`, but {}", warnings.join("; ")));
        }
    }
    if let Some(m) = cfg.max_tokens {
        app.max_tokens = m;
    }
    if cfg.show_reasoning == Some(false) {
        app.show_reasoning = false;
    }
    if let Some(e) = history_error {
        app.warn(e);
    }
    if let Some((agent, notice)) = &agent {
        app.tools.available = agent.offered();
        app.tools.on = !app.tools.available.is_empty();
        app.tools.choice = a.tools.tool_choice.clone().unwrap_or_default();
        app.tools.format = a.tools.tool_format.and_then(|f| f.0);
        app.tools.approval = agent.policy.mode().to_string();
        if let Some(n) = notice {
            app.warn(n.clone());
        }
    }
    let (tx, rx) = channel::<AppMsg>();
    signals.route_to(tx.clone());
    let term_tx = tx.clone();
    std::thread::spawn(move || {
        while let Ok(ev) = crossterm::event::read() {
            if term_tx.send(AppMsg::Term(ev)).is_err() {
                break;
            }
        }
    });
    let clipboard = Box::new(|seq: &str| {
        let mut out = std::io::stdout();
        let _ = out.write_all(seq.as_bytes());
        let _ = out.flush();
    });
    let mut event_loop = EventLoop::new(engine, store, tx, clipboard);
    event_loop.agent = agent.map(|(agent, _)| std::sync::Arc::new(std::sync::Mutex::new(agent)));
    let result = event_loop.run(&mut terminal, &mut app, &rx);
    // The terminal back first; then what quitting saves (if the loop ended another way,
    // e.g. the terminal went away); the engine is dropped last and never waited for.
    restore_terminal();
    event_loop.quit(&mut app);
    if let Some(e) = &event_loop.save_error {
        // Not eprintln!: after SIGHUP stderr may be a terminal that is gone.
        let _ = writeln!(std::io::stderr(), "nemo: could not save the session: {e}");
    }
    if let Some(sig) = event_loop.quit_signal {
        return Err(Signalled(sig).into());
    }
    result?;
    Ok(())
}

/// `chat --endpoint`: what the interface shows and saves for a remote model, and the
/// backend that sends its turns there. Sampling: config.toml / NEMO_* < flags, over
/// nemo's neutral defaults (the server's generation config is not known here).
#[allow(clippy::type_complexity)]
fn remote_setup(
    a: &ChatArgs,
    cfg: &Config,
    remote: Remote,
    budget: Budget,
    paths: &Paths,
) -> (
    Backend,
    ModelInfo,
    SessionFile,
    History,
    Option<String>,
    Option<String>,
) {
    let mut sampling = SamplingParams::default();
    a.sampling.with_settings(cfg).apply(&mut sampling);
    let thinking = ThinkingOptions {
        budget,
        ..Default::default()
    };
    let path = remote.budget_path(Budget::tokens(512));
    let info = ModelInfo {
        name: remote.model().to_string(),
        backend: remote.device(),
        arch: format!("remote model `{}` at {}", remote.model(), remote.host()),
        dtype: "(the server's)".into(),
        pattern: String::new(),
        params: match remote.template_source() {
            Some(t) => format!("thinking budget path: {path} (template: {})", t.display()),
            None => format!("thinking budget path: {path}"),
        },
        context: a.context.or(remote.context()).unwrap_or(131_072),
        kv_cache_dtype: "(the server's)".into(),
        ssm_cache_dtype: "(the server's)".into(),
        no_thinking_switch: false,
        tools: format!(
            "calls as the server returns them (tool_calls), or read from the text as {} calls",
            a.tools
                .tool_format
                .and_then(|f| f.0)
                .unwrap_or(nemo::protocol::ToolFormat::Hermes)
        ),
    };
    let session_file = SessionFile::new(
        ModelIdentity {
            path: format!("{} at {}", remote.model(), remote.device()),
            config_hash: String::new(),
            weights: None,
        },
        sampling,
        thinking,
        a.system.clone(),
    );
    let history = History::load(&paths.history_file);
    let history_error = history.load_error().map(str::to_string);
    let notice = Some(match remote.notice() {
        Some(n) => format!("{} on {}: {n}", remote.model(), remote.device()),
        None => format!(
            "{} on {} · thinking budget: {path}",
            remote.model(),
            remote.device()
        ),
    });
    (
        Backend::Remote(remote),
        info,
        session_file,
        history,
        history_error,
        notice,
    )
}

/// `--resume`: the newest session that reads, with its name and a line for each file that
/// cannot be read and may be newer (each also printed on stderr now, before the terminal
/// is taken over). With no readable session, the error names every unreadable file and
/// why.
fn latest_session(store: &SessionStore) -> anyhow::Result<(String, SessionFile, Vec<String>)> {
    let latest = store.latest_with_unreadable()?;
    let lines: Vec<String> = latest
        .unreadable
        .iter()
        .map(|e| match e.path() {
            Some(p) => format!(
                "{} ({})",
                p.file_name().unwrap_or(p.as_os_str()).to_string_lossy(),
                e.reason()
            ),
            None => e.to_string(),
        })
        .collect();
    match latest.session {
        Some((name, s)) => {
            for e in &latest.unreadable {
                eprintln!("nemo: --resume skipped {e}");
            }
            Ok((name, s, lines))
        }
        None if lines.is_empty() => Err(usage(format!(
            "--resume: there is no saved session yet in {}",
            store.dir().display()
        ))),
        None => {
            const SHOWN: usize = 5;
            let more = match lines.len().saturating_sub(SHOWN) {
                0 => String::new(),
                n => format!("; and {n} more"),
            };
            Err(anyhow::anyhow!(
                "--resume: no saved session in {} can be read: {}{more}",
                store.dir().display(),
                lines[..lines.len().min(SHOWN)].join("; ")
            ))
        }
    }
}

/// The chat's agent: the tools `--tools` names (default all; in `read-only` mode only the
/// read-only ones), the approval mode (flag, else config.toml, else `ask`), the sandbox
/// and the workspace; with the Landlock notice to show, if any. None with `--tools none`.
/// The MCP servers whose tools it offers run until they are dropped.
#[allow(clippy::type_complexity)]
fn agent_for_chat(
    flags: &ToolFlags,
    cfg: &Config,
    config_file: &std::path::Path,
) -> anyhow::Result<(Option<(Agent, Option<String>)>, Option<McpServers>)> {
    use nemo::agent::policy::{ApprovalMode, ToolSelection};
    use nemo::agent::Effect;
    flags.check()?;
    let treq = flags.request()?;
    if !treq.external.is_empty() {
        return Err(usage(
            "--tools @FILE: chat runs the tools it offers; tools without a runner are for nemo run",
        ));
    }
    let selection = treq.selection.unwrap_or(ToolSelection::All);
    if selection == ToolSelection::None {
        if flags.tool_choice.is_some() {
            return Err(usage("--tool-choice needs tools: give --tools"));
        }
        return Ok((None, None));
    }
    let mode = ApprovalMode::for_chat(flags.approval, cfg.approval);
    let built = super::tools::assemble(
        flags,
        cfg,
        config_file,
        &selection,
        mode,
        Vec::new(),
        true,
        |all, _| match &selection {
            ToolSelection::Named(names) => {
                if let Some(n) = names.iter().find(|n| all.get(n).is_err()) {
                    let known: Vec<&str> = all.names().collect();
                    return Err(usage(format!(
                        "--tools: no tool `{n}` (known: {})",
                        known.join(", ")
                    )));
                }
                Ok(all.filtered(|t| names.iter().any(|n| n == &t.spec().name)))
            }
            _ if mode == ApprovalMode::ReadOnly => {
                Ok(all.filtered(|t| t.effect() == Effect::ReadOnly))
            }
            _ => Ok(all.filtered(|_| true)),
        },
    )?;
    Ok((Some((built.agent, built.notice)), built.servers))
}
#[cfg(test)]
mod tests {
    use clap::Parser;
    use nemo::config::{Config, KvCacheDtype};
    use nemo::protocol::Budget;

    use super::{settings_layer, ChatArgs};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        chat: ChatArgs,
    }

    /// The chat's flags over a config.toml / `NEMO_*` layer, as `run` lays them (`settings`).
    fn over_file(args: &[&str], file: &Config) -> Config {
        let argv = std::iter::once("chat").chain(args.iter().copied());
        let a = Cli::try_parse_from(argv).unwrap().chat;
        let mut merged = file.clone();
        merged.merge_over(&settings_layer(&a));
        merged
    }

    #[test]
    fn chat_flags_win_over_the_file_even_at_their_default_values() {
        let file = Config {
            kv_cache_dtype: Some(KvCacheDtype::Fp8E5m2),
            budget: Some(Budget::tokens(512)),
            temperature: Some(0.3),
            max_tokens: Some(100),
            ..Config::default()
        };
        let c = over_file(&["--kv-cache-dtype", "auto", "--no-think"], &file);
        assert_eq!(c.kv_cache_dtype, Some(KvCacheDtype::Auto));
        assert_eq!(c.thinking_budget(), Some(Budget::Off));
        assert_eq!(c.temperature, Some(0.3), "no flag: the file's");
        let c = over_file(&["--temperature", "0", "--max-tokens", "7"], &file);
        assert_eq!(
            (c.kv_cache_dtype, c.temperature, c.max_tokens),
            (Some(KvCacheDtype::Fp8E5m2), Some(0.0), Some(7))
        );
    }
}
