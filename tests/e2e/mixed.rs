//! Mixed pods through CRI, driven as kubelet drives them: a Wasm pod holding native containers
//! (an init container, a sidecar, a `kubectl debug`-style container), run by runc under this
//! shim in the pod's namespaces and cgroup.

use super::cri::{assert_pod_gone, images, log_text, netns_of, pod_netns, pod_processes};
use std::time::Duration;
use wasmtime_shim_tests::containerd::{Containerd, Version};
use wasmtime_shim_tests::cri::{Cri, Spec};
use wasmtime_shim_tests::image::busybox;

/// The native busybox image in CRI's namespace.
fn busybox_image(c: &Containerd, cri: &Cri, dir: &std::path::Path) -> String {
    let image = busybox("localhost/native/busybox:latest").unwrap();
    let tar = dir.join("busybox.tar");
    image.write(&tar).unwrap();
    c.ctr_ok(&["-n", "k8s.io", "images", "import", &tar.to_string_lossy()])
        .unwrap();
    cri.wait_image(&image.name).unwrap();
    image.name
}

fn said(lines: &[(String, String, String)], text: &str) -> bool {
    lines.iter().any(|(_, _, t)| t.contains(text))
}

#[test]
fn a_wasm_pod_holds_native_init_sidecar_and_debug_containers() {
    for version in [Version::V1_6, Version::V2_1] {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let images_dir = tempfile::tempdir().unwrap();
        let [http, reader] = images(&c, &cri, &["http-hello", "file-reader"])
            .try_into()
            .unwrap();
        let native = busybox_image(&c, &cri, images_dir.path());
        let pod = cri.run_pod("mixed", logs.path()).unwrap();

        // A native init container fills an emptyDir-style volume; the Wasm container after it
        // reads what it wrote.
        let shared = tempfile::tempdir().unwrap();
        let init = Spec::new("init", &native)
            .command(&[
                "sh",
                "-c",
                "echo written by the init container > /shared/greeting",
            ])
            .mount(shared.path(), "/shared", false);
        let id = cri.run(&pod, &init).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(30)).unwrap();
        assert_eq!(status.exit_code, 0, "{version:?}: {status:?}");
        let read = Spec::new("reader", &reader)
            .command(&["/file-reader.wasm", "/shared/greeting"])
            .mount(shared.path(), "/shared", true);
        let id = cri.run(&pod, &read).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(30)).unwrap();
        let lines = log_text(&pod, "reader");
        assert_eq!(status.exit_code, 0, "{version:?}: {lines:?}");
        assert!(
            said(&lines, "written by the init container"),
            "{version:?}: {lines:?}"
        );

        // Exec probes into a Wasm container: a Wasm command, its exit codes.
        let exec_image = super::native::wasm_exec_image(images_dir.path());
        let tar = images_dir.path().join("wasm-exec.tar");
        c.ctr_ok(&["-n", "k8s.io", "images", "import", &tar.to_string_lossy()])
            .unwrap();
        cri.wait_image(&exec_image.name).unwrap();
        let app = cri.run(&pod, &Spec::new("app", &exec_image.name)).unwrap();
        for code in [0, 3] {
            let out = cri
                .exec_sync(&app, &["exit-code.wasm", &code.to_string()])
                .unwrap();
            assert_eq!(
                out.exit_code,
                code,
                "{version:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = cri
            .exec_sync(&app, &["/bin/args-env.wasm", "probe"])
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("probe"),
            "{version:?}"
        );

        // The Wasm HTTP server and a native sidecar that reaches it on the pod's localhost.
        cri.run(&pod, &Spec::new("server", &http)).unwrap();
        let fetch = "for i in $(seq 150); do wget -qO- http://127.0.0.1:8080/ && exit 0; \
                     sleep 0.2; done; exit 1";
        let id = cri
            .run(
                &pod,
                &Spec::new("sidecar", &native).command(&["sh", "-c", fetch]),
            )
            .unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(60)).unwrap();
        let lines = log_text(&pod, "sidecar");
        assert_eq!(status.exit_code, 0, "{version:?}: {lines:?}");
        assert!(
            said(&lines, "Hello from a wasi:http component!"),
            "{version:?}: {lines:?}"
        );

        // A debug container added to the running pod: in the pod's network namespace, its
        // cgroup under the pod's, measured, stopped with SIGTERM within its grace period.
        let processes = pod_processes(&c);
        let netns = pod_netns(&processes);
        let debug = Spec::new("debug", &native).command(&[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ]);
        let id = cri.run(&pod, &debug).unwrap();
        let pid = cri.pid(&id).unwrap();
        assert_eq!(
            netns_of(pid).as_deref(),
            Some(netns.as_str()),
            "{version:?}"
        );
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroup
                .lines()
                .any(|l| l.contains(pod.cgroup_parent.trim_start_matches('/'))),
            "{version:?}: {cgroup} not under {}",
            pod.cgroup_parent
        );
        // Exec probes into it: output, exit codes, a timeout that stops the command.
        let out = cri.exec_sync(&id, &["cat", "/etc/hostname"]).unwrap();
        assert_eq!(
            (out.exit_code, String::from_utf8_lossy(&out.stdout).trim()),
            (0, "mixed"),
            "{version:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = cri
            .exec_sync(&id, &["sh", "-c", "echo to stderr >&2; exit 3"])
            .unwrap();
        assert_eq!(out.exit_code, 3, "{version:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "to stderr\n",
            "{version:?}"
        );
        let began = std::time::Instant::now();
        let timed_out = cri.exec_sync_within(&id, &["sleep", "60"], 1);
        assert!(timed_out.is_err(), "{version:?}: {timed_out:?}");
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "{version:?}: {:?}",
            began.elapsed()
        );
        assert_eq!(
            cri.status(&id).unwrap().state,
            1,
            "{version:?}: still running"
        );
        let stats = cri.stats(&id).unwrap();
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        assert!(
            memory > 0,
            "{version:?}: no memory in the native container's stats"
        );
        cri.stop(&id, 10).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(20)).unwrap();
        assert_eq!(status.exit_code, 0, "{version:?}: {status:?}");

        // A native container over its memory limit is OOM-killed by the kernel, and CRI says so.
        let hog = Spec::new("hog", &native)
            .command(&[
                "sh",
                "-c",
                "busybox head -c 400000000 /dev/zero | busybox tail",
            ])
            .memory_limit(32 << 20);
        let id = cri.run(&pod, &hog).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(60)).unwrap();
        assert_eq!(status.reason, "OOMKilled", "{version:?}: {status:?}");

        let processes = pod_processes(&c);
        cri.remove_pod(&pod).unwrap();
        assert_pod_gone(&c, &processes, &netns);
    }
}

