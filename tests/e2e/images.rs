//! Every image format developers publish Wasm in, built and pushed with `wasm-oci` to a real
//! registry on loopback, pulled by containerd (`ctr` and CRI's PullImage) and run by the shim.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{Version, workspace};

/// containerd 1.6 (Debian 12), 1.7 (Debian 13) and 2.1.
const ALL3: [Version; 3] = [Version::V1_6, Version::V1_7, Version::V2_1];
use wasmtime_shim_tests::cri::{Cri, Spec};
use wasmtime_shim_tests::image::digest;
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

/// The wasm to package in `format` from `dir` (the component-layer format holds a component) and
/// what it prints.
pub fn example_for(dir: &Path, format: &str) -> (PathBuf, &'static str) {
    if format == "component-layer" {
        let path = dir.join("hello-component.wasm");
        std::fs::copy(
            workspace().join("target/guests/wasm32-wasip2/release/hello-component.wasm"),
            &path,
        )
        .unwrap();
        (path, "Hello from a WebAssembly component!\n")
    } else {
        (hello_wasm(dir), "Hello from WebAssembly!\n")
    }
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

/// Runs `spec` in a fresh pod of `cri` and returns its exit code and log.
fn run_in_pod(cri: &Cri, logs: &Path, spec: &Spec) -> anyhow::Result<(i32, String)> {
    let pod = cri.run_pod(&unique("pod"), logs)?;
    let ran = cri.run(&pod, spec).and_then(|id| {
        let status = cri.wait_exited(&id, Duration::from_secs(20))?;
        let log = std::fs::read_to_string(pod.log_dir.join(format!("{}.log", spec.name)))?;
        Ok((status.exit_code, log))
    });
    cri.remove_pod(&pod)?;
    ran
}

/// The log's stdout text, CRI's framing removed.
fn stdout_of(log: &str) -> String {
    log.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).filter(|_| l.contains(" stdout ")))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The CRI `command` a pod needs for `format`: CRI refuses an image config without an
/// entrypoint ("no command specified"), and the CNCF artifact's config has none.
fn command_for(format: &str) -> Vec<&'static str> {
    if format == "artifact" {
        vec!["hello.wasm"]
    } else {
        vec![]
    }
}

#[test]
fn every_format_runs_from_the_registry_through_cri() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for format in FORMATS {
        let (wasm, expected) = example_for(dir.path(), format);
        let reference = registry.reference(&format!("cri-{format}"), "1.0");
        build_and_push(&wasm, format, None, &reference);
        images.push((format, reference, expected));
    }
    for version in ALL3 {
        let c = Containerd::start_cri(version).unwrap();
        registry.write_hosts_toml(&c.certs_d()).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        for (format, reference, expected) in &images {
            let pulled = cri.pull(reference, None);
            if version == Version::V1_6 && *format != "image" {
                // containerd 1.6.20 unpacks every layer as a tar (fixed in 1.6.25).
                let err = format!("{:#}", pulled.unwrap_err());
                assert!(
                    err.contains("mismatched image rootfs and manifest layers"),
                    "{format}: {err}"
                );
                continue;
            }
            pulled.unwrap_or_else(|e| panic!("{version:?} {format}: {e:#}"));
            let spec = Spec::new(&unique(format), reference).command(&command_for(format));
            let (code, log) = run_in_pod(&cri, logs.path(), &spec)
                .unwrap_or_else(|e| panic!("{version:?} {format}: {e:#}"));
            assert_eq!(
                (code, stdout_of(&log)),
                (0, expected.to_string()),
                "{version:?} {format}"
            );
        }
    }
}

