//! Every row of the exit table.

use super::*;
use wasmtime_shim_runtime::exit::{FAILURE, TRAP};

const PROC_EXIT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 42))))"#;

const UNREACHABLE: &str = r#"(module
  (memory (export "memory") 1)
  (func $inner unreachable)
  (func (export "_start") (call $inner)))"#;

#[test]
fn proc_exit_status_is_the_exit_code() {
    let root = Rootfs::new();
    root.put_wat("/exit.wasm", PROC_EXIT);
    let o = run(&root.spec(&["/exit.wasm"]));
    assert_eq!((o.status, o.message), (42, None));
}

#[test]
fn normal_return_is_zero() {
    let root = Rootfs::new();
    root.put_wat("/hello.wasm", &writer_wat(1, "hi\n"));
    let o = run(&root.spec(&["/hello.wasm"]));
    assert_eq!(o.status, 0);
    assert_eq!(stdout(&o), "hi\n");
}

#[test]
fn trap_is_134_with_the_trap_message() {
    let root = Rootfs::new();
    root.put_wat("/trap.wasm", UNREACHABLE);
    let o = run(&root.spec(&["/trap.wasm"]));
    assert_eq!(o.status, TRAP);
    let message = o.message.unwrap();
    assert!(
        message.contains("wasm `unreachable` instruction executed"),
        "{message}"
    );
    assert!(message.contains("/trap.wasm"), "{message}");
}

#[test]
fn component_run_ok_is_zero_and_err_is_one() {
    for (ret, status) in [(0, 0), (1, FAILURE)] {
        let component = format!(
            r#"(component
              (core module $m (func (export "run") (result i32) i32.const {ret}))
              (core instance $i (instantiate $m))
              (func $run (result (result)) (canon lift (core func $i "run")))
              (instance $run-instance (export "run" (func $run)))
              (export "wasi:cli/run@0.2.0" (instance $run-instance)))"#
        );
        let root = Rootfs::new();
        root.put_wat("/c.wasm", &component);
        let o = run(&root.spec(&["/c.wasm"]));
        assert_eq!((o.status, o.message), (status, None), "run returns {ret}");
    }
}

#[test]
fn a_wasip3_http_export_of_the_wrong_shape_fails_naming_it() {
    let export = "wasi:http/handler@0.3.0";
    let component = format!(
        r#"(component
          (core module $m (func (export "run") (result i32) i32.const 0))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $run-instance (export "run" (func $run)))
          (export "{export}" (instance $run-instance)))"#
    );
    let root = Rootfs::new();
    root.put_wat("/p3.wasm", &component);
    let err = prepare(&root.spec(&["/p3.wasm"]), &CompileCache::disabled(), b"")
        .err()
        .unwrap();
    let message = err.chain();
    assert!(message.contains("wasi:http/handler"), "{message}");
    assert_eq!(
        err.kind(),
        wasmtime_shim_runtime::ErrorKind::InvalidArgument
    );
}

#[test]
fn a_wasip3_command_importing_a_pre_release_fails_naming_the_interface() {
    // Exports a (sync-lifted) run@0.3.0 and imports an interface of a 0.3 release candidate,
    // which wasmtime 48 does not provide: linking fails and says which.
    let component = r#"(component
      (import "wasi:cli/environment@0.3.0-rc-2025-09-16" (instance
        (export "get-arguments" (func (result (list string))))))
      (core module $m (func (export "run") (result i32) i32.const 0))
      (core instance $i (instantiate $m))
      (func $run (result (result)) (canon lift (core func $i "run")))
      (instance $run-instance (export "run" (func $run)))
      (export "wasi:cli/run@0.3.0" (instance $run-instance)))"#;
    let root = Rootfs::new();
    root.put_wat("/rc.wasm", component);
    let err = prepare(&root.spec(&["/rc.wasm"]), &CompileCache::disabled(), b"")
        .err()
        .unwrap();
    let message = err.chain();
    assert!(
        message.contains("wasi:cli/environment@0.3.0-rc-2025-09-16"),
        "{message}"
    );
}

#[test]
fn selected_export_runs_and_prints_results() {
    let root = Rootfs::new();
    root.put_wat(
        "/lib.wasm",
        r#"(module (memory (export "memory") 1)
             (func (export "answer") (result i32) i32.const 42))"#,
    );
    let o = run(&root.spec(&["/lib.wasm#answer"]));
    assert_eq!((o.status, stdout(&o).as_str()), (0, "42\n"));
    let err = prepare(&root.spec(&["/lib.wasm"]), &CompileCache::disabled(), b"")
        .err()
        .unwrap();
    assert!(
        err.chain().contains("exports no function \"_start\""),
        "{}",
        err.chain()
    );
    let err = prepare(
        &root.spec(&["/lib.wasm#nope"]),
        &CompileCache::disabled(),
        b"",
    )
    .err()
    .unwrap();
    assert!(
        err.chain().contains("exports no function \"nope\""),
        "{}",
        err.chain()
    );
}

#[test]
fn the_component_hello_example_prints_its_greeting() {
    let root = Rootfs::new();
    root.put(
        "/hello.wasm",
        example_guest("wasm32-wasip2", "hello-component"),
    );
    let o = run(&root.spec(&["/hello.wasm"]));
    assert_eq!(
        (o.status, stdout(&o).as_str()),
        (0, "Hello from a WebAssembly component!\n")
    );
}

#[test]
fn exit_code_example_exits_with_argv1() {
    let root = Rootfs::new();
    root.put(
        "/exit-code.wasm",
        example_guest("wasm32-wasip1", "exit-code"),
    );
    for code in ["0", "3", "125"] {
        let o = run(&root.spec(&["/exit-code.wasm", code]));
        assert_eq!(o.status.to_string(), code);
    }
    // WASI preview1 allows statuses below 126 only; wasmtime reports others as an error (1).
    let o = run(&root.spec(&["/exit-code.wasm", "200"]));
    assert_eq!(o.status, FAILURE);
    assert!(o.message.unwrap().contains("invalid exit status"));
}

/// Rust's `std::process::exit(n)` in a wasip2 component calls `wasi:cli/exit.exit`: 0 is `ok`,
/// any other status is `err`, which exits with 1 (as under `wasmtime run`). Toolchains that call
/// `exit-with-code(n)` (WASI 0.2.12+) get `n`.
#[test]
fn component_exit_maps_ok_and_err() {
    let root = Rootfs::new();
    root.put(
        "/exit-code.wasm",
        example_guest("wasm32-wasip2", "exit-code"),
    );
    for (code, status) in [("0", 0), ("7", 1)] {
        let o = run(&root.spec(&["/exit-code.wasm", code]));
        assert_eq!(
            (o.status, stdout(&o)),
            (status, format!("exiting with {code}\n"))
        );
    }
}
