//! Pod limits inside wasmtime: a guest that allocates without bound under `--memory-limit` is
//! stopped, reported as OOM (TaskOOM), and the shim carries on.

use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::ALL;

#[test]
fn a_guest_over_its_memory_limit_is_stopped_and_reported_oom() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("memory-hog").unwrap();
        let events = Events::watch(&c);
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
        let stopped = stopped_within(&c, &id, Duration::from_secs(20));
        assert!(stopped, "{version:?}: {id} still running");
        // The shim that ran it is still serving.
        assert_eq!(c.shim_pids(), shims, "{version:?}");
        assert_eq!(delete_status(&c, &id), 134);
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        let seen = events.stop();
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

#[test]
fn update_resizes_the_cgroup_and_the_wasm_memory_budget_in_place() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("memory-hog").unwrap();
        let id = unique("resize");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hog.log");
        // The hog takes 25 ms per MiB (6 s to the first limit): the update below comes long
        // before it gets there, even on a busy machine (at 10 ms per MiB a loaded CI run once
        // sent it too late).
        c.ctr_ok(&[
            "run",
            "-d",
            "--memory-limit",
            "268435456",
            "--cpus",
            "1",
            "--log-uri",
            &format!("file://{}", log.display()),
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "/memory-hog.wasm",
            "25",
        ])
        .unwrap();
        let cgroup = format!("/default/{id}");
        let memory_limit = || {
            let file = crate::cgroup_file(&cgroup, "memory", "memory.limit_in_bytes", "memory.max");
            std::fs::read_to_string(file)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let quota = || crate::cgroup_cpu_quota(&cgroup);
        assert_eq!(memory_limit(), 268435456);
        assert_eq!(quota(), "100000");
        // Raise the memory limit and halve the CPU quota while it runs.
        wasmtime_shim_tests::containerd::update_task(
            &c,
            &id,
            serde_json::json!({
                "memory": {"limit": 536870912},
                "cpu": {"quota": 50000, "period": 100000}
            }),
        )
        .unwrap();
        assert_eq!(memory_limit(), 536870912, "{version:?}");
        assert_eq!(quota(), "50000", "{version:?}");
        // The Wasm budget followed: the hog grows past what the first limit allowed (about
        // 240 MiB) before it is stopped, now near 512 MiB.
        let stopped = stopped_within(&c, &id, Duration::from_secs(30));
        assert!(stopped, "{version:?}: the hog is still running");
        let held = std::fs::read_to_string(&log).unwrap_or_default();
        let last = held
            .lines()
            .filter_map(|l| {
                l.strip_prefix("holding ")?
                    .strip_suffix(" MiB")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        assert!(last > 300, "{version:?}: stopped at {last} MiB:\n{held}");
        assert_eq!(delete_status(&c, &id), 134);
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
    }
}

#[test]
fn a_guest_the_kernel_kills_for_memory_is_reported_oom() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("disk-filler").unwrap();
        let events = Events::watch(&c);
        let id = unique("disk-filler");
        // tmpfs pages are charged to the writer's cgroup and cannot be reclaimed without
        // swap: at 48 MiB the kernel's OOM killer stops the guest, outside wasmtime's budget.
        c.ctr_ok(&[
            "run",
            "-d",
            "--memory-limit",
            "50331648",
            "--mount",
            "type=tmpfs,src=tmpfs,dst=/scratch,options=size=512m",
            "--runtime",
            RUNTIME,
            &image,
            &id,
        ])
        .unwrap();
        let stopped = stopped_within(&c, &id, Duration::from_secs(20));
        assert!(stopped, "{version:?}: {id} still running");
        assert_eq!(delete_status(&c, &id), 137, "{version:?}: not SIGKILLed");
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        let seen = events.stop();
        assert!(
            seen.lines()
                .any(|l| l.contains("/tasks/oom") && l.contains(&id)),
            "{version:?}: no TaskOOM for {id} in:\n{seen}"
        );
        assert_gone(&c, &id);
    }
}
