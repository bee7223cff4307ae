//! The helper mode: the child side of the sandbox.
//!
//! The tool runner starts `<helper> --agentmesh-sandbox-exec <spec> --
//! <program> <args>…` instead of the program (see the `sandbox` module for
//! why a re-executed helper rather than `pre_exec`). This process is a fresh
//! single-threaded program, so each step below is an ordinary call, not
//! async-signal-safe work after `fork`:
//!
//! 1. resource limits (`setrlimit`, soft = hard, so the program cannot raise
//!    them) and no core dumps;
//! 2. a new, empty network namespace (`unshare(CLONE_NEWNET)`) unless the
//!    tool declares network — only a down loopback is left, so no TCP, UDP,
//!    raw or abstract-UNIX-socket traffic leaves it;
//! 3. Landlock (sets `no_new_privs`): read-write beneath the workspace,
//!    read-and-execute beneath the read-only paths, nothing else; TCP
//!    bind/connect denied unless the tool declares network; abstract UNIX
//!    sockets and signals scoped to the sandbox;
//! 4. `execve` of the program as the unprivileged user (std's `CommandExt`:
//!    supplementary groups dropped, then setgid, then setuid).
//!
//! In strict mode (a `required` tool) any step that cannot be applied
//! fully ends the helper with [`EXIT_SANDBOX_FAILED`] and a message on
//! stderr, before the program runs. The probe mode (`--agentmesh-sandbox-probe
//! <spec>`) applies steps 1 to 3 to itself and prints what took effect as
//! JSON, which is how the service learns at start what the host can give.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use rustix::process::{Resource, Rlimit, setrlimit};

use super::{Achieved, Spec};

/// The exit code of a helper that could not set the sandbox up.
pub(crate) const EXIT_SANDBOX_FAILED: u8 = 125;
/// The Landlock ABI whose rights are asked for (tested on this version; the
/// crate downgrades on older kernels, which the probe then reports).
const REQUESTED_ABI: ABI = ABI::V6;

/// Runs the helper mode named by `mode` with the remaining arguments.
pub(crate) fn main(mode: &str, args: &[OsString]) -> ExitCode {
    let result = match mode {
        super::EXEC_FLAG => exec(args),
        _ => probe(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "sandbox: {message}");
            ExitCode::from(EXIT_SANDBOX_FAILED)
        }
    }
}

fn parse_spec(arg: Option<&OsString>) -> Result<Spec, String> {
    let text = arg
        .and_then(|arg| arg.to_str())
        .ok_or("the sandbox specification is missing")?;
    serde_json::from_str(text).map_err(|err| format!("bad sandbox specification: {err}"))
}

fn exec(args: &[OsString]) -> Result<(), String> {
    let spec = parse_spec(args.first())?;
    let separator = args.get(1).is_some_and(|arg| arg == "--");
    let Some((program, program_args)) = args.get(2..).and_then(<[OsString]>::split_first) else {
        return Err("no program to run after `--`".to_owned());
    };
    if !separator {
        return Err("expected `--` before the program".to_owned());
    }
    let achieved = apply(&spec);
    if spec.strict {
        achieved.check_complete(&spec)?;
    }
    let mut command = std::process::Command::new(program);
    command.args(program_args);
    if let Some((user, group)) = spec.user {
        command.uid(user).gid(group);
    }
    // Only returns on failure.
    let err = command.exec();
    Err(format!("cannot run `{}`: {err}", program.to_string_lossy()))
}

fn probe(args: &[OsString]) -> Result<(), String> {
    let spec = parse_spec(args.first())?;
    let achieved = apply(&spec);
    let json = serde_json::to_string(&achieved).map_err(|err| err.to_string())?;
    writeln!(std::io::stdout(), "{json}").map_err(|err| err.to_string())
}

/// Applies every step that can be applied; returns what took effect.
fn apply(spec: &Spec) -> Achieved {
    let mut achieved = Achieved {
        limits: apply_limits(spec),
        ..Achieved::default()
    };
    if spec.isolate_network {
        #[expect(
            deprecated,
            reason = "rustix deprecates the safe `unshare` because CLONE_FILES can invalidate descriptors other threads hold; this is a single-threaded helper and unshares only the network namespace"
        )]
        let unshared = rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET);
        achieved.network_namespace = unshared.is_ok();
    }
    match landlock(spec) {
        Ok((status, abi)) => {
            achieved.landlock_abi = abi;
            achieved.landlock_full = status == RulesetStatus::FullyEnforced;
            achieved.landlock_any = status != RulesetStatus::NotEnforced;
        }
        Err(err) => achieved.landlock_error = err,
    }
    achieved
}

fn apply_limits(spec: &Spec) -> bool {
    let limits = &spec.limits;
    let settings = [
        (Resource::Cpu, limits.cpu_seconds),
        (Resource::As, limits.memory_bytes),
        (Resource::Fsize, limits.file_size_bytes),
        (Resource::Nproc, limits.processes),
        (Resource::Nofile, limits.open_files),
        (Resource::Core, 0),
    ];
    settings.into_iter().all(|(resource, value)| {
        let value = Some(value);
        setrlimit(
            resource,
            Rlimit {
                current: value,
                maximum: value,
            },
        )
        .is_ok()
    })
}

/// Builds and enforces the Landlock ruleset; the enforcement status and
/// the kernel's ABI (0 when it has none).
fn landlock(spec: &Spec) -> Result<(RulesetStatus, i32), String> {
    let abi = REQUESTED_ABI;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|err| err.to_string())?
        .scope(Scope::from_all(abi))
        .map_err(|err| err.to_string())?;
    if spec.isolate_network {
        // No NetPort rule follows: every TCP bind and connect is denied.
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(|err| err.to_string())?;
    }
    let status = ruleset
        .create()
        .map_err(|err| err.to_string())?
        .add_rules(path_beneath_rules(
            &spec.read_only,
            AccessFs::from_read(abi),
        ))
        .map_err(|err| err.to_string())?
        .add_rules(path_beneath_rules(
            &spec.read_write,
            AccessFs::from_all(abi),
        ))
        .map_err(|err| err.to_string())?
        .restrict_self()
        .map_err(|err| err.to_string())?;
    let kernel_abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi.unwrap_or(effective_abi as i32),
        _ => 0,
    };
    Ok((status.ruleset, kernel_abi))
}
