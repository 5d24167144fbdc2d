//! Every image format developers publish Wasm in, built and pushed with `wasm-oci` to a real
//! registry on loopback, pulled by containerd (`ctr` and CRI's PullImage) and run by the shim.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{Version, workspace};
use wasmtime_shim_tests::cri::{Cri, Spec};
use wasmtime_shim_tests::registry::Registry;

pub const FORMATS: [&str; 4] = ["image", "artifact", "component-layer", "content-layer"];

pub fn wasm_oci(args: &[&str]) -> Output {
    Command::new(workspace().join("target/release/wasm-oci"))
        .args(args)
        .output()
        .expect("run wasm-oci (build the workspace first)")
}

pub fn wasm_oci_ok(args: &[&str]) -> String {
    let out = wasm_oci(args);
    assert!(
        out.status.success(),
        "wasm-oci {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The hello example as a `.wasm` file in `dir`.
pub fn hello_wasm(dir: &Path) -> PathBuf {
    let bytes = wat::parse_file(workspace().join("examples/wat/hello.wat")).unwrap();
    let path = dir.join("hello.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A native linux image (a static busybox) as an OCI archive, for indexes that hold both.
pub fn native_archive(dir: &Path) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let tar = dir.join("native.tar");
    wasmtime_shim_tests::image::Image::new("native")
        .file("/bin/busybox", busybox)
        .entrypoint(&["/bin/busybox", "echo", "Hello from linux!"])
        .write(&tar)
        .unwrap();
    tar
}

/// Builds `wasm` in `format` (and with `native`, an index with that image too) and pushes it
/// to `reference` over plain HTTP.
pub fn build_and_push(wasm: &Path, format: &str, native: Option<&Path>, reference: &str) {
    let out = wasm.with_extension(format!("{format}.tar"));
    let mut args = vec![
        "build",
        wasm.to_str().unwrap(),
        "-t",
        reference,
        "--format",
        format,
        "-o",
        out.to_str().unwrap(),
        "--push",
        "--plain-http",
    ];
    if let Some(native) = native {
        args.extend(["--native", native.to_str().unwrap()]);
    }
    wasm_oci_ok(&args);
}

/// What each step gave, for the exploration below.
fn outcome(out: &Output) -> String {
    if out.status.success() {
        format!("ok {:?}", text(&out.stdout).trim())
    } else {
        format!(
            "FAIL {:?}",
            text(&out.stderr).lines().last().unwrap_or("").trim()
        )
    }
}

/// Prints what each containerd version does with each format (run with `--ignored
/// --nocapture`); the tests below assert the same matrix.
#[test]
#[ignore]
fn explore_formats() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello_wasm(dir.path());
    let native = native_archive(dir.path());
    let mut refs = Vec::new();
    for format in FORMATS {
        let r = registry.reference(&format!("hello-{format}"), "1");
        build_and_push(&wasm, format, None, &r);
        refs.push((format.to_string(), r));
    }
    for format in ["image", "artifact"] {
        let r = registry.reference(&format!("hello-index-{format}"), "1");
        build_and_push(&wasm, format, Some(&native), &r);
        refs.push((format!("index+{format}"), r));
    }
    for version in [Version::V1_6, Version::V1_7, Version::V2_1] {
        let c = Containerd::start(version).unwrap();
        for (format, r) in &refs {
            for platform in [None, Some("wasi/wasm")] {
                let mut pull = vec!["images", "pull", "--plain-http"];
                let mut run_extra = vec![];
                if let Some(p) = platform {
                    pull.extend(["--platform", p]);
                    run_extra.extend(["--platform", p]);
                }
                pull.push(r);
                let pulled = c.ctr(&pull).unwrap();
                let id = unique("explore");
                let ran = ctr_run(&c, &run_extra, r, &id, &[]);
                println!(
                    "ctr {version:?} {format} platform={platform:?}: pull {} | run {}",
                    outcome(&pulled),
                    outcome(&ran)
                );
                let _ = c.ctr(&["images", "rm", r]);
            }
        }
        drop(c);
        let c = Containerd::start_cri(version).unwrap();
        registry.write_hosts_toml(&c.certs_d()).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        for (format, r) in &refs {
            let pulled = cri.pull(r, None);
            let mut result = format!("pull {:?}", pulled.as_ref().map_err(|e| e.to_string()));
            if pulled.is_ok() {
                let pod = cri.run_pod(&unique("pod"), logs.path()).unwrap();
                for command in [vec![], vec!["hello.wasm"]] {
                    let spec = Spec::new(&unique("c"), r).command(&command);
                    match cri.run(&pod, &spec) {
                        Ok(id) => {
                            let status = cri.wait_exited(&id, Duration::from_secs(10));
                            let log = std::fs::read_to_string(
                                pod.log_dir.join(format!("{}.log", spec.name)),
                            )
                            .unwrap_or_default();
                            result += &format!(
                                " | cmd {command:?}: exit {:?} log {:?}",
                                status.map(|s| s.exit_code).map_err(|e| e.to_string()),
                                log
                            );
                        }
                        Err(e) => result += &format!(" | cmd {command:?}: FAIL {e:#}"),
                    }
                }
                cri.remove_pod(&pod).unwrap();
            }
            println!("cri {version:?} {format}: {result}");
        }
    }
}
