//! Pod limits inside wasmtime: a guest that allocates without bound under `--memory-limit` is
//! stopped, reported as OOM (TaskOOM), and the shim carries on.

use super::*;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, wait_for};

#[test]
fn a_guest_over_its_memory_limit_is_stopped_and_reported_oom() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("memory-hog").unwrap();
        let mut events = c
            .ctr_command(&["events"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let id = unique("memory-hog");
        c.ctr_ok(&[
            "run",
            "-d",
            "--memory-limit",
            "67108864",
            "--runtime",
            RUNTIME,
            &image,
            &id,
        ])
        .unwrap();
        let shims = c.shim_pids();
        let stopped = wait_for(Duration::from_secs(20), || {
            (task_status(&c, &id).as_deref() == Some("STOPPED")).then_some(())
        });
        assert!(stopped.is_some(), "{version:?}: {id} still running");
        // The shim that ran it is still serving.
        assert_eq!(c.shim_pids(), shims, "{version:?}");
        assert_eq!(delete_status(&c, &id), 134);
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = events.kill();
        let mut seen = String::new();
        events
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut seen)
            .unwrap();
        let _ = events.wait();
        let oom = seen
            .lines()
            .find(|l| l.contains("/tasks/oom") && l.contains(&id));
        assert!(
            oom.is_some(),
            "{version:?}: no TaskOOM for {id} in:\n{seen}"
        );
        // TaskOOM comes before TaskExit, as CRI expects.
        let at = |topic: &str| {
            seen.lines()
                .position(|l| l.contains(topic) && l.contains(&id))
        };
        assert!(at("/tasks/oom") < at("/tasks/exit"), "{seen}");
        assert_gone(&c, &id);
    }
}
