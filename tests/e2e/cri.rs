//! Pods through containerd's CRI plugin, driven as kubelet drives it: the `wasmtime` runtime
//! handler, a CNI bridge network, kubelet's namespace options and pod cgroup, CRI log files.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};
use wasmtime_shim_tests::containerd::{ALL, Containerd};
use wasmtime_shim_tests::cri::{Cri, Pod, Spec, log_lines};

/// Imports example images into CRI's namespace and waits until CRI knows them.
pub(crate) fn images(c: &Containerd, cri: &Cri, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let image = c.import_example_in("k8s.io", name).unwrap();
            cri.wait_image(&image).unwrap();
            image
        })
        .collect()
}

/// The network namespace of `pid`, as its `/proc/<pid>/ns/net` link reads.
pub(crate) fn netns_of(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// The pod's network namespace: the one of its processes (the pause's) that is not the host's.
pub(crate) fn pod_netns(processes: &[i32]) -> String {
    let host_netns = netns_of(std::process::id() as i32);
    processes
        .iter()
        .filter_map(|pid| netns_of(*pid))
        .find(|ns| Some(ns) != host_netns.as_ref())
        .expect("no process of the pod in its own network namespace")
}

/// Whether `pid` is alive (a zombie is not: this machine's pid 1 does not reap).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// The shims of this containerd and their children (zygote, guests, the pod's pause).
pub(crate) fn pod_processes(c: &Containerd) -> Vec<i32> {
    let shims = c.shim_pids();
    let mut all = shims.clone();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let parent = std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:\t").map(|p| p.parse::<i32>()))
            });
        if let Some(Ok(parent)) = parent
            && shims.contains(&parent)
            && alive(pid)
        {
            all.push(pid);
        }
    }
    all
}

/// After RemovePodSandbox: none of the pod's processes (`before`, the shim and its children),
/// no mount under containerd's directory but its own, the pod cgroup removable (checked by
/// `remove_pod`), and nothing left in the pod's network namespace.
pub(crate) fn assert_pod_gone(c: &Containerd, before: &[i32], netns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while before.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<i32> = before.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "processes left after RemovePodSandbox: {left:?}"
    );
    let mounts: Vec<String> = c
        .mounts()
        .into_iter()
        .filter(|m| !m.ends_with("/root") && !m.contains("io.containerd.grpc.v1.cri/sandboxes"))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let same_netns = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| netns_of(*pid).as_deref() == Some(netns))
        .count();
    assert_eq!(
        same_netns, 0,
        "a process is still in the pod's network namespace"
    );
}

pub(crate) fn log_text(pod: &Pod, name: &str) -> Vec<(String, String, String)> {
    log_lines(&pod.log_dir.join(format!("{name}.log"))).unwrap()
}

#[test]
fn a_hello_pod_runs_logs_in_cri_format_and_leaves_nothing() {
    for version in ALL {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let [hello, sleeper] = images(&c, &cri, &["hello", "sleeper"]).try_into().unwrap();

        let pod = cri.run_pod("hello", logs.path()).unwrap();
        let id = cri.run(&pod, &Spec::new("hello", &hello)).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (0, "Completed"),
            "{version:?}: {status:?}"
        );
        assert_eq!(
            log_text(&pod, "hello"),
            vec![(
                "stdout".to_string(),
                "F".to_string(),
                "Hello from WebAssembly!".to_string()
            )],
            "{version:?}"
        );

        // The guest carries kubelet's OOM score adjustment (BestEffort's 1000), not the shim's.
        let sleeper_pid = {
            let id = cri.run(&pod, &Spec::new("scored", &sleeper)).unwrap();
            cri.pid(&id).unwrap()
        };
        let adj = std::fs::read_to_string(format!("/proc/{sleeper_pid}/oom_score_adj")).unwrap();
        assert_eq!(adj.trim(), "1000", "{version:?}");

        // An exec of a path the container does not have: a clear error, and the container
        // carries on.
        let idle = cri.run(&pod, &Spec::new("idle", &sleeper)).unwrap();
        let err = cri.exec_sync(&idle, &["/missing.wasm"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("entrypoint /missing.wasm not found"),
            "{version:?}: {err:#}"
        );
        assert_eq!(cri.status(&idle).unwrap().state, 1, "{version:?}: running");

        // One shim serves the pod: the sandbox and both containers.
        assert_eq!(c.shim_pids().len(), 1, "{version:?}");
        let processes = pod_processes(&c);
        let netns = pod_netns(&processes);

        cri.remove_pod(&pod).unwrap();
        assert_pod_gone(&c, &processes, &netns);
    }
}