/// The executor annotation on a pod (which the installer lets through with `pod_annotations`)
/// reaches the shim and picks the executor of the container it names, and only that one.
#[test]
fn a_pod_annotation_chooses_a_container_s_executor() {
    let c = Containerd::start_cri(Version::V2_1).unwrap();
    let cri = Cri::connect(&c).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let images_dir = tempfile::tempdir().unwrap();
    let native = busybox_image(&c, &cri, images_dir.path());
    let mut pod = cri.run_pod("annotated", logs.path()).unwrap();
    pod.config.annotations.insert(
        "wasmtime.containerd.io/executor.forced".into(),
        "wasm".into(),
    );
    let free = Spec::new("free", &native).command(&["sh", "-c", "exit 4"]);
    let id = cri.run(&pod, &free).unwrap();
    let status = cri.wait_exited(&id, Duration::from_secs(30)).unwrap();
    assert_eq!(status.exit_code, 4, "{status:?}");
    let forced = Spec::new("forced", &native).command(&["sh", "-c", "exit 4"]);
    let err = cri.run(&pod, &forced).unwrap_err();
    assert!(
        format!("{err:#}").contains("is to run as WebAssembly"),
        "a native program forced to Wasm: {err:#}"
    );
    cri.remove_pod(&pod).unwrap();
}
