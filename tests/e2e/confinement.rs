//! Kernel confinement and pod limits, seen from outside the guest: namespaces, cgroup,
//! capabilities, uid, pivot_root, shared network namespaces, CPU quota, pause/resume, metrics,
//! read-only filesystems and escape attempts.

use super::*;
use std::time::{Duration, Instant};
use wasmtime_shim_tests::containerd::{ALL, wait_for};

/// Capabilities a WASI host may keep: DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID,
/// NET_BIND_SERVICE.
pub const ALLOWED: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 10);
/// Granted by ctr's default spec, dropped by the shim: CHOWN, KILL, SETGID, SETUID, SETPCAP,
/// NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP, and SYS_ADMIN for good measure.
const DROPPED: [u32; 11] = [0, 5, 6, 7, 8, 13, 18, 21, 27, 29, 31];

/// The guest's pid, from `ctr tasks ps`.
pub fn guest_pid(c: &Containerd, id: &str) -> i32 {
    let ps = c.ctr_ok(&["tasks", "ps", id]).unwrap();
    ps.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("ps {id}: {ps}"))
}

pub fn kill_and_remove(c: &Containerd, id: &str) {
    c.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", id])
        .unwrap();
    let stopped = stopped_within(c, id, Duration::from_secs(5));
    assert!(stopped, "{id} not stopped");
    delete_status(c, id);
    c.ctr_ok(&["containers", "delete", id]).unwrap();
    assert_gone(c, id);
}

/// A value of `ctr tasks metrics`.
fn metric(c: &Containerd, id: &str, key: &str) -> u64 {
    let metrics = c.ctr_ok(&["tasks", "metrics", id]).unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {metrics}"))
}

#[test]
fn the_guest_is_confined_like_a_container() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("sleeper-user").unwrap();
        let id = unique("confined");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image, &id])
            .unwrap();
        let pid = guest_pid(&c, &id);
        let shim = c.shim_pids()[0];
        for ns in ["mnt", "pid", "ipc", "uts", "net"] {
            let ours = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let shims = std::fs::read_link(format!("/proc/{shim}/ns/{ns}")).unwrap();
            assert_ne!(
                ours, shims,
                "{version:?}: the guest shares the shim's {ns} namespace"
            );
        }
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups
                .lines()
                .any(|l| l.ends_with(&format!(":/default/{id}"))),
            "{version:?}: not in its cgroup: {cgroups}"
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .trim()
                .to_string()
        };
        for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            let caps = u64::from_str_radix(&field(set), 16).unwrap();
            assert_eq!(caps & !ALLOWED, 0, "{version:?}: {set} {caps:x}");
            for cap in DROPPED {
                assert_eq!(
                    caps & (1 << cap),
                    0,
                    "{version:?}: {set} has capability {cap}"
                );
            }
        }
        assert_eq!(
            field("Uid:").split_whitespace().collect::<Vec<_>>(),
            ["1000"; 4]
        );
        assert_eq!(
            field("Gid:").split_whitespace().collect::<Vec<_>>(),
            ["1000"; 4]
        );
        // Its `/` is the image's root filesystem, not the host's.
        let root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(root.iter().any(|n| n == "sleeper.wasm"), "{root:?}");
        for host_only in ["usr", "bin", "home", "var"] {
            assert!(
                !root.iter().any(|n| n == host_only),
                "{version:?}: {root:?}"
            );
        }
        kill_and_remove(&c, &id);
    }
}

#[test]
fn containers_joined_to_one_network_namespace_talk_over_loopback() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let server_image = c.import_example("tcp-echo").unwrap();
        let client_image = c.import_example("tcp-client").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let server = unique("server");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            &server_image,
            &server,
            "/tcp-echo.wasm",
            &addr,
        ])
        .unwrap();
        let netns = format!("network:/proc/{}/ns/net", guest_pid(&c, &server));
        let client = unique("client");
        let out = ctr_run(
            &c,
            &["--with-ns", &netns],
            &client_image,
            &client,
            &["/tcp-client.wasm", &addr, "ping"],
        );
        assert_eq!(
            text(&out.stdout),
            "echo: ping\n",
            "{version:?}: {}",
            text(&out.stderr)
        );
        // The server's loopback is its own: nothing listens there in the host's namespace.
        assert!(std::net::TcpStream::connect(&addr).is_err(), "{version:?}");
        kill_and_remove(&c, &server);
        assert_gone(&c, &client);
    }
}