#[test]
fn two_containers_of_a_pod_talk_over_localhost_and_the_host_reaches_the_pod_ip() {
    for version in ALL {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let [server, client] = images(&c, &cri, &["tcp-echo", "tcp-client"])
            .try_into()
            .unwrap();
        let pod = cri.run_pod("talk", logs.path()).unwrap();
        cri.run(&pod, &Spec::new("server", &server).args(&["0.0.0.0:8080"]))
            .unwrap();
        let id = cri
            .run(
                &pod,
                &Spec::new("client", &client).args(&["127.0.0.1:8080", "over loopback"]),
            )
            .unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(15)).unwrap();
        let lines = log_text(&pod, "client");
        assert_eq!(status.exit_code, 0, "{version:?}: {status:?} {lines:?}");
        assert!(
            lines.iter().any(|(_, _, t)| t == "echo: over loopback"),
            "{version:?}: {lines:?}"
        );

        // The host reaches the server at the pod's IP, over the CNI bridge.
        let ip = cri.pod_ip(&pod).unwrap();
        assert!(
            ip.starts_with(&c.network().unwrap().subnet_prefix),
            "{version:?}: {ip}"
        );
        let mut stream = std::net::TcpStream::connect((ip.as_str(), 8080)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"from the host\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        assert_eq!(reply, "echo: from the host\n", "{version:?}");
        drop(stream);
        cri.remove_pod(&pod).unwrap();
    }
}

#[test]
fn exit_codes_oom_stop_with_grace_and_stats_reach_kubelet() {
    for version in ALL {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let [exit_code, trap, hog, sleeper, busy] = images(
            &c,
            &cri,
            &["exit-code", "trap", "memory-hog", "sleeper", "busy-loop"],
        )
        .try_into()
        .unwrap();
        let pod = cri.run_pod("fail", logs.path()).unwrap();

        let id = cri
            .run(&pod, &Spec::new("exit", &exit_code).args(&["3"]))
            .unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (3, "Error"),
            "{version:?}: {status:?}"
        );

        // A trap: exit 134 with the trap's message in the container's log.
        let id = cri.run(&pod, &Spec::new("trap", &trap)).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (134, "Error"),
            "{version:?}: {status:?}"
        );
        let lines = log_text(&pod, "trap");
        assert!(
            lines
                .iter()
                .any(|(stream, _, t)| stream == "stderr" && t.contains("unreachable")),
            "{version:?}: {lines:?}"
        );

        let id = cri
            .run(&pod, &Spec::new("hog", &hog).memory_limit(64 << 20))
            .unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(20)).unwrap();
        assert_eq!(status.reason, "OOMKilled", "{version:?}: {status:?}");

        // Stop with a 2 s grace period: a guest asleep in a host call and one spinning in Wasm
        // code both end on SIGTERM, well within it.
        let sleeping = cri.run(&pod, &Spec::new("sleeper", &sleeper)).unwrap();
        let spinning = cri.run(&pod, &Spec::new("busy", &busy)).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let stats = cri.stats(&spinning).unwrap();
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value);
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        assert!(cpu.unwrap_or(0) > 100_000_000, "{version:?}: cpu {cpu:?}");
        assert!(memory.unwrap_or(0) > 0, "{version:?}: memory {memory:?}");
        let pod_stats = cri.pod_stats(&pod).unwrap();
        let pod_cpu = pod_stats
            .linux
            .and_then(|l| l.cpu)
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value);
        assert!(pod_cpu.unwrap_or(0) > 0, "{version:?}: pod cpu {pod_cpu:?}");
        assert_eq!(c.shim_pids().len(), 1, "{version:?}: one shim per pod");

        for id in [&sleeping, &spinning] {
            let asked = Instant::now();
            cri.stop(id, 2).unwrap();
            let took = asked.elapsed();
            let status = cri.status(id).unwrap();
            assert!(
                took < Duration::from_secs(3),
                "{version:?}: stop took {took:?}"
            );
            assert_eq!(status.exit_code, 143, "{version:?}: {status:?}");
        }
        cri.remove_pod(&pod).unwrap();
    }
}

#[test]
fn a_test_that_stops_part_way_leaves_no_pod_behind() {
    let c = Containerd::start_cri(wasmtime_shim_tests::containerd::Version::V1_6).unwrap();
    let cri = Cri::connect(&c).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let [sleeper] = images(&c, &cri, &["sleeper"]).try_into().unwrap();
    let pod = cri.run_pod("abandoned", logs.path()).unwrap();
    cri.run(&pod, &Spec::new("idle", &sleeper)).unwrap();
    let processes = pod_processes(&c);
    let netns = pod_netns(&processes);
    // As when a test panics: the client goes without RemovePodSandbox.
    drop(cri);
    assert_pod_gone(&c, &processes, &netns);
    let cgroup = crate::cgroup_file(&pod.cgroup_parent, "memory", "", "");
    assert!(!cgroup.exists(), "{} left", cgroup.display());
}
