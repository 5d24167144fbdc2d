//! The soak's own guests, as WAT, and the hostile images built from them and from the
//! examples. Image names are `localhost/soak/<name>:latest`.

use crate::containerd::workspace;
use crate::image::Image;
use anyhow::{Context, Result};

/// Writes 64 KiB of 64-byte lines (`xxx…x\n`) to stdout with `fd_write`, for ever; traps if a
/// write fails.
pub const FLOOD: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $i i32)
    (loop $fill
      (i32.store8 (i32.add (i32.const 1024) (local.get $i))
        (select (i32.const 10) (i32.const 120)
          (i32.eq (i32.rem_u (local.get $i) (i32.const 64)) (i32.const 63))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 65536))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $write
      (br_if $write (i32.eqz
        (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
    unreachable))"#;

/// Grows its memory by 1 GiB (16384 pages) at once; traps if refused, else writes to every
/// 4 KiB page of it and prints `grew 1 GiB and touched every page`.
pub const BOMB: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "grew 1 GiB and touched every page\n")
  (func (export "_start")
    (local $p i32) (local $end i32)
    (local.set $p (memory.grow (i32.const 16384)))
    (if (i32.eq (local.get $p) (i32.const -1)) (then unreachable))
    (local.set $p (i32.mul (local.get $p) (i32.const 65536)))
    (local.set $end (i32.add (local.get $p) (i32.const 1073741824)))
    (loop $touch
      (i32.store8 (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $touch (i32.lt_u (local.get $p) (local.get $end))))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 34))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Imports a function no host defines.
pub const UNKNOWN_IMPORT: &str = r#"(module
  (import "soak_env" "soak_missing_function" (func $missing))
  (memory (export "memory") 1)
  (func (export "_start") (call $missing)))"#;

/// The `hello` example, assembled.
pub fn hello() -> Result<Vec<u8>> {
    let path = workspace().join("examples/wat/hello.wat");
    wat::parse_file(&path).with_context(|| format!("assemble {}", path.display()))
}

fn wasm(name: &str, wat: &str) -> Result<Vec<u8>> {
    wat::parse_str(wat).with_context(|| format!("assemble {name}"))
}

fn image(name: &str) -> Image {
    Image::new(&format!("localhost/soak/{name}:latest"))
}

pub fn flood() -> Result<Image> {
    Ok(image("flood")
        .file("/flood.wasm", wasm("flood", FLOOD)?)
        .entrypoint(&["/flood.wasm"]))
}

pub fn bomb() -> Result<Image> {
    Ok(image("bomb")
        .file("/bomb.wasm", wasm("bomb", BOMB)?)
        .entrypoint(&["/bomb.wasm"]))
}

/// Images that must fail at Create, with the text their error must contain.
pub fn bad_programs() -> Result<Vec<(Image, &'static str)>> {
    let hello = hello()?;
    let mut malformed = b"\0asm\x01\0\0\0".to_vec();
    // A type section that claims 200 bytes and holds 5 of garbage.
    malformed.extend_from_slice(&[0x01, 0xc8, 0x01, 0xff, 0x13, 0x37, 0x00, 0x42]);
    Ok(vec![
        (
            image("malformed")
                .file("/app.wasm", malformed)
                .entrypoint(&["/app.wasm"]),
            "entrypoint /app.wasm is not valid WebAssembly",
        ),
        (
            image("truncated")
                .file("/app.wasm", hello[..hello.len() / 2].to_vec())
                .entrypoint(&["/app.wasm"]),
            "entrypoint /app.wasm is not valid WebAssembly",
        ),
        (
            image("unknown-import")
                .file("/app.wasm", wasm("unknown-import", UNKNOWN_IMPORT)?)
                .entrypoint(&["/app.wasm"]),
            "soak_missing_function",
        ),
        (
            image("symlink-loop")
                .file("/hello.wasm", hello.clone())
                .symlink("/a.wasm", "/b.wasm")
                .symlink("/b.wasm", "a.wasm")
                .entrypoint(&["/a.wasm"]),
            "symbolic links",
        ),
        (
            image("self-link")
                .file("/hello.wasm", hello)
                .symlink("/app/self.wasm", "../app/self.wasm")
                .entrypoint(&["/app/self.wasm"]),
            "symbolic links",
        ),
    ])
}
