//! Bad input fails `ctr run` with a message that says what is wrong, and leaves nothing behind.

use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, wait_for};
use wasmtime_shim_tests::image::Image;

#[test]
fn bad_entrypoints_fail_clearly_and_leave_nothing() {
    let hello = wat::parse_str(include_str!("../../examples/wat/hello.wat")).unwrap();
    let images = [
        (
            Image::new("localhost/bad/missing:latest")
                .file("/hello.wasm", hello.clone())
                .entrypoint(&["/missing.wasm"]),
            "entrypoint /missing.wasm not found in the container's root filesystem",
        ),
        (
            // Taken for a native program, and refused by runc (a truncated ELF).
            Image::new("localhost/bad/native:latest")
                .file("/app", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec())
                .entrypoint(&["/app"]),
            "exec format error",
        ),
        (
            Image::new("localhost/bad/text:latest")
                .file("/app.txt", b"plain text".to_vec())
                .entrypoint(&["/app.txt"]),
            "entrypoint /app.txt is not a WebAssembly module or component",
        ),
        (
            Image::new("localhost/bad/malformed:latest")
                .file("/bad.wasm", b"\0asm\x01\0\0\0\x01\xff".to_vec())
                .entrypoint(&["/bad.wasm"]),
            "entrypoint /bad.wasm is not valid WebAssembly",
        ),
        (
            Image::new("localhost/bad/escape:latest")
                .file("/hello.wasm", hello.clone())
                .entrypoint(&["/../../../../../../../usr/bin/containerd"]),
            "not found in the container's root filesystem",
        ),
        (
            Image::new("localhost/bad/escape-link:latest")
                .file("/hello.wasm", hello)
                .symlink("/app.wasm", "../../../../../../../../usr/bin/containerd")
                .entrypoint(&["/app.wasm"]),
            "entrypoint /app.wasm not found in the container's root filesystem",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        for (image, message) in &images {
            let tar = dir.path().join("image.tar");
            image.write(&tar).unwrap();
            c.import(&tar).unwrap();
            let id = unique("bad");
            let out = ctr_run(&c, &[], &image.name, &id, &[]);
            assert!(!out.status.success(), "{version:?} {}", image.name);
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains(message),
                "{version:?} {}: {stderr}",
                image.name
            );
            assert_gone(&c, &id);
        }
        let settled = wait_for(Duration::from_secs(5), || {
            c.shim_pids().is_empty().then_some(())
        });
        assert!(
            settled.is_some(),
            "{version:?}: shims left {:?}",
            c.shim_pids()
        );
        assert!(c.mounts().is_empty(), "{version:?}: {:?}", c.mounts());
        let bundles = c
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task/default");
        let left: Vec<_> = std::fs::read_dir(&bundles)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{version:?}: bundles left {left:?}");
    }
}
