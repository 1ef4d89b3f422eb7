//! The sandbox commands run in: Landlock (Linux 5.13+), applied in the child between
//! fork and exec, so nemo itself stays unconfined and only the command and what it starts
//! are.
//!
//! Invariants:
//! - Under [`Sandbox::Landlock`](super::Sandbox) a command can write (create, remove,
//!   rename, truncate, write to) only beneath the workspace and the temp dir, plus the
//!   harmless devices `/dev/null`, `/dev/zero` and `/dev/full`. Reading and running
//!   programs are not restricted.
//! - The ruleset is built in the parent ([`prepare`]); the child only calls `prctl` and
//!   `landlock_restrict_self` on its fd (async-signal-safe: nothing that allocates or locks
//!   runs between fork and exec). If either fails, the command does not start: the
//!   sandbox fails closed.
//! - Whether the kernel has Landlock is asked once ([`support`]); where it has none,
//!   [`notice_once`] gives the plain sentence a front end shows once, and the policy
//!   refuses `shell` in `auto` unless the sandbox is `off` (`policy.rs`).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Whether this kernel can confine commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// Landlock works; its ABI version.
    Landlock { abi: i32 },
    /// It does not, and why (one line).
    Unavailable { why: String },
}

impl Support {
    pub fn is_available(&self) -> bool {
        matches!(self, Support::Landlock { .. })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Landlock sandbox: {0}")]
pub struct SandboxError(String);

/// Asked of the kernel once per process.
pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(imp::detect)
}

/// The sentence saying commands run unconfined, the first time it is asked for and only
/// where the kernel has no Landlock; None after that and where it has.
pub fn notice_once() -> Option<String> {
    static SAID: AtomicBool = AtomicBool::new(false);
    match support() {
        Support::Landlock { .. } => None,
        Support::Unavailable { why } => (!SAID.swap(true, Ordering::SeqCst)).then(|| {
            format!(
                "this kernel has no Landlock ({why}): commands cannot be confined to the workspace; \
                 `ask` asks before each one, `auto` runs none unless --sandbox off"
            )
        }),
    }
}

/// A ruleset made in the parent, to be applied in the child.
#[derive(Debug)]
pub struct Prepared(imp::Prepared);

/// Builds the ruleset for a command whose workspace is `workspace` (canonical). None
/// where the kernel has no Landlock: the caller decides (the policy has already said
/// whether an unconfined command may run).
pub fn prepare(workspace: &Path) -> Result<Option<Prepared>, SandboxError> {
    if !support().is_available() {
        return Ok(None);
    }
    imp::prepare(workspace).map(|p| Some(Prepared(p)))
}

/// Makes `cmd` restrict itself with `prepared` after fork, before exec.
pub fn apply(cmd: &mut Command, prepared: Prepared) {
    imp::apply(cmd, prepared.0)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    use landlock::{
        path_beneath_rules, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
        RulesetCreatedAttr, ABI,
    };

    use super::{SandboxError, Support};

    /// The highest ABI whose write rights we name; older kernels get what they know
    /// (best effort), newer ones nothing more.
    const ABI_USED: ABI = ABI::V5;

    /// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
    pub fn detect() -> Support {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: the version query reads no memory (null attr, size 0).
        let v = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if v >= 1 {
            return Support::Landlock { abi: v as i32 };
        }
        let why = match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EOPNOTSUPP) => "built in but not enabled at boot".to_string(),
            Some(libc::ENOSYS) => "not built into this kernel".to_string(),
            Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
            None => "unknown".to_string(),
        };
        Support::Unavailable { why }
    }

    #[derive(Debug)]
    pub struct Prepared(OwnedFd);

    pub fn prepare(workspace: &Path) -> Result<Prepared, SandboxError> {
        let err = |e: &dyn std::fmt::Display| SandboxError(e.to_string());
        let write = AccessFs::from_write(ABI_USED);
        let tmp = std::env::temp_dir();
        let devices = ["/dev/null", "/dev/zero", "/dev/full"];
        let created = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(write)
            .map_err(|e| err(&e))?
            .create()
            .map_err(|e| err(&e))?
            .add_rules(path_beneath_rules([workspace, tmp.as_path()], write))
            .map_err(|e| err(&e))?
            .add_rules(path_beneath_rules(devices, AccessFs::WriteFile))
            .map_err(|e| err(&e))?;
        let fd: Option<OwnedFd> = created.into();
        fd.map(Prepared)
            .ok_or_else(|| SandboxError("the kernel gave no ruleset".into()))
    }

    pub fn apply(cmd: &mut Command, prepared: Prepared) {
        let fd = prepared.0;
        // SAFETY: the closure runs in the forked child and only makes two raw system
        // calls on an fd the parent keeps open (it is moved into the closure, which the
        // Command owns until spawn); both are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::Path;
    use std::process::Command;

    use super::{SandboxError, Support};

    pub fn detect() -> Support {
        Support::Unavailable {
            why: "Landlock is Linux only".into(),
        }
    }

    #[derive(Debug)]
    pub struct Prepared;

    pub fn prepare(_: &Path) -> Result<Prepared, SandboxError> {
        Err(SandboxError("Landlock is Linux only".into()))
    }

    pub fn apply(_: &mut Command, _: Prepared) {}
}
