//! The spec's seccomp profile (`linux.seccomp`), compiled with libseccomp and loaded into the
//! guest process, as runc does. CRI's `RuntimeDefault` profile allows everything wasmtime and
//! WASI need; a stricter profile applies to the engine as much as to the guest's code.

use super::apply::Result;
use libseccomp::ScmpSyscall;
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};

/// Refuses, before the guest is forked, a profile this shim cannot honour.
pub fn check(profile: &LinuxSeccomp) -> std::result::Result<(), String> {
    if profile.listener_path().is_some() {
        return Err("a seccomp profile with a listenerPath (SCMP_ACT_NOTIFY agents)".into());
    }
    let uses_notify = profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
    if uses_notify {
        return Err("the seccomp action SCMP_ACT_NOTIFY".into());
    }
    Ok(())
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    let errno = errno.map_or(libc::EPERM, |e| e as i32);
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        // Refused by `check` at Create.
        LinuxSeccompAction::ScmpActNotify => ScmpAction::KillProcess,
    }
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    let (op, datum) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
        // OCI's `value` is the mask and `valueTwo` the value compared with, as in runc.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    ScmpArgCompare::new(arg.index() as u32, op, datum)
}

/// Adds one entry of the profile. Syscalls this kernel or libseccomp does not know are skipped,
/// as runc skips them. Conditions on distinct arguments form one rule (all must hold); several
/// conditions on the same argument become one rule each (any may hold), as runc does.
fn add(filter: &mut ScmpFilterContext, entry: &LinuxSyscall, default: ScmpAction) -> Result<()> {
    let act = action(entry.action(), entry.errno_ret());
    if act == default {
        // libseccomp refuses rules that repeat the default action.
        return Ok(());
    }
    let conditions: Vec<ScmpArgCompare> = entry.args().iter().flatten().map(compare).collect();
    let mut indexes: Vec<usize> = entry.args().iter().flatten().map(|a| a.index()).collect();
    indexes.sort_unstable();
    let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
    for name in entry.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            continue;
        };
        let added = if conditions.is_empty() {
            filter.add_rule(act, syscall)
        } else if repeated {
            conditions
                .iter()
                .try_for_each(|c| filter.add_rule_conditional(act, syscall, &[*c]).map(|_| ()))
                .map(|()| filter as &mut ScmpFilterContext)
        } else {
            filter.add_rule_conditional(act, syscall, &conditions)
        };
        added.map_err(|e| format!("seccomp rule for {name}: {e}"))?;
    }
    Ok(())
}

/// Compiles `profile` and loads it into this process: every thread it has
/// (`SECCOMP_FILTER_FLAG_TSYNC`; loading fails if one cannot take it) and every thread it
/// starts later. The guest loads it while it has one thread; TSYNC makes a thread started
/// earlier by mistake a load error instead of an unfiltered thread.
pub fn load(profile: &LinuxSeccomp) -> Result<()> {
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut filter = ScmpFilterContext::new(default).map_err(|e| format!("seccomp filter: {e}"))?;
    // no_new_privs is the spec's choice, set (or not) before this.
    filter
        .set_ctl_nnp(false)
        .and_then(|f| f.set_ctl_tsync(true))
        .map_err(|e| format!("seccomp filter: {e}"))?;
    for arch in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if let Ok(arch) = name.parse::<ScmpArch>() {
            filter
                .add_arch(arch)
                .map_err(|e| format!("seccomp architecture {name}: {e}"))?;
        }
    }
    for entry in profile.syscalls().iter().flatten() {
        add(&mut filter, entry, default)?;
    }
    filter
        .load()
        .map_err(|e| format!("load the seccomp filter: {e}"))
}