#[test]
fn cpu_quota_holds_and_metrics_grow_with_work() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("busy-loop").unwrap();
        let id = unique("quota");
        c.ctr_ok(&[
            "run",
            "-d",
            "--cpus",
            "0.2",
            "--runtime",
            RUNTIME,
            &image,
            &id,
        ])
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let (t0, cpu0) = (Instant::now(), metric(&c, &id, "cpuacct.usage"));
        std::thread::sleep(Duration::from_secs(3));
        let (t1, cpu1) = (Instant::now(), metric(&c, &id, "cpuacct.usage"));
        let share = (cpu1 - cpu0) as f64 / (t1 - t0).as_nanos() as f64;
        eprintln!("{version:?}: CPU share under --cpus 0.2: {share:.3}");
        assert!((0.1..=0.3).contains(&share), "{version:?}: share {share}");
        kill_and_remove(&c, &id);

        let image = c.import_example("memory-hog").unwrap();
        let id = unique("growing");
        c.ctr_ok(&[
            "run",
            "-d",
            "--memory-limit",
            "536870912",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "/memory-hog.wasm",
            "40",
        ])
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let before = metric(&c, &id, "memory.usage_in_bytes");
        std::thread::sleep(Duration::from_secs(1));
        let after = metric(&c, &id, "memory.usage_in_bytes");
        assert!(
            after > before + (10 << 20),
            "{version:?}: memory {before} → {after}"
        );
        kill_and_remove(&c, &id);
    }
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_go_on() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("counter").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("counter.log");
        let id = unique("counter");
        c.ctr_ok(&[
            "run",
            "-d",
            "--log-uri",
            &format!("file://{}", log.display()),
            "--runtime",
            RUNTIME,
            &image,
            &id,
        ])
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nlog: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let lines = || {
            std::fs::read_to_string(&log)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        assert!(
            wait_for(Duration::from_secs(5), || (lines() >= 3).then_some(())).is_some(),
            "{version:?}: the counter does not count"
        );
        c.ctr_ok(&["tasks", "pause", &id]).unwrap();
        assert_eq!(task_status(&c, &id).as_deref(), Some("PAUSED"));
        let paused_at = lines();
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(lines(), paused_at, "{version:?}: counted while paused");
        c.ctr_ok(&["tasks", "resume", &id]).unwrap();
        assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));
        assert!(
            wait_for(Duration::from_secs(2), || (lines() >= paused_at + 3)
                .then_some(()))
            .is_some(),
            "{version:?}: no counting after resume"
        );
        kill_and_remove(&c, &id);
    }
}

#[test]
fn read_only_filesystems_refuse_writes_and_escapes_fail() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let writer = c.import_example("file-writer").unwrap();
        let id = unique("ro");
        let out = ctr_run(&c, &["--read-only"], &writer, &id, &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("cannot write /written.txt: Operation not permitted"),
            "{version:?}: {}",
            text(&out.stdout)
        );

        let volume = tempfile::tempdir().unwrap();
        for (mode, expect) in [
            ("rw", "wrote /data/out.txt"),
            ("ro", "Operation not permitted"),
        ] {
            let mount = format!(
                "type=bind,src={},dst=/data,options=rbind:{mode}",
                volume.path().display()
            );
            let id = unique("volume");
            let out = ctr_run(
                &c,
                &["--mount", &mount],
                &writer,
                &id,
                &["/file-writer.wasm", "/data/out.txt", mode],
            );
            assert!(
                text(&out.stdout).contains(expect),
                "{version:?} {mode}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        // Only the rw run wrote, through the volume, to the host directory.
        assert_eq!(
            std::fs::read_to_string(volume.path().join("out.txt")).unwrap(),
            "rw"
        );

        let reader = c.import_example("file-reader").unwrap();
        let host_secret = volume.path().join("secret");
        std::fs::write(&host_secret, "host secret").unwrap();
        let secret = host_secret.to_string_lossy().into_owned();
        let id = unique("escape");
        let targets = [
            "/etc/passwd",
            "/proc/self/status",
            "/proc/1/root/etc/hostname",
            "../../../../../etc/hostname",
            secret.as_str(),
        ];
        let mut args = vec!["/file-reader.wasm"];
        args.extend_from_slice(&targets);
        let out = ctr_run(&c, &[], &reader, &id, &args);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{version:?}: {stdout}");
        for target in targets {
            assert!(
                stdout.contains(&format!("{target}: error:")),
                "{version:?}: {target} was readable: {stdout}"
            );
        }
        assert!(!stdout.contains("host secret"), "{stdout}");
    }
}

/// A device node shipped in the image, or in a volume, cannot be opened: the guest's mounts are
/// nodev. (The nodes carry /dev/null's numbers, which containerd's default device rules allow,
/// so on cgroup v1 too only nodev stands in the way; cgroup v2 has no devices controller.)
#[test]
fn device_nodes_in_the_image_or_a_volume_cannot_be_opened() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("device-node").unwrap();
        let volume = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("mknod")
            .arg(volume.path().join("null"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(made.success());
        let mount = format!(
            "type=bind,src={},dst=/volume,options=rbind:rw",
            volume.path().display()
        );
        let id = unique("device");
        let args = [
            "/file-reader.wasm",
            "/devices/null",
            "/volume/null",
            "/data/message.txt",
        ];
        let out = ctr_run(&c, &["--mount", &mount], &image, &id, &args);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{version:?}: {stdout}{}",
            text(&out.stderr)
        );
        for node in ["/devices/null", "/volume/null"] {
            assert!(
                stdout.contains(&format!("{node}: error: Permission denied")),
                "{version:?}: {node} was opened: {stdout}"
            );
        }
        // The reader itself works: the ordinary file next to the nodes is read.
        assert!(stdout.contains("/data/message.txt: "), "{stdout}");
        assert!(!stdout.contains("/data/message.txt: error"), "{stdout}");
    }
}

