//! Compiling in other processes: guests in pid namespaces of their own sharing the node cache,
//! writers killed mid-write, and the confined compiler child (`Compiler::Child`).
//!
//! Each scenario runs in a fresh process of this test binary (the ignored `probe` test, told
//! what to do through `PROBE_*` variables): a forked compiler needs a single-threaded parent,
//! and a pid namespace is entered by a new process. The pid namespace tests need root.

use super::*;
use std::process::{Command, Output, Stdio as Pipe};
use std::time::{Duration, Instant, SystemTime};
use wasmtime_shim_runtime::Compiler;

/// A module with `n` functions, so that compiling it takes a while.
fn big_wat(n: usize, text: &str) -> String {
    let mut funcs = String::new();
    for i in 0..n {
        funcs.push_str(&format!(
            "(func (export \"f{i}\") (param i32) (result i32)
               (local.get 0) (i32.const {i}) (i32.mul) (i32.const 7) (i32.add)
               (if (result i32) (i32.gt_u (local.get 0) (i32.const 100))
                 (then (i32.const 1)) (else (i32.const {i}))) (i32.add))\n"
        ));
    }
    writer_wat(1, text).replacen(
        "(func (export \"_start\")",
        &format!("{funcs}(func (export \"_start\")"),
        1,
    )
}

/// What a probe does, read from the environment.
fn probe_env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Runs in a process of its own (see [`probe_command`]); prints `outcome=...` or `error=...`,
/// and `before=N threads=M` (this process's threads before and after the load).
#[test]
#[ignore = "a helper the other tests of this file run in a fresh process"]
fn probe() {
    let rootfs = PathBuf::from(probe_env("PROBE_ROOTFS"));
    let cache = CompileCache::new(probe_env("PROBE_CACHE"));
    let cache = match probe_env("PROBE_COMPILER").as_str() {
        "child" => cache.compile_with(Compiler::Child(std::sync::Arc::new(|| Ok(())))),
        "child-refuses" => cache.compile_with(Compiler::Child(std::sync::Arc::new(|| {
            Err("refused on purpose".into())
        }))),
        "child-dies" => cache.compile_with(Compiler::Child(std::sync::Arc::new(|| {
            // SAFETY: raise on this (the compiler child) process.
            unsafe { libc::raise(libc::SIGKILL) };
            Ok(())
        }))),
        _ => cache,
    };
    let spec = GuestSpec {
        args: vec![probe_env("PROBE_PROGRAM")],
        cwd: "/".into(),
        rootfs,
        ..Default::default()
    };
    let threads = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_string()))
            .unwrap()
    };
    // libtest runs the probe on a thread of its own: count what the load adds.
    println!("before={}", threads());
    let host = Host::new().unwrap();
    match Program::prepare(&host, &spec, &cache, Stdio::Capture { stdin: vec![] }) {
        Ok(program) => {
            println!("outcome={} threads={}", program.cache_outcome(), threads());
            let o = program.run();
            println!("stdout={}", stdout(&o).trim_end());
        }
        Err(err) => println!("error={}", err.chain()),
    }
}

