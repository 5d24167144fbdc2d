//! Detached tasks: listing, ps, metrics, kill (guest spinning or blocked in a host call),
//! delete; and many run/delete cycles without leaks.

use super::*;
use std::time::{Duration, Instant};
use wasmtime_shim_tests::containerd::{ALL, wait_for};

/// Kills `id` with `signal` and asserts the task stops within 2 s with status 128 + signal.
fn kill_and_check(c: &Containerd, id: &str, signal: &str, all: bool, status: i32) {
    let mut args = vec!["tasks", "kill", "--signal", signal];
    if all {
        args.push("--all");
    }
    args.push(id);
    let start = Instant::now();
    c.ctr_ok(&args).unwrap();
    let stopped = stopped_within(c, id, Duration::from_secs(2));
    assert!(stopped, "{id} not stopped 2 s after {signal}");
    eprintln!("{id}: {signal} → stopped in {:?}", start.elapsed());
    assert_eq!(delete_status(c, id), status, "{id}");
    c.ctr_ok(&["containers", "delete", id]).unwrap();
    assert_gone(c, id);
}

#[test]
fn detached_tasks_are_listed_measured_and_killed() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let cases = [
            ("busy-loop", "SIGTERM", false, 143),
            ("sleeper", "SIGINT", false, 130),
            ("sleeper", "SIGKILL", true, 137),
            ("cat", "SIGTERM", true, 143),
        ];
        for (image, signal, all, status) in cases {
            let image_ref = c.import_example(image).unwrap();
            let id = unique(image);
            c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image_ref, &id])
                .unwrap();
            assert_eq!(
                task_status(&c, &id).as_deref(),
                Some("RUNNING"),
                "{version:?} {id}"
            );
            let ps = c.ctr_ok(&["tasks", "ps", &id]).unwrap();
            let pid: i32 = ps
                .lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("ps: {ps}"));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(
                text(&cmdline).contains("--wasmtime-guest"),
                "pid {pid} is not the guest"
            );
            if image == "busy-loop" {
                std::thread::sleep(Duration::from_millis(300));
            }
            let metrics = c.ctr_ok(&["tasks", "metrics", &id]).unwrap();
            let value = |key: &str| -> u64 {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
                    .unwrap_or_else(|| panic!("{version:?} no {key} in {metrics}"))
            };
            assert!(value("memory.usage_in_bytes") > 0, "{version:?} {metrics}");
            if image == "busy-loop" {
                assert!(
                    value("cpuacct.usage") > 100_000_000,
                    "{version:?} {metrics}"
                );
            }
            kill_and_check(&c, &id, signal, all, status);
        }
    }
}

#[test]
fn hundred_run_delete_cycles_leak_nothing() {
    let c = Containerd::start(wasmtime_shim_tests::containerd::Version::V1_6).unwrap();
    let image = c.import_example("hello").unwrap();
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let containerd_pid = c.containerd_pid().unwrap();
    // Warm up (first compile, lazily opened files in containerd).
    for _ in 0..3 {
        assert!(
            ctr_run(&c, &[], &image, &unique("warm"), &[])
                .status
                .success()
        );
    }
    let before = fds(containerd_pid);
    for i in 0..100 {
        let id = unique("cycle");
        let out = ctr_run(&c, &[], &image, &id, &[]);
        assert_eq!(
            text(&out.stdout),
            "Hello from WebAssembly!\n",
            "cycle {i}: {}",
            text(&out.stderr)
        );
    }
    let settled = wait_for(Duration::from_secs(5), || {
        c.shim_pids().is_empty().then_some(())
    });
    assert!(settled.is_some(), "shims left: {:?}", c.shim_pids());
    assert!(c.mounts().is_empty(), "{:?}", c.mounts());
    let after = fds(containerd_pid);
    assert!(
        after <= before + 4,
        "containerd fds grew from {before} to {after}"
    );
    let guests = wasmtime_shim_tests::containerd::processes_with_arg("--wasmtime-guest")
        .into_iter()
        .filter(|(_, a)| a.iter().any(|x| x.starts_with("cycle-")))
        .count();
    assert_eq!(guests, 0);
}

#[test]
fn containers_of_one_pod_share_one_shim() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("sleeper").unwrap();
        let pod = format!("io.kubernetes.cri.sandbox-id={}", unique("pod"));
        let (a, b, lone) = (unique("pod-a"), unique("pod-b"), unique("lone"));
        for id in [&a, &b] {
            c.ctr_ok(&[
                "run",
                "-d",
                "--runtime",
                RUNTIME,
                "--annotation",
                &pod,
                &image,
                id,
            ])
            .unwrap();
        }
        assert_eq!(c.shim_pids().len(), 1, "{version:?}: one shim for the pod");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image, &lone])
            .unwrap();
        assert_eq!(
            c.shim_pids().len(),
            2,
            "{version:?}: a container outside the pod has its own"
        );
        // Deleting one container of the pod leaves the pod's shim serving the other.
        kill_and_check(&c, &a, "SIGTERM", false, 143);
        assert_eq!(c.shim_pids().len(), 2, "{version:?}");
        assert_eq!(task_status(&c, &b).as_deref(), Some("RUNNING"));
        kill_and_check(&c, &b, "SIGKILL", false, 137);
        kill_and_check(&c, &lone, "SIGTERM", false, 143);
        let gone = wait_for(Duration::from_secs(5), || {
            c.shim_pids().is_empty().then_some(())
        });
        assert!(
            gone.is_some(),
            "{version:?}: shims left {:?}",
            c.shim_pids()
        );
        for group in [pod.split('=').nth(1).unwrap(), lone.as_str()] {
            let socket = c.shim_socket("default", group);
            assert!(!socket.exists(), "{version:?}: {} left", socket.display());
        }
    }
}

#[test]
fn a_component_serves_tcp_and_is_killed_while_blocked_in_accept() {
    use std::io::{BufRead, BufReader, Write};
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("tcp-echo").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let id = unique("tcp");
        c.ctr_ok(&[
            "run",
            "-d",
            // Reachable from the test: the host's network namespace.
            "--net-host",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "/tcp-echo.wasm",
            &addr,
        ])
        .unwrap();
        let stream = wait_for(Duration::from_secs(5), || {
            std::net::TcpStream::connect(&addr).ok()
        })
        .unwrap_or_else(|| panic!("{version:?}: nothing listens on {addr}"));
        let mut writer = stream.try_clone().unwrap();
        writer.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        assert_eq!(line, "echo: ping\n", "{version:?}");
        drop(writer);
        // Back in accept(): SIGTERM still ends it at once.
        std::thread::sleep(Duration::from_millis(100));
        kill_and_check(&c, &id, "SIGTERM", false, 143);
    }
}