#[test]
fn a_sandbox_runs_pause_and_the_pods_containers_join_its_namespaces() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        // The sandbox's image is not run at all: the shim runs its built-in pause.
        let hello = c.import_example("hello").unwrap();
        let server_image = c.import_example("tcp-echo").unwrap();
        let client_image = c.import_example("tcp-client").unwrap();
        let pod = unique("pod");
        let sandbox_id = format!("{pod}-sandbox");
        let in_pod = format!("io.kubernetes.cri.sandbox-id={pod}");
        c.ctr_ok(&[
            "run",
            "-d",
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            &in_pod,
            "--runtime",
            RUNTIME,
            &hello,
            &sandbox_id,
        ])
        .unwrap();
        assert_eq!(task_status(&c, &sandbox_id).as_deref(), Some("RUNNING"));
        let pause = guest_pid(&c, &sandbox_id);
        let ns =
            |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();

        let server = format!("{pod}-server");
        let mut args = vec!["run", "-d", "--annotation", &in_pod];
        let joins: Vec<String> = ["pid", "network", "ipc", "uts"]
            .iter()
            .map(|kind| {
                let file = if *kind == "network" { "net" } else { kind };
                format!("{kind}:/proc/{pause}/ns/{file}")
            })
            .collect();
        for join in &joins {
            args.extend(["--with-ns", join.as_str()]);
        }
        args.extend([
            "--runtime",
            RUNTIME,
            &server_image,
            &server,
            "/tcp-echo.wasm",
            "127.0.0.1:8080",
        ]);
        c.ctr_ok(&args).unwrap();
        let server_pid = guest_pid(&c, &server);
        for kind in ["pid", "net", "ipc", "uts"] {
            assert_eq!(ns(server_pid, kind), ns(pause, kind), "{version:?}: {kind}");
        }
        // The pod's containers share one shim.
        assert_eq!(c.shim_pids().len(), 1, "{version:?}");

        let client = format!("{pod}-client");
        let netns = format!("network:/proc/{pause}/ns/net");
        let out = ctr_run(
            &c,
            &["--with-ns", &netns, "--annotation", &in_pod],
            &client_image,
            &client,
            &["/tcp-client.wasm", "127.0.0.1:8080", "pod"],
        );
        assert_eq!(
            text(&out.stdout),
            "echo: pod\n",
            "{version:?}: {}",
            text(&out.stderr)
        );

        kill_and_remove(&c, &server);
        // pause ends with 0 on SIGTERM.
        c.ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", &sandbox_id])
            .unwrap();
        let stopped = stopped_within(&c, &sandbox_id, Duration::from_secs(2));
        assert!(stopped, "{version:?}: pause did not stop");
        assert_eq!(delete_status(&c, &sandbox_id), 0);
        c.ctr_ok(&["containers", "delete", &sandbox_id]).unwrap();
        assert_gone(&c, &sandbox_id);
    }
}

#[test]
fn the_specs_seccomp_profile_is_loaded() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        // containerd's default profile (CRI's RuntimeDefault) lets wasmtime and WASI work.
        let sleeper = c.import_example("sleeper").unwrap();
        let id = unique("seccomp");
        c.ctr_ok(&[
            "run",
            "-d",
            "--seccomp",
            "--runtime",
            RUNTIME,
            &sleeper,
            &id,
        ])
        .unwrap();
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", guest_pid(&c, &id))).unwrap();
        assert!(
            status.lines().any(|l| l == "Seccomp:\t2"),
            "{version:?}: no filter: {status}"
        );
        kill_and_remove(&c, &id);

        // A profile that refuses socket(2) with EACCES: the guest's connect fails with it.
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("no-sockets.json");
        std::fs::write(
            &profile,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
        )
        .unwrap();
        let client = c.import_example("tcp-client").unwrap();
        let id = unique("no-sockets");
        let out = ctr_run(
            &c,
            &["--seccomp", "--seccomp-profile", &profile.to_string_lossy()],
            &client,
            &id,
            &["/tcp-client.wasm", "127.0.0.1:9"],
        );
        assert_eq!(out.status.code(), Some(1), "{version:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("connect 127.0.0.1:9: Permission denied"),
            "{version:?}: {stderr}"
        );
        assert_gone(&c, &id);
    }
}
