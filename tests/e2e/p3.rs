//! A WASIp3 command (examples/p3-command: exports `wasi:cli/run@0.3`, uses WASI 0.3 for its
//! arguments, environment, stdin, stdout and clock) under the shim, as a WASIp2 command runs:
//! argv and env from the spec, exit codes of the README's table, stdin to EOF, SIGTERM.

use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::ALL;

#[test]
fn a_wasip3_command_runs_like_a_wasip2_one() {
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("p3-command").unwrap();
        let run = |name: &str, args: &[&str]| {
            let id = unique(name);
            let mut all = vec!["run", "--rm", "--env", "GREETING=hi from p3", "--runtime"];
            all.extend_from_slice(&[RUNTIME, &image, &id, "/p3-command.wasm"]);
            all.extend_from_slice(args);
            let out = c.ctr(&all).unwrap();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let (code, stdout, stderr) = run("p3-args", &["one", "two words"]);
        assert_eq!(code, Some(0), "{version:?}: {stderr}");
        for line in [
            "arg /p3-command.wasm",
            "arg one",
            "arg two words",
            "env GREETING=hi from p3",
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "{version:?}: {line:?} not in {stdout}"
            );
        }
        assert_eq!(run("p3-exit", &["exit", "7"]).0, Some(7), "{version:?}");
        assert_eq!(run("p3-fail", &["fail"]).0, Some(1), "{version:?}");
        let (code, _, stderr) = run("p3-trap", &["trap"]);
        assert_eq!(code, Some(134), "{version:?}: {stderr}");

        // stdin to its end, through a WASI 0.3 stream.
        let id = unique("p3-cat");
        let out = c
            .ctr_with_input(
                &[
                    "run",
                    "--rm",
                    "--runtime",
                    RUNTIME,
                    &image,
                    &id,
                    "/p3-command.wasm",
                    "cat",
                ],
                b"through wasi 0.3\n",
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{version:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "through wasi 0.3\n", "{version:?}");

        // SIGTERM while it waits on the clock: 143, as for any command.
        let id = unique("p3-sleep");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            &image,
            &id,
            "/p3-command.wasm",
            "sleep",
            "60",
        ])
        .unwrap();
        assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));
        c.ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", &id])
            .unwrap();
        assert!(
            stopped_within(&c, &id, Duration::from_secs(10)),
            "{version:?}"
        );
        assert_eq!(delete_status(&c, &id), 143, "{version:?}");
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
    }
}
