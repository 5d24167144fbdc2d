//! End-to-end tests: the real shim under a real, private containerd (1.6 and 2.1), driven with
//! `ctr`. They need root, containerd (scripts/install-deps.sh) and the built shim and example
//! images (scripts/test.sh builds both).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod bad_input;
mod confinement;
mod cri;
mod examples;
mod exec;
mod faults;
mod http;
mod images;
mod installer;
mod lifecycle;
mod limits;
mod mixed;
mod native;
mod p3;
mod p3_http;
mod threads;

use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use wasmtime_shim_tests::containerd::{Containerd, RUNTIME};

/// A container id unique to this test run.
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `ctr run --rm --runtime io.containerd.wasmtime.v1 [extra] image id [args]`.
pub fn ctr_run(c: &Containerd, extra: &[&str], image: &str, id: &str, args: &[&str]) -> Output {
    let mut argv = vec!["run", "--rm", "--runtime", RUNTIME];
    argv.extend_from_slice(extra);
    argv.push(image);
    argv.push(id);
    argv.extend_from_slice(args);
    c.ctr(&argv).expect("run ctr")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts nothing of container `id` is left: no task, no container, no guest process.
pub fn assert_gone(c: &Containerd, id: &str) {
    let tasks = c.ctr_ok(&["tasks", "ls", "-q"]).unwrap();
    assert!(!tasks.lines().any(|l| l == id), "task {id} left: {tasks}");
    let containers = c.ctr_ok(&["containers", "ls", "-q"]).unwrap();
    assert!(!containers.lines().any(|l| l == id), "container {id} left");
    let guests = wasmtime_shim_tests::containerd::processes_with_arg("--wasmtime-guest")
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| a == id))
        .count();
    assert_eq!(guests, 0, "guest process of {id} left");
    let cgroups = leftover_cgroups(id);
    assert!(cgroups.is_empty(), "cgroups of {id} left: {cgroups:?}");
}

/// Whether the node's cgroups are v2 only (the unified hierarchy at /sys/fs/cgroup).
pub fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The file of cgroup `path` (`/default/<id>`) that holds what v1 keeps in `v1_file` of its
/// `controller` hierarchy and v2 in `v2_file`.
pub fn cgroup_file(
    path: &str,
    controller: &str,
    v1_file: &str,
    v2_file: &str,
) -> std::path::PathBuf {
    let path = path.trim_start_matches('/');
    if cgroup_v2() {
        format!("/sys/fs/cgroup/{path}/{v2_file}").into()
    } else {
        format!("/sys/fs/cgroup/{controller}/{path}/{v1_file}").into()
    }
}

/// The CPU quota of cgroup `path` in microseconds per period (`max` when unlimited): v1's
/// `cpu.cfs_quota_us` (-1 read as `max`) or the first field of v2's `cpu.max`.
pub fn cgroup_cpu_quota(path: &str) -> String {
    let file = cgroup_file(path, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    match text.split_whitespace().next() {
        Some("-1") => "max".to_string(),
        Some(quota) => quota.to_string(),
        None => String::new(),
    }
}

/// Cgroup directories named `id` (ctr puts a container at `/<namespace>/<id>`), in each v1
/// hierarchy and in the v2 one.
pub fn leftover_cgroups(id: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut roots = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()));
    }
    for root in roots {
        let Ok(namespaces) = std::fs::read_dir(&root) else {
            continue;
        };
        for ns in namespaces.flatten() {
            let candidate = ns.path().join(id);
            if candidate.is_dir() {
                found.push(candidate);
            }
        }
    }
    found
}

/// `ctr tasks delete id` and the exit status it reports (ctr only warns about non-zero ones).
pub fn delete_status(c: &Containerd, id: &str) -> i32 {
    let out = c.ctr(&["tasks", "delete", id]).expect("run ctr");
    assert!(out.status.success(), "delete {id}: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    stderr
        .split("exit code ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether task `id` is STOPPED within `timeout`.
pub fn stopped_within(c: &Containerd, id: &str, timeout: std::time::Duration) -> bool {
    wasmtime_shim_tests::containerd::wait_for(timeout, || {
        (task_status(c, id).as_deref() == Some("STOPPED")).then_some(())
    })
    .is_some()
}

/// `ctr events`, running until [`Events::stop`] returns what it printed.
pub struct Events(std::process::Child);

impl Events {
    pub fn watch(c: &Containerd) -> Events {
        let child = c
            .ctr_command(&["events"])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("run ctr events");
        Events(child)
    }

    /// Stops watching (after a moment for the last events to arrive) and returns the lines.
    pub fn stop(mut self) -> String {
        use std::io::Read;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = self.0.kill();
        let mut seen = String::new();
        if let Some(mut out) = self.0.stdout.take() {
            let _ = out.read_to_string(&mut seen);
        }
        let _ = self.0.wait();
        seen
    }
}

/// The STATUS column of `ctr tasks ls` for `id`, if it is listed.
pub fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr_ok(&["tasks", "ls"]).ok()?;
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}
