//! Native containers (an ELF or `#!` entrypoint) run through runc under this shim, driven with
//! `ctr` as a user would: output and exit codes, signals, pause/resume, metrics from the cgroup
//! runc made, and nothing left behind.

use super::confinement::{guest_pid, kill_and_remove};
use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::ALL;
use wasmtime_shim_tests::image::busybox;

/// Imports the native busybox image into `c`; returns its name.
pub(crate) fn import_busybox(c: &Containerd, dir: &std::path::Path) -> String {
    let image = busybox("localhost/native/busybox:latest").unwrap();
    let tar = dir.join("busybox.tar");
    image.write(&tar).unwrap();
    c.import(&tar).unwrap();
    image.name
}

#[test]
fn native_programs_run_through_runc_with_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = import_busybox(&c, dir.path());

        let id = unique("native-echo");
        let out = ctr_run(&c, &[], &image, &id, &["/bin/echo", "hello from runc"]);
        assert!(out.status.success(), "{version:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello from runc\n", "{version:?}");
        assert_gone(&c, &id);

        // Found through PATH, a shell script of its own (`#!`), a non-zero exit.
        let id = unique("native-exit");
        let out = ctr_run(
            &c,
            &[],
            &image,
            &id,
            &["sh", "-c", "echo to stderr >&2; exit 3"],
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("to stderr"), "{version:?}");
        assert_gone(&c, &id);

        // A native program may not run as Wasm when the annotation says so.
        let id = unique("native-forced");
        let out = ctr_run(
            &c,
            &["--annotation", "wasmtime.containerd.io/executor=wasm"],
            &image,
            &id,
            &["/bin/busybox", "true"],
        );
        assert!(!out.status.success(), "{version:?}");
        assert!(
            text(&out.stderr).contains("is a native (ELF) program, but the container is to run"),
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert_gone(&c, &id);
    }
}

#[test]
fn a_native_container_is_signalled_paused_measured_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = import_busybox(&c, dir.path());
        let id = unique("native-sleep");
        c.ctr_ok(&[
            "run",
            "-d",
            "--memory-limit",
            "67108864",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 0.1; done",
        ])
        .unwrap();
        assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));
        let limit = cgroup_file(
            &format!("/default/{id}"),
            "memory",
            "memory.limit_in_bytes",
            "memory.max",
        );
        assert_eq!(std::fs::read_to_string(&limit).unwrap().trim(), "67108864");
        let metrics = c.ctr_ok(&["tasks", "metrics", &id]).unwrap();
        assert!(
            metrics.contains("memory.usage_in_bytes"),
            "{version:?}: {metrics}"
        );
        let pids = c.ctr_ok(&["tasks", "ps", &id]).unwrap();
        assert!(pids.lines().count() >= 2, "{version:?}: {pids}");

        // Exec into it: output and the exit status, through ctr.
        let out = c
            .ctr(&[
                "tasks",
                "exec",
                "--exec-id",
                "probe",
                &id,
                "sh",
                "-c",
                "echo in the container; exit 5",
            ])
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(5),
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "in the container\n", "{version:?}");

        // Its stdin: every byte, then EOF when the client's input ends (`echo x | kubectl exec
        // -i`), with no CloseIO from ctr.
        let input: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let out = c
            .ctr_with_input(
                &[
                    "tasks",
                    "exec",
                    "--exec-id",
                    "stdin",
                    &id,
                    "sh",
                    "-c",
                    "wc -c; exit 3",
                ],
                &input,
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{version:?}: stdin never ended: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "200000", "{version:?}");

        // With a terminal (`kubectl exec -it`): ctr needs one of its own, which `script` gives
        // it; the process sees a pty, its output comes back through it, and its status.
        let ctr = c
            .ctr_command(&[])
            .get_program()
            .to_string_lossy()
            .into_owned();
        let command = format!(
            "{ctr} --address {} tasks exec -t --exec-id tty {id} sh -c 'tty; stty size; exit 7'",
            c.socket().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{version:?}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("/dev/pts/"),
            "{version:?}: not a terminal: {stdout}"
        );

        c.ctr_ok(&["tasks", "pause", &id]).unwrap();
        assert_eq!(task_status(&c, &id).as_deref(), Some("PAUSED"));
        c.ctr_ok(&["tasks", "resume", &id]).unwrap();
        assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));

        c.ctr_ok(&["tasks", "kill", "-s", "SIGTERM", &id]).unwrap();
        assert!(
            stopped_within(&c, &id, Duration::from_secs(20)),
            "{version:?}"
        );
        assert_eq!(delete_status(&c, &id), 42, "{version:?}");
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
        assert!(c.mounts().is_empty(), "{version:?}: {:?}", c.mounts());
        let state = std::path::Path::new("/run/containerd/runc/default").join(&id);
        assert!(
            !state.exists(),
            "{version:?}: runc state {} left",
            state.display()
        );
    }
}

