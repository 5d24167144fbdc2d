//! Pod start latency through CRI, as kubelet starts a pod: RunPodSandbox → CreateContainer →
//! StartContainer, until the container is Running. A Wasm pod (the `wasmtime` handler, the
//! sleeper example) against the same pod under runc (a static busybox `sleep`, and busybox as
//! the pause program), alternating, on one containerd with CRI, network and pod cgroups.

use crate::containerd::{Containerd, Version};
use crate::cri::{Cri, Spec};
use crate::image::Image;
use anyhow::{Context, Result, ensure};
use std::time::{Duration, Instant};

pub struct PodStarts {
    pub version: Version,
    pub wasm: Vec<Duration>,
    pub runc: Vec<Duration>,
}

/// `runs` pod starts of each kind (after one warm-up each: the first Wasm start compiles).
pub fn measure(version: Version, runs: usize) -> Result<PodStarts> {
    let c = Containerd::start_cri(version)?;
    let cri = Cri::connect(&c)?;
    let sleeper = c.import_example_in("k8s.io", "sleeper")?;
    let native = Image::new("localhost/bench/busybox-sleep:latest")
        .file("/bin/busybox", std::fs::read("/bin/busybox")?)
        .entrypoint(&["/bin/busybox", "sleep", "3600"]);
    let tar = c.dir.path().join("busybox-sleep.tar");
    native.write(&tar)?;
    c.ctr_ok(&["-n", "k8s.io", "images", "import", &tar.to_string_lossy()])?;
    let native = native.name.clone();
    for image in [&sleeper, &native] {
        cri.wait_image(image)?;
    }
    let logs = tempfile::tempdir()?;
    let start = |handler: &str, image: &str, name: String| -> Result<Duration> {
        let t0 = Instant::now();
        let pod = cri.run_pod_with(&name, logs.path(), handler)?;
        let id = cri.run(&pod, &Spec::new("app", image))?;
        let elapsed = t0.elapsed();
        let state = cri.status(&id)?.state;
        cri.remove_pod(&pod)?;
        ensure!(
            state == 1,
            "{handler} pod {name}: container state {state}, not Running"
        );
        Ok(elapsed)
    };
    start("wasmtime", &sleeper, "wasm-warm".into()).context("Wasm pod")?;
    start("runc", &native, "runc-warm".into()).context("runc pod")?;
    let (mut wasm, mut runc) = (Vec::new(), Vec::new());
    for i in 0..runs {
        wasm.push(start("wasmtime", &sleeper, format!("wasm-{i}"))?);
        runc.push(start("runc", &native, format!("runc-{i}"))?);
    }
    Ok(PodStarts {
        version,
        wasm,
        runc,
    })
}
