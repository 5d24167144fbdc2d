//! Runtime tests: no root, no containerd. Fixtures are inline WAT in a temporary root
//! filesystem; guest output is captured in memory.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod cache;
mod confinement;
mod exit_codes;
mod http;
mod limits;
mod p3;
mod p3_http;
mod processes;
mod reuse;
mod wasi;

use std::path::{Path, PathBuf};
use wasmtime_shim_runtime::exit::Outcome;
use wasmtime_shim_runtime::{CompileCache, Error, GuestSpec, Host, Program, Stdio};

/// A temporary root filesystem.
pub struct Rootfs {
    pub dir: tempfile::TempDir,
}

impl Default for Rootfs {
    fn default() -> Self {
        Rootfs::new()
    }
}

impl Rootfs {
    pub fn new() -> Rootfs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        Rootfs { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Writes `bytes` (or assembled WAT) at `guest_path` inside the root filesystem.
    pub fn put(&self, guest_path: &str, bytes: impl AsRef<[u8]>) -> &Self {
        let host = self.path().join(guest_path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(host, bytes).unwrap();
        self
    }

    pub fn put_wat(&self, guest_path: &str, wat: &str) -> &Self {
        self.put(guest_path, wat::parse_str(wat).unwrap())
    }

    pub fn spec(&self, args: &[&str]) -> GuestSpec {
        GuestSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".into(),
            rootfs: self.path(),
            network: false,
            ..Default::default()
        }
    }
}

pub fn run(spec: &GuestSpec) -> Outcome {
    run_with(spec, &CompileCache::disabled(), b"")
}

pub fn run_with(spec: &GuestSpec, cache: &CompileCache, stdin: &[u8]) -> Outcome {
    prepare(spec, cache, stdin)
        .unwrap_or_else(|e| panic!("prepare: {}", e.chain()))
        .run()
}

pub fn prepare(spec: &GuestSpec, cache: &CompileCache, stdin: &[u8]) -> Result<Program, Error> {
    static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| Host::new().unwrap());
    Program::prepare(
        host,
        spec,
        cache,
        Stdio::Capture {
            stdin: stdin.to_vec(),
        },
    )
}

pub fn stdout(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A module whose `_start` writes `text` to fd `fd`.
pub fn writer_wat(fd: u32, text: &str) -> String {
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "\10\00\00\00{len}\00\00\00")
          (data (i32.const 16) "{text}")
          (func (export "_start") (drop (call $w (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = hex_byte(text.len()),
        text = text.replace('\n', "\\n"),
    )
}

fn hex_byte(n: usize) -> String {
    format!("\\{n:02x}")
}

/// Built example guests (examples/build.sh), for tests that need real Rust guests.
pub fn example_guest(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/guests")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the examples first (examples/build.sh)",
            path.display()
        )
    })
}
