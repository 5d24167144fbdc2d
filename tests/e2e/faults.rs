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
        let stopped = stopped_within(&c, &id, Duration::from_secs(2));
        assert!(stopped, "{version:?}");
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
        // The zygote dies with the shim.
        let zygote = wait_for(Duration::from_secs(2), || {
            zygotes(&id).is_empty().then_some(())
        });
        assert!(
            zygote.is_some(),
            "{version:?}: zygote left: {:?}",
            zygotes(&id)
        );
    }
}

#[test]
fn a_dead_zygote_is_replaced_and_running_guests_carry_on() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let sleeper = c.import_example("sleeper").unwrap();
        let hello = c.import_example("hello").unwrap();
        let pod = format!("io.kubernetes.cri.sandbox-id={}", unique("zygote-pod"));
        let id = unique("zygote");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            &pod,
            &sleeper,
            &id,
        ])
        .unwrap();
        let first = wait_for(Duration::from_secs(2), || zygotes(&id).first().copied())
            .unwrap_or_else(|| panic!("{version:?}: no zygote"));
        // SAFETY: killing the zygote of the shim this test's containerd started.
        unsafe { libc::kill(first, libc::SIGKILL) };
        let next = unique("after-zygote");
        let out = ctr_run(&c, &["--annotation", &pod], &hello, &next, &[]);
        assert!(out.status.success(), "{version:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "Hello from WebAssembly!\n");
        let now = zygotes(&id);
        assert!(
            now.len() == 1 && now[0] != first,
            "{version:?}: {first} then {now:?}"
        );
        assert_eq!(c.shim_pids().len(), 1, "{version:?}");
        assert_eq!(
            task_status(&c, &id).as_deref(),
            Some("RUNNING"),
            "{version:?}"
        );
        c.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", &id])
            .unwrap();
        let stopped = stopped_within(&c, &id, Duration::from_secs(2));
        assert!(stopped, "{version:?}");
        assert_eq!(delete_status(&c, &id), 137);
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
        assert_gone(&c, &next);
    }
}

/// Pids of the zygotes of the shim that `first_id` started.
fn zygotes(first_id: &str) -> Vec<i32> {
    wasmtime_shim_tests::containerd::processes_with_arg("--wasmtime-zygote")
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| a == first_id))
        .map(|(pid, _)| pid)
        .collect()
}
