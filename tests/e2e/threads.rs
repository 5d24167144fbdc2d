//! Every thread of a guest is confined, whether its program was compiled at this start (a
//! compile-cache miss: the compile runs in a child process, never on threads of the guest) or
//! loaded from the node's cache; and the compiler child is gone once the guest runs.

use super::confinement::{ALLOWED, guest_pid, kill_and_remove};
use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, wait_for};

/// `(tid, status)` of every thread of `pid`.
fn threads(pid: i32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), status))
        })
        .collect()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

/// The spec's `process.noNewPrivileges` of container `id`.
fn no_new_privs(c: &Containerd, id: &str) -> bool {
    let info: serde_json::Value =
        serde_json::from_str(&c.ctr_ok(&["containers", "info", id]).unwrap()).unwrap();
    info["Spec"]["process"]["noNewPrivileges"]
        .as_bool()
        .unwrap_or(false)
}

/// Runs `image` detached with containerd's default seccomp profile and checks every thread of
/// its guest; `cache` is the compile-cache outcome the shim must have logged for it.
fn check(c: &Containerd, image: &str, cache: &str, min_threads: usize) {
    let id = unique("threads");
    c.ctr_ok(&["run", "-d", "--seccomp", "--runtime", RUNTIME, image, &id])
        .unwrap();
    let version = c.version;
    let logged = wait_for(Duration::from_secs(5), || {
        c.log()
            .lines()
            .any(|l| {
                l.contains(&format!("create{{id={id}}}"))
                    && l.contains(&format!("cache=\"{cache}\""))
            })
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "{version:?} {image}: not {cache}: {}",
        c.log()
    );
    let pid = guest_pid(c, &id);
    // Serving guests start their workers right after Start: wait for them.
    let all = wait_for(Duration::from_secs(10), || {
        let t = threads(pid);
        (t.len() >= min_threads).then_some(t)
    })
    .unwrap_or_else(|| panic!("{version:?} {image}: fewer than {min_threads} threads"));
    let nnp = if no_new_privs(c, &id) { "1" } else { "0" };
    for (tid, status) in &all {
        for set in ["CapPrm:", "CapEff:", "CapBnd:", "CapInh:", "CapAmb:"] {
            let caps = u64::from_str_radix(field(status, set), 16).unwrap();
            assert_eq!(
                caps & !ALLOWED,
                0,
                "{version:?} {image} ({cache}): thread {tid} of {pid} has {set} {caps:x}"
            );
        }
        assert_eq!(
            field(status, "Seccomp:"),
            "2",
            "{version:?} {image} ({cache}): thread {tid} of {pid} runs without the filter"
        );
        assert_eq!(
            field(status, "NoNewPrivs:"),
            nnp,
            "{version:?} {image} ({cache}): thread {tid} of {pid}"
        );
    }
    // The compiler child exited before the guest reported itself prepared.
    let ps = c.ctr_ok(&["tasks", "ps", &id]).unwrap();
    assert_eq!(ps.lines().count(), 2, "{version:?} {image}: {ps}");
    kill_and_remove(c, &id);
}

#[test]
fn every_thread_is_confined_after_a_compile_and_after_a_cache_hit() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let sleeper = c.import_example("sleeper").unwrap();
        let http = c.import_example("http-hello").unwrap();
        // A command guest has its signal and control threads besides the main one.
        check(&c, &sleeper, "compiled", 2);
        check(&c, &sleeper, "hit", 2);
        // A server runs one worker per CPU and the epoch ticker on top.
        check(&c, &http, "compiled", 3);
        check(&c, &http, "hit", 3);
    }
}
