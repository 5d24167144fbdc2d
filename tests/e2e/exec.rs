//! Execs at their container's end: when a container's first process exits, its execs are
//! ended and containerd hears of their exits before the container's, as containerd's own runc
//! shim orders them (CRI and `ctr` clean up after the container's TaskExit).

use super::confinement::{guest_pid, kill_and_remove};
use super::native::{import_busybox, wasm_exec_image};
use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::ALL;

/// The position in `events` of the TaskExit of `exec_id` (the container's own: `id`).
fn exit_line(events: &str, id: &str) -> Option<usize> {
    events
        .lines()
        .position(|l| l.contains("/tasks/exit") && l.contains(&format!("\"id\":\"{id}\"")))
}

/// Starts a long exec `exec_id` running `args` in `id`, waits until it runs, kills the
/// container's first process and checks: the exec ends, and its TaskExit comes first.
fn exec_ends_with_its_container(c: &Containerd, id: &str, args: &[&str], what: &str) {
    let events = Events::watch(c);
    let mut all = vec!["tasks", "exec", "--exec-id", "long", id];
    all.extend_from_slice(args);
    let mut exec = c
        .ctr_command(&all)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = wasmtime_shim_tests::containerd::wait_for(Duration::from_secs(20), || {
        let ps = c.ctr_ok(&["tasks", "ps", id]).ok()?;
        (ps.lines().count() >= 3).then_some(())
    });
    assert!(running.is_some(), "{what}: the exec never ran");
    c.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id]).unwrap();
    let ended = wasmtime_shim_tests::containerd::wait_for(Duration::from_secs(20), || {
        exec.try_wait().unwrap()
    });
    let Some(status) = ended else {
        let _ = exec.kill();
        let _ = exec.wait();
        panic!("{what}: the exec outlived its container's first process");
    };
    assert!(!status.success(), "{what}: {status:?}");
    assert!(stopped_within(c, id, Duration::from_secs(20)), "{what}");
    let seen = events.stop();
    let (exec_exit, init_exit) = (exit_line(&seen, "long"), exit_line(&seen, id));
    assert!(
        exec_exit.is_some() && init_exit.is_some() && exec_exit < init_exit,
        "{what}: the exec's exit must be told before the container's:\n{seen}"
    );
    c.ctr_ok(&["tasks", "delete", id]).unwrap();
    c.ctr_ok(&["containers", "delete", id]).unwrap();
    assert_gone(c, id);
}

#[test]
fn execs_end_before_their_container_does() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = wasm_exec_image(dir.path());
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        c.import(&dir.path().join("wasm-exec.tar")).unwrap();
        // In the pid namespace of another container (as in a pod that shares one), so the
        // kernel does not end the execs with the first process: the shim must.
        let holder = unique("exec-end-pidns");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &wasm.name, &holder])
            .unwrap();
        let pid_ns = format!("pid:/proc/{}/ns/pid", guest_pid(&c, &holder));
        let shared = ["--with-ns", pid_ns.as_str()];
        let id = unique("exec-end-wasm");
        let run = |image: &str, id: &str, args: &[&str]| {
            let mut all = vec!["run", "-d", "--runtime", RUNTIME];
            all.extend_from_slice(&shared);
            all.extend_from_slice(&[image, id]);
            all.extend_from_slice(args);
            c.ctr_ok(&all).unwrap();
        };
        run(&wasm.name, &id, &[]);
        exec_ends_with_its_container(&c, &id, &["/sleeper.wasm"], &format!("{version:?} wasm"));

        let busybox = import_busybox(&c, dir.path());
        let id = unique("exec-end-native");
        run(&busybox, &id, &["sleep", "1000"]);
        exec_ends_with_its_container(&c, &id, &["sleep", "1000"], &format!("{version:?} native"));
        kill_and_remove(&c, &holder);
        // Refused once the container has stopped.
        let id = unique("exec-stopped");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &busybox, &id, "true"])
            .unwrap();
        assert!(
            stopped_within(&c, &id, Duration::from_secs(20)),
            "{version:?}"
        );
        let out = c
            .ctr(&["tasks", "exec", "--exec-id", "late", &id, "true"])
            .unwrap();
        assert!(
            !out.status.success(),
            "{version:?}: exec into a stopped container ran"
        );
        c.ctr_ok(&["tasks", "delete", &id]).unwrap();
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
    }
}
