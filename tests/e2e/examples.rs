//! Each example runs through `ctr run --rm` with the right output and exit status.

use super::*;
use wasmtime_shim_tests::containerd::ALL;

#[test]
fn examples_run_with_their_output_and_status() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let vol = tempfile::tempdir().unwrap();
        std::fs::write(vol.path().join("note.txt"), "a file in the volume\n").unwrap();
        let mount = format!(
            "type=bind,src={},dst=/mnt/volume,options=rbind:ro",
            vol.path().display()
        );
        // (image, ctr options, args, stdout, exit status)
        type Case<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>, &'a str, i32);
        let cases: Vec<Case> = vec![
            ("hello", vec![], vec![], "Hello from WebAssembly!\n", 0),
            (
                "hello-component",
                vec![],
                vec![],
                "Hello from a WebAssembly component!\n",
                0,
            ),
            (
                "exit-code",
                vec![],
                vec!["/exit-code.wasm", "7"],
                "exiting with 7\n",
                7,
            ),
            ("exit-code", vec![], vec![], "exiting with 0\n", 0),
            (
                "args-env",
                vec!["--env", "EXTRA=x y"],
                vec![],
                "arg[0]=args-env.wasm\narg[1]=first\narg[2]=second arg\nenv EXTRA=x y\n\
                 env GREETING=hello\nenv PATH=/app/bin:/bin\ncwd=/\n",
                0,
            ),
            (
                "file-reader",
                vec!["--mount", &mount],
                vec![
                    "/file-reader.wasm",
                    "/data/message.txt",
                    "/mnt/volume/note.txt",
                ],
                "/data/message.txt: a file inside the image\n/mnt/volume/note.txt: a file in the volume\n",
                0,
            ),
            ("trap", vec![], vec![], "about to trap\n", 134),
        ];
        for (image, opts, args, stdout, status) in cases {
            let image_ref = c.import_example(image).unwrap();
            let id = unique(image);
            let out = ctr_run(&c, &opts, &image_ref, &id, &args);
            assert_eq!(
                text(&out.stdout),
                stdout,
                "{version:?} {image}: {}",
                text(&out.stderr)
            );
            assert_eq!(
                out.status.code(),
                Some(status),
                "{version:?} {image}: {}",
                text(&out.stderr)
            );
            if image == "trap" {
                let stderr = text(&out.stderr);
                assert!(
                    stderr.contains("wasm `unreachable` instruction executed"),
                    "{stderr}"
                );
            }
            assert_gone(&c, &id);
        }
        assert!(c.mounts().is_empty(), "{:?}", c.mounts());
    }
}

#[test]
fn stdin_is_connected() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("cat").unwrap();
        let id = unique("cat");
        let mut child = c
            .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &image, &id])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"through the fifo\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            text(&out.stdout),
            "through the fifo\n",
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));
        assert_gone(&c, &id);
    }
}

#[test]
fn shim_logs_reach_containerd_and_the_second_start_does_not_compile() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("exit-code").unwrap();
        let (first, second) = (unique("compile"), unique("cached"));
        assert_eq!(
            ctr_run(&c, &[], &image, &first, &["/exit-code.wasm", "3"])
                .status
                .code(),
            Some(3)
        );
        assert_eq!(
            ctr_run(&c, &[], &image, &second, &[]).status.code(),
            Some(0)
        );
        let log = c.log();
        let line = |id: &str, what: &str| {
            log.lines()
                .find(|l| l.contains(&format!("create{{id={id}}}")) && l.contains(what))
                .map(str::to_string)
        };
        assert!(
            line(&first, "cache=\"compiled\"").is_some(),
            "{version:?}: {log}"
        );
        assert!(
            line(&second, "cache=\"hit\"").is_some(),
            "{version:?}: {log}"
        );
        assert!(
            log.contains(&format!("guest exited id=\"{first}\"")),
            "{version:?}"
        );
    }
}

#[test]
fn a_detached_task_can_be_attached() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("sleeper").unwrap();
        let id = unique("attach");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "/sleeper.wasm",
            "1",
        ])
        .unwrap();
        // Whatever `ctr run -d` read before leaving is gone with it (as with runc); what the
        // guest writes after the attach reaches it, and the attach ends when the guest does.
        let out = c.ctr(&["tasks", "attach", &id]).unwrap();
        let stdout = text(&out.stdout);
        assert!(
            stdout == "woke up\n" || stdout == "sleeping for 1s\nwoke up\n",
            "{version:?}: {stdout:?} {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));
        let _ = c.ctr(&["tasks", "delete", &id]);
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
    }
}
