//! Faults: containerd restarting under a running guest; the shim killed.

use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, wait_for};

#[test]
fn a_guest_survives_a_containerd_restart_and_stays_manageable() {
    for version in ALL {
        let mut c = Containerd::start(version).unwrap();
        let image = c.import_example("sleeper").unwrap();
        let id = unique("restart");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image, &id])
            .unwrap();
        c.restart().unwrap();
        assert_eq!(
            task_status(&c, &id).as_deref(),
            Some("RUNNING"),
            "{version:?}\n{}",
            c.log()
        );
        c.ctr_ok(&["tasks", "kill", &id]).unwrap();
        let stopped = wait_for(Duration::from_secs(2), || {
            (task_status(&c, &id).as_deref() == Some("STOPPED")).then_some(())
        });
        assert!(stopped.is_some(), "{version:?}");
        assert_eq!(delete_status(&c, &id), 143);
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
    }
}

#[test]
fn a_killed_shim_is_reported_and_cleaned_up() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("sleeper").unwrap();
        let id = unique("shimkill");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image, &id])
            .unwrap();
        let shims = c.shim_pids();
        assert_eq!(shims.len(), 1, "{shims:?}");
        // SAFETY: killing the shim this test's containerd started.
        unsafe { libc::kill(shims[0], libc::SIGKILL) };
        // containerd notices the shim is gone, runs its `delete` action and drops the task.
        let stopped = wait_for(Duration::from_secs(5), || {
            (task_status(&c, &id).as_deref() != Some("RUNNING")).then_some(())
        });
        assert!(
            stopped.is_some(),
            "{version:?}: {:?}\n{}",
            task_status(&c, &id),
            c.log()
        );
        let _ = c.ctr(&["tasks", "delete", &id]).unwrap();
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
        assert!(c.mounts().is_empty(), "{version:?}: {:?}", c.mounts());
        let socket = c.shim_socket("default", &id);
        assert!(!socket.exists(), "{version:?}: {} left", socket.display());
    }
}