/// A native container whose shim is killed: containerd's `delete` action removes it through
/// runc (its processes, its cgroup, runc's state).
#[test]
fn a_native_container_of_a_killed_shim_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = import_busybox(&c, dir.path());
        let id = unique("native-shimkill");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "sleep",
            "1000",
        ])
        .unwrap();
        let init = guest_pid(&c, &id);
        let shims = c.shim_pids();
        assert_eq!(shims.len(), 1, "{shims:?}");
        // SAFETY: killing the shim this test's containerd started.
        unsafe { libc::kill(shims[0], libc::SIGKILL) };
        let stopped = wasmtime_shim_tests::containerd::wait_for(Duration::from_secs(10), || {
            (task_status(&c, &id).as_deref() != Some("RUNNING")).then_some(())
        });
        assert!(stopped.is_some(), "{version:?}: {:?}", task_status(&c, &id));
        let _ = c.ctr(&["tasks", "delete", &id]).unwrap();
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        // containerd runs the dead shim's `delete` action on its own schedule.
        let cleaned = wasmtime_shim_tests::containerd::wait_for(Duration::from_secs(20), || {
            crate::leftover_cgroups(&id).is_empty().then_some(())
        });
        assert!(
            cleaned.is_some(),
            "{version:?}: {:?}",
            crate::leftover_cgroups(&id)
        );
        assert_gone(&c, &id);
        // Gone, or a zombie until its new parent reaps it.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{init}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .next()
                        .map(String::from)
                })
                .filter(|state| state != "Z")
        };
        assert_eq!(
            alive(),
            None,
            "{version:?}: the native init {init} outlived its shim"
        );
        let state = std::path::Path::new("/run/containerd/runc/default").join(&id);
        assert!(
            !state.exists(),
            "{version:?}: runc state {} left",
            state.display()
        );
    }
}

/// A Wasm image with a long-running program and two to exec: `exit-code` and `args-env`.
pub(crate) fn wasm_exec_image(dir: &std::path::Path) -> wasmtime_shim_tests::image::Image {
    let guests =
        wasmtime_shim_tests::containerd::workspace().join("target/guests/wasm32-wasip1/release");
    let read = |name: &str| std::fs::read(guests.join(name)).unwrap();
    let image = wasmtime_shim_tests::image::Image::new("localhost/exec/wasm:latest")
        .file("/sleeper.wasm", read("sleeper.wasm"))
        .file("/bin/exit-code.wasm", read("exit-code.wasm"))
        .file("/bin/args-env.wasm", read("args-env.wasm"))
        .file("/bin/cat.wasm", read("cat.wasm"))
        .file("/data/not-wasm.txt", b"plain text".to_vec())
        .env("PATH=/bin")
        .entrypoint(&["/sleeper.wasm"]);
    image.write(&dir.join("wasm-exec.tar")).unwrap();
    image
}

#[test]
fn exec_into_a_wasm_container_runs_a_wasm_program_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = wasm_exec_image(dir.path());
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        c.import(&dir.path().join("wasm-exec.tar")).unwrap();
        let id = unique("wasm-exec");
        c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, &image.name, &id])
            .unwrap();
        let exec = |exec_id: &str, args: &[&str]| {
            let mut all = vec!["tasks", "exec", "--exec-id", exec_id, id.as_str()];
            all.extend_from_slice(args);
            c.ctr(&all).unwrap()
        };
        // Found through the image's PATH, with its own argv and exit status.
        let out = exec("code", &["exit-code.wasm", "9"]);
        assert_eq!(
            out.status.code(),
            Some(9),
            "{version:?}: {}",
            text(&out.stderr)
        );
        let out = exec("args", &["/bin/args-env.wasm", "one", "two"]);
        assert!(out.status.success(), "{version:?}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("one") && stdout.contains("two"),
            "{version:?}: {stdout}"
        );
        // Its stdin, to the end.
        let out = c
            .ctr_with_input(
                &["tasks", "exec", "--exec-id", "cat", &id, "cat.wasm"],
                b"through a Wasm exec\n",
                Duration::from_secs(30),
            )
            .unwrap();
        assert!(out.status.success(), "{version:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "through a Wasm exec\n", "{version:?}");
        // In the container's pid namespace and cgroup, as its first guest.
        let init = guest_pid(&c, &id);
        let guests: Vec<(i32, Vec<String>)> =
            wasmtime_shim_tests::containerd::processes_with_arg("--wasmtime-guest")
                .into_iter()
                .filter(|(_, args)| args.iter().any(|a| a.starts_with(&id)))
                .collect();
        assert_eq!(guests.len(), 1, "{version:?}: exec guests left: {guests:?}");
        // A path that is not Wasm, or missing, fails with the reason.
        let out = exec("text", &["/data/not-wasm.txt"]);
        assert!(!out.status.success(), "{version:?}");
        assert!(
            text(&out.stderr).contains("/data/not-wasm.txt is not a WebAssembly module"),
            "{version:?}: {}",
            text(&out.stderr)
        );
        let out = exec("missing", &["/bin/sh", "-c", "true"]);
        assert!(
            text(&out.stderr).contains("entrypoint /bin/sh not found"),
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert!(init > 0);
        assert_eq!(
            task_status(&c, &id).as_deref(),
            Some("RUNNING"),
            "{version:?}"
        );
        kill_and_remove(&c, &id);
        assert_gone(&c, &id);
    }
}
