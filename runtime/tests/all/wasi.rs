//! argv, environment, cwd, stdin: what the guest sees comes from the spec only.

use super::*;

/// argv and environment are exactly the spec's. A preview1 module has no working directory
/// of its own: it starts at `/`, as under `wasmtime run` (components get `initial-cwd`).
#[test]
fn args_env_and_cwd_come_from_the_spec_only() {
    // SAFETY: tests in this binary do not read the environment concurrently with this write.
    unsafe { std::env::set_var("SHIM_SECRET", "leak") };
    let root = Rootfs::new();
    root.put(
        "/app/bin/args-env.wasm",
        example_guest("wasm32-wasip1", "args-env"),
    );
    let mut spec = root.spec(&["args-env.wasm", "one", "two words"]);
    spec.env = vec!["PATH=/app/bin".into(), "GREETING=hi=there".into()];
    spec.cwd = "/app".into();
    let o = run(&spec);
    assert_eq!(o.status, 0, "{:?}", o.message);
    assert_eq!(
        stdout(&o),
        "arg[0]=args-env.wasm\narg[1]=one\narg[2]=two words\n\
         env GREETING=hi=there\nenv PATH=/app/bin\ncwd=/\n"
    );
}

#[test]
fn stdin_reaches_the_guest_until_eof() {
    let root = Rootfs::new();
    root.put("/cat.wasm", example_guest("wasm32-wasip1", "cat"));
    let o = run_with(
        &root.spec(&["/cat.wasm"]),
        &CompileCache::disabled(),
        b"line one\nline two\n",
    );
    assert_eq!((o.status, stdout(&o).as_str()), (0, "line one\nline two\n"));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "cat: 18 bytes\n");
}

#[test]
fn bad_programs_fail_prepare_naming_the_path() {
    let root = Rootfs::new();
    root.put("/native", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    root.put("/script", b"#!/bin/sh\necho hi\n");
    root.put("/short.wasm", b"\0asm\x01\0\0\0\x01\x05");
    root.put_wat(
        "/needs-more.wasm",
        r#"(module (import "env" "missing" (func)) (func (export "_start")))"#,
    );
    let cases = [
        (
            &["/nope.wasm"][..],
            "entrypoint /nope.wasm not found in the container's root filesystem",
        ),
        (
            &["/native"][..],
            "entrypoint /native is a native (ELF) program, but the container is to run as \
             WebAssembly (annotation wasmtime.containerd.io/executor=wasm; without it, native \
             programs run through runc)",
        ),
        (
            &["/script"][..],
            "entrypoint /script is not a WebAssembly module or component",
        ),
        (
            &["/short.wasm"][..],
            "entrypoint /short.wasm is not valid WebAssembly",
        ),
        (
            &["/needs-more.wasm"][..],
            "entrypoint /needs-more.wasm cannot be linked against WASI",
        ),
    ];
    for (args, message) in cases {
        let err = prepare(&root.spec(args), &CompileCache::disabled(), b"")
            .err()
            .unwrap();
        assert!(err.chain().starts_with(message), "{}", err.chain());
    }
}