#[test]
fn every_format_ctr_can_run_runs_through_ctr() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let native = native_archive(dir.path());
    let mut images = Vec::new();
    for format in FORMATS {
        let (wasm, expected) = example_for(dir.path(), format);
        let reference = registry.reference(&format!("ctr-{format}"), "1.0");
        build_and_push(&wasm, format, None, &reference);
        images.push((format, reference, expected, vec![]));
    }
    let (wasm, expected) = example_for(dir.path(), "image");
    let index = registry.reference("ctr-index", "1.0");
    build_and_push(&wasm, "image", Some(&native), &index);
    images.push(("index", index, expected, vec!["--platform", "wasi/wasm"]));
    for version in ALL3 {
        let c = Containerd::start(version).unwrap();
        for (format, reference, expected, platform) in &images {
            let mut pull = vec!["images", "pull", "--plain-http"];
            pull.extend(platform);
            pull.push(reference);
            let pulled = c.ctr(&pull).unwrap();
            let id = unique(format);
            let ran = ctr_run(&c, platform, reference, &id, &[]);
            match (version, *format) {
                (Version::V1_6, "artifact" | "component-layer" | "content-layer") => {
                    // containerd 1.6.20 unpacks every layer as a tar (fixed in 1.6.25).
                    assert!(
                        text(&pulled.stderr).contains("mismatched image rootfs"),
                        "{version:?} {format}: {}",
                        text(&pulled.stderr)
                    );
                }
                (_, "artifact") => {
                    // ctr builds the spec from the image config, which it must know.
                    assert!(
                        text(&ran.stderr).contains("unknown image config media type"),
                        "{version:?} {format}: {}",
                        text(&ran.stderr)
                    );
                }
                _ => {
                    assert!(
                        pulled.status.success(),
                        "{version:?} {format}: {}",
                        text(&pulled.stderr)
                    );
                    assert_eq!(
                        (ran.status.code(), text(&ran.stdout)),
                        (Some(0), expected.to_string()),
                        "{version:?} {format}: {}",
                        text(&ran.stderr)
                    );
                }
            }
            assert_gone(&c, &id);
        }
        // The index's other half, for runc.
        c.ctr_ok(&["images", "pull", "--plain-http", &images[4].1])
            .unwrap();
        let id = unique("native");
        let out = c.ctr(&["run", "--rm", &images[4].1, &id]).unwrap();
        assert_eq!(
            text(&out.stdout),
            "Hello from linux!\n",
            "{version:?}: {}",
            text(&out.stderr)
        );
    }
}

/// An index of a native image and a Wasm one: CRI pulls the node's platform only, so a Wasm
/// pod gets the native image; the shim says what is missing. With the Wasm manifest in
/// containerd (pulled by its own tag, or by `ctr --platform`), the same tag runs as Wasm.
#[test]
fn an_index_with_native_and_wasm_images_through_cri() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let native = native_archive(dir.path());
    let wasm = hello_wasm(dir.path());
    let index = registry.reference("both", "1.0");
    build_and_push(&wasm, "content-layer", Some(&native), &index);
    let c = Containerd::start_cri(Version::V2_1).unwrap();
    registry.write_hosts_toml(&c.certs_d()).unwrap();
    let cri = Cri::connect(&c).unwrap();
    let logs = tempfile::tempdir().unwrap();
    cri.pull(&index, None).unwrap();
    let err = run_in_pod(&cri, logs.path(), &Spec::new("both", &index)).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("wasi/wasm manifest was not pulled"), "{err}");
    // The Wasm manifest fetched too (what `ctr` does with --platform): now it runs.
    c.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "pull",
        "--plain-http",
        "--platform",
        "wasi/wasm",
        &index,
    ])
    .unwrap();
    let (code, log) = run_in_pod(&cri, logs.path(), &Spec::new("both2", &index)).unwrap();
    assert_eq!(
        (code, stdout_of(&log)),
        (0, "Hello from WebAssembly!\n".to_string())
    );
}

