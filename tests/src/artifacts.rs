//! The artifact benchmark: a large module packaged as the CNCF Wasm artifact, pushed to a
//! loopback registry, pulled through CRI (containerd 2.1) and started: the first start compiles,
//! later ones load the node's compiled copy by the layer's digest. Also the time to package and
//! push a 10 MB module.

use crate::containerd::{Containerd, Version, workspace};
use crate::cri::{Cri, Spec};
use crate::registry::Registry;
use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct ArtifactStarts {
    pub module_bytes: usize,
    /// CreateContainer + StartContainer with an empty compile cache.
    pub first: Vec<Duration>,
    /// The same, the module compiled already.
    pub second: Vec<Duration>,
    /// The same for the hello example (a plain image, cached).
    pub hello: Vec<Duration>,
    /// `wasm-oci build --artifact --push` of a 10 MB module to a new repository.
    pub pack_push: Vec<Duration>,
    pub push_bytes: usize,
}

/// `wasm-oci build <wasm> -t <reference> --format <format> --push --plain-http`.
fn pack_and_push(wasm: &Path, format: &str, reference: &str) -> Result<Duration> {
    let out = wasm.with_extension("tar");
    let t0 = Instant::now();
    let result = Command::new(workspace().join("target/release/wasm-oci"))
        .args(["build"])
        .arg(wasm)
        .args([
            "-t",
            reference,
            "--format",
            format,
            "--push",
            "--plain-http",
            "-o",
        ])
        .arg(&out)
        .output()
        .context("run wasm-oci")?;
    let elapsed = t0.elapsed();
    ensure!(
        result.status.success(),
        "wasm-oci: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    Ok(elapsed)
}

/// `rounds` of: first start, second start, hello start (alternating), and `rounds` pushes.
/// `big` is a module of at least 5 MB printing "big\n", `big10` one of about 10 MB.
pub fn measure(big: &[u8], big10: &[u8], rounds: usize) -> Result<ArtifactStarts> {
    let registry = Registry::start()?;
    let dir = tempfile::tempdir()?;
    let wasm = dir.path().join("big.wasm");
    std::fs::write(&wasm, big)?;
    let hello = dir.path().join("hello.wasm");
    std::fs::write(
        &hello,
        wat::parse_file(workspace().join("examples/wat/hello.wat"))?,
    )?;
    let (big_ref, hello_ref) = (
        registry.reference("bench/big", "1"),
        registry.reference("bench/hello", "1"),
    );
    pack_and_push(&wasm, "artifact", &big_ref)?;
    pack_and_push(&hello, "image", &hello_ref)?;

    let c = Containerd::start_cri(Version::V2_1)?;
    registry.write_hosts_toml(&c.certs_d())?;
    let cri = Cri::connect(&c)?;
    cri.pull(&big_ref, None)?;
    cri.pull(&hello_ref, None)?;
    let cache = c.dir.path().join("state/io.containerd.wasmtime.v1/cache");
    let big_digest = crate::image::digest(big);
    let big_hex = big_digest.trim_start_matches("sha256:");
    let logs = tempfile::tempdir()?;
    let start = |image: &str, command: &[&str], name: String| -> Result<Duration> {
        let pod = cri.run_pod(&name, logs.path())?;
        let t0 = Instant::now();
        let id = cri.run(&pod, &Spec::new("app", image).command(command));
        let elapsed = t0.elapsed();
        let exited = id.and_then(|id| cri.wait_exited(&id, Duration::from_secs(60)));
        cri.remove_pod(&pod)?;
        ensure!(exited?.exit_code == 0, "{name}: exit status not 0");
        Ok(elapsed)
    };
    // Warm-up: the hello entry and both images' snapshots exist before the first round.
    start(&hello_ref, &[], "warm".into())?;
    let mut r = ArtifactStarts {
        module_bytes: big.len(),
        first: Vec::new(),
        second: Vec::new(),
        hello: Vec::new(),
        pack_push: Vec::new(),
        push_bytes: big10.len(),
    };
    for i in 0..rounds {
        // The large module's entry only (named by the layer digest); hello's stays.
        for entry in std::fs::read_dir(&cache)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(big_hex) {
                std::fs::remove_file(entry.path())?;
            }
        }
        r.first
            .push(start(&big_ref, &["big.wasm"], format!("first-{i}"))?);
        r.second
            .push(start(&big_ref, &["big.wasm"], format!("second-{i}"))?);
        r.hello.push(start(&hello_ref, &[], format!("hello-{i}"))?);
    }
    let wasm10 = dir.path().join("big10.wasm");
    std::fs::write(&wasm10, big10)?;
    for i in 0..rounds {
        let reference = registry.reference(&format!("bench/push{i}"), "1");
        r.pack_push
            .push(pack_and_push(&wasm10, "artifact", &reference)?);
    }
    Ok(r)
}