fn probe_command(
    rootfs: &Path,
    cache: &Path,
    program: &str,
    compiler: &str,
    pid_namespace: bool,
) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if pid_namespace {
        let mut c = Command::new("unshare");
        c.args(["--pid", "--fork", "--kill-child"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.args([
        "--exact",
        "processes::probe",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PROBE_ROOTFS", rootfs)
    .env("PROBE_CACHE", cache)
    .env("PROBE_PROGRAM", program)
    .env("PROBE_COMPILER", compiler)
    .stdin(Pipe::null())
    .stdout(Pipe::piped())
    .stderr(Pipe::piped());
    cmd
}

/// The value of `key=` the probe printed.
fn printed(out: &Output, key: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {key}= in {text} / {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test enters pid namespaces: run it as root (scripts/test.sh does)"
    );
}

#[test]
fn guests_in_their_own_pid_namespaces_share_one_entry() {
    require_root();
    let root = Rootfs::new();
    root.put_wat("/big.wasm", &big_wat(1500, "shared\n"));
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("cache");
    let run = |n: usize| -> Vec<Output> {
        let children: Vec<_> = (0..n)
            .map(|_| {
                probe_command(&root.path(), &cache, "/big.wasm", "", true)
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    };
    // The first start learns the entry's name.
    let first = run(1);
    assert_eq!(printed(&first[0], "outcome"), "compiled");
    let files = names(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let entry = files[0].clone();
    std::fs::remove_file(cache.join(&entry)).unwrap();
    // A writer in another pid namespace is still writing its temporary (its name, from pid 1
    // and the first count, is what every guest in a new pid namespace would have chosen).
    let busy = cache.join(format!(".tmp-1-0-{entry}"));
    std::fs::write(&busy, b"half an entry").unwrap();

    for out in run(4) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outcome = printed(&out, "outcome");
        assert!(
            outcome == "compiled" || outcome == "hit",
            "a start could not use the cache: {outcome}"
        );
        assert_eq!(printed(&out, "stdout"), "shared");
    }
    // One entry; the other writer's temporary is young, so it is left alone.
    assert_eq!(
        names(&cache),
        vec![format!(".tmp-1-0-{entry}"), entry.clone()]
    );

    // Once it is old, the next store removes it.
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&busy)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::remove_file(cache.join(&entry)).unwrap();
    assert_eq!(printed(&run(1)[0], "outcome"), "compiled");
    assert_eq!(names(&cache), vec![entry]);
}

#[test]
fn a_writer_killed_at_any_moment_leaves_only_complete_entries() {
    let root = Rootfs::new();
    root.put_wat("/big.wasm", &big_wat(3000, "killed\n"));
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("cache");
    // How long a whole start takes here.
    let began = Instant::now();
    let out = probe_command(&root.path(), &cache, "/big.wasm", "", false)
        .output()
        .unwrap();
    assert_eq!(printed(&out, "outcome"), "compiled");
    let whole = began.elapsed();
    let entry = names(&cache).pop().unwrap();
    // Killed at moments spread over the whole start, most of them late (the store is last).
    for step in 0..12u32 {
        std::fs::remove_file(cache.join(&entry)).ok();
        let mut child = probe_command(&root.path(), &cache, "/big.wasm", "", false)
            .spawn()
            .unwrap();
        std::thread::sleep(whole.mul_f64(0.4 + 0.6 * f64::from(step) / 12.0));
        child.kill().unwrap();
        child.wait().unwrap();
        for name in names(&cache) {
            assert_eq!(name, entry, "a killed writer left {name}");
        }
    }
    // What is there is complete: the next start loads it or, if absent, compiles it.
    let out = probe_command(&root.path(), &cache, "/big.wasm", "", false)
        .output()
        .unwrap();
    assert_eq!(printed(&out, "stdout"), "killed");
    assert_eq!(names(&cache), vec![entry]);
}

#[test]
fn the_compiler_child_keeps_the_caller_single_threaded_and_reports_failures() {
    let root = Rootfs::new();
    root.put_wat("/big.wasm", &big_wat(500, "child\n"));
    root.put("/bad.wasm", b"\0asm\x01\0\0\0\xff\xff");
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("cache");
    let probe = |program: &str, compiler: &str| {
        probe_command(&root.path(), &cache, program, compiler, false)
            .output()
            .unwrap()
    };
    // In-process compilation starts wasmtime's worker threads; the child keeps us at one.
    let out = probe("/big.wasm", "child");
    assert_eq!(printed(&out, "outcome"), "compiled");
    assert_eq!(printed(&out, "threads"), printed(&out, "before"));
    assert_eq!(printed(&out, "stdout"), "child");
    let out = probe("/big.wasm", "child");
    assert_eq!(printed(&out, "outcome"), "hit");
    std::fs::remove_dir_all(&cache).unwrap();
    let out = probe("/big.wasm", "");
    assert_eq!(printed(&out, "outcome"), "compiled");
    assert_ne!(
        printed(&out, "threads"),
        printed(&out, "before"),
        "the in-process baseline"
    );

    let error = |out: &Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("error=").map(str::to_string))
            .unwrap_or_else(|| panic!("no error: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let invalid = error(&probe("/bad.wasm", "child"));
    assert!(
        invalid.contains("entrypoint /bad.wasm is not valid WebAssembly"),
        "{invalid}"
    );
    std::fs::remove_dir_all(&cache).unwrap();
    let refused = error(&probe("/big.wasm", "child-refuses"));
    assert!(
        refused.contains("cannot confine the compiler process: refused on purpose"),
        "{refused}"
    );
    let died = error(&probe("/big.wasm", "child-dies"));
    assert!(died.contains("was killed by signal 9"), "{died}");
    assert!(names(&cache).is_empty(), "{:?}", names(&cache));
}
