//! The memory budget: `memory.grow` fails inside the guest at the limit.

use crate::{Rootfs, run, stdout};

/// Grows memory one page (64 KiB) at a time until `memory.grow` fails, prints how many pages it
/// got (as decimal digits), then traps if `trap` is set or returns otherwise.
fn hog(trap: bool) -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func $print (param $n i32) (local $p i32)
            (local.set $p (i32.const 64))
            (loop $digits
              (local.set $p (i32.sub (local.get $p) (i32.const 1)))
              (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
              (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
              (br_if $digits (local.get $n)))
            (i32.store (i32.const 0) (local.get $p))
            (i32.store (i32.const 4) (i32.sub (i32.const 64) (local.get $p)))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
          (func (export "_start") (local $pages i32)
            (block $full
              (loop $more
                (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                (local.set $pages (i32.add (local.get $pages) (i32.const 1)))
                (br $more)))
            (call $print (local.get $pages))
            {end}))"#,
        end = if trap { "(unreachable)" } else { "" }
    )
}

#[test]
fn memory_grow_fails_at_the_limit_and_a_trap_after_it_is_out_of_memory() {
    let root = Rootfs::new();
    root.put_wat("/hog.wasm", &hog(true));
    let mut spec = root.spec(&["/hog.wasm"]);
    // 1 initial page + 15 grown = 1 MiB.
    spec.memory_limit = Some(1 << 20);
    let out = run(&spec);
    assert_eq!(stdout(&out), "15");
    assert_eq!(out.status, wasmtime_shim_runtime::exit::TRAP);
    assert!(out.out_of_memory);
    assert!(
        out.message
            .as_deref()
            .unwrap_or("")
            .contains("ran out of memory"),
        "{:?}",
        out.message
    );
}

#[test]
fn a_guest_that_handles_a_failed_grow_is_not_out_of_memory() {
    let root = Rootfs::new();
    root.put_wat("/hog.wasm", &hog(false));
    let mut spec = root.spec(&["/hog.wasm"]);
    spec.memory_limit = Some(4 << 20);
    let out = run(&spec);
    assert_eq!((stdout(&out).as_str(), out.status), ("63", 0));
    assert!(!out.out_of_memory);
}

#[test]
fn without_a_limit_a_trap_is_not_out_of_memory() {
    let root = Rootfs::new();
    root.put_wat(
        "/trap.wasm",
        "(module (func (export \"_start\") unreachable))",
    );
    let out = run(&root.spec(&["/trap.wasm"]));
    assert_eq!(out.status, wasmtime_shim_runtime::exit::TRAP);
    assert!(!out.out_of_memory);
}