/// The second start of a module on the node compiles nothing: from another pod (another shim
/// process) and after containerd and its shims restarted.
#[test]
fn a_layer_compiles_once_per_node() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello_wasm(dir.path());
    let reference = registry.reference("once", "1.0");
    build_and_push(&wasm, "artifact", None, &reference);
    let mut c = Containerd::start_cri(Version::V2_1).unwrap();
    registry.write_hosts_toml(&c.certs_d()).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let names = [unique("first"), unique("second"), unique("third")];
    for (i, name) in names.iter().enumerate() {
        if i == 2 {
            c.restart().unwrap();
        }
        let cri = Cri::connect(&c).unwrap();
        if i == 0 {
            cri.pull(&reference, None).unwrap();
        }
        let spec = Spec::new(name, &reference).command(&["hello.wasm"]);
        let (code, log) = run_in_pod(&cri, logs.path(), &spec).unwrap();
        assert_eq!(
            (code, stdout_of(&log)),
            (0, "Hello from WebAssembly!\n".to_string())
        );
    }
    let log = c.log();
    let prepared: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("program prepared") && l.contains("layer hello.wasm of"))
        .collect();
    let outcomes: Vec<&str> = prepared
        .iter()
        .map(|l| {
            if l.contains("cache=\"compiled\"") {
                "compiled"
            } else if l.contains("cache=\"hit\"") {
                "hit"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(outcomes, ["compiled", "hit", "hit"], "{prepared:#?}");
}

/// A blob whose bytes do not match its digest is refused: by containerd when the registry
/// serves it, by the shim when containerd's content store holds it.
#[test]
fn corrupt_layers_are_refused() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello_wasm(dir.path());
    let layer = digest(&std::fs::read(&wasm).unwrap());
    let (served, stored) = (
        registry.reference("corrupt-served", "1.0"),
        registry.reference("corrupt-stored", "1.0"),
    );
    build_and_push(&wasm, "content-layer", None, &stored);
    let c = Containerd::start_cri(Version::V2_1).unwrap();
    registry.write_hosts_toml(&c.certs_d()).unwrap();
    let cri = Cri::connect(&c).unwrap();
    let logs = tempfile::tempdir().unwrap();

    // Stored: pulled intact, then changed in containerd's content store.
    cri.pull(&stored, None).unwrap();
    let blob = c
        .dir
        .path()
        .join("root/io.containerd.content.v1.content/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let err = format!(
        "{:#}",
        run_in_pod(&cri, logs.path(), &Spec::new("stored", &stored)).unwrap_err()
    );
    assert!(
        err.contains(&format!(
            "the content containerd holds for {layer} does not match it"
        )) && err.contains("pull it again"),
        "{err}"
    );

    // Served: the registry's copy changed after the push (a different module, so containerd
    // has no copy of its own).
    let other = dir.path().join("other.wasm");
    std::fs::write(&other, wat::parse_str("(module (memory 1))").unwrap()).unwrap();
    build_and_push(&other, "content-layer", None, &served);
    let other_layer = digest(&std::fs::read(&other).unwrap());
    let path = registry.blob_path(&other_layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = format!("{:#}", cri.pull(&served, None).unwrap_err());
    assert!(
        err.contains(&other_layer) && err.contains("digest"),
        "{err}"
    );
}

/// Pushes need the registry's credentials when it asks for them, and say so when they are
/// missing.
#[test]
fn push_with_basic_auth() {
    let registry = Registry::start_with_auth("dev", "s3cret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello_wasm(dir.path());
    let out = dir.path().join("app.tar");
    let reference = registry.reference("private", "1.0");
    wasm_oci_ok(&[
        "build",
        wasm.to_str().unwrap(),
        "-t",
        &reference,
        "-o",
        out.to_str().unwrap(),
    ]);
    let refused = wasm_oci(&["push", out.to_str().unwrap(), "--plain-http"]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&reference) && stderr.contains("401"),
        "{stderr}"
    );
    let pushed = wasm_oci_ok(&[
        "push",
        out.to_str().unwrap(),
        "--plain-http",
        "--username",
        "dev",
        "--password",
        "s3cret",
    ]);
    assert!(pushed.contains(&format!("{reference}@sha256:")), "{pushed}");
}

/// `wasm-oci build -o` writes an archive `ctr images import` takes, which then runs (formats
/// containerd can unpack: the plain image everywhere, the Wasm-layer image from 1.7); a
/// malformed module is refused with wasmtime's error and nothing is written.
#[test]
fn archives_import_with_ctr_and_malformed_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = hello_wasm(dir.path());
    let mut archives = Vec::new();
    for format in ["image", "content-layer"] {
        let out = dir.path().join(format!("{format}.tar"));
        let reference = format!("localhost/archive/{format}:1.0");
        wasm_oci_ok(&[
            "build",
            wasm.to_str().unwrap(),
            "-t",
            &reference,
            "--format",
            format,
            "-o",
            out.to_str().unwrap(),
        ]);
        archives.push((format, reference, out));
    }
    for version in ALL3 {
        let c = Containerd::start(version).unwrap();
        for (format, reference, out) in &archives {
            if version == Version::V1_6 && *format != "image" {
                continue; // 1.6.20 cannot unpack Wasm layers (see the CRI test)
            }
            // The archive's manifest is for wasi/wasm, which ctr filters out by default.
            c.ctr_ok(&[
                "images",
                "import",
                "--platform",
                "wasi/wasm",
                out.to_str().unwrap(),
            ])
            .unwrap();
            let id = unique(format);
            let ran = ctr_run(&c, &[], reference, &id, &[]);
            assert_eq!(
                (ran.status.code(), text(&ran.stdout)),
                (Some(0), "Hello from WebAssembly!\n".to_string()),
                "{version:?} {format}: {}",
                text(&ran.stderr)
            );
            assert_gone(&c, &id);
        }
    }

    // Truncated: valid header, broken body.
    let bytes = std::fs::read(&wasm).unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, &bytes[..bytes.len() - 3]).unwrap();
    let out = dir.path().join("broken.tar");
    let refused = wasm_oci(&[
        "build",
        broken.to_str().unwrap(),
        "-t",
        "localhost/broken:1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("broken.wasm is not valid WebAssembly")
            && stderr.contains("unexpected end"),
        "{stderr}"
    );
    assert!(!out.exists());
}
