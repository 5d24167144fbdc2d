//! WASIp3 commands in this process (examples/p3-command), with captured stdio: the async `run`
//! export, WASI 0.3 arguments, environment, stdin and stdout, and exit statuses.

use super::{Rootfs, example_guest, run_with, stdout};
use wasmtime_shim_runtime::CompileCache;

fn spec(root: &Rootfs, args: &[&str]) -> wasmtime_shim_runtime::GuestSpec {
    root.put("/p3.wasm", example_guest("wasm32-wasip2", "p3_command"));
    let mut all = vec!["/p3.wasm"];
    all.extend_from_slice(args);
    let mut spec = root.spec(&all);
    spec.env = vec!["ONLY=this".into()];
    spec
}

#[test]
fn arguments_and_environment_come_from_the_spec_only() {
    let root = Rootfs::new();
    let o = run_with(&spec(&root, &["a", "b c"]), &CompileCache::disabled(), b"");
    assert_eq!(o.status, 0, "{:?}", o.message);
    assert_eq!(stdout(&o), "arg /p3.wasm\narg a\narg b c\nenv ONLY=this\n");
}

#[test]
fn stdin_is_read_to_its_end_through_a_stream() {
    let root = Rootfs::new();
    let input: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let o = run_with(&spec(&root, &["cat"]), &CompileCache::disabled(), &input);
    assert_eq!(o.status, 0, "{:?}", o.message);
    assert!(o.stdout == input, "{} bytes out", o.stdout.len());
}

#[test]
fn exit_statuses_follow_the_table() {
    let root = Rootfs::new();
    for (args, status) in [
        (&["exit", "0"][..], 0),
        (&["exit", "42"][..], 42),
        (&["fail"][..], 1),
        (&["trap"][..], 134),
    ] {
        let o = run_with(&spec(&root, args), &CompileCache::disabled(), b"");
        assert_eq!(o.status, status, "{args:?}: {:?}", o.message);
    }
}
