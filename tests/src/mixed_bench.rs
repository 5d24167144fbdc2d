//! The mixed-pod benchmark (issue 18), through CRI as kubelet drives it, on one private
//! containerd with CRI, a CNI network and pod cgroups:
//!
//! - **Pod start**: RunPodSandbox, then CreateContainer + StartContainer of an app and of a
//!   native busybox `sleep` sidecar, one after the other (as kubelet starts a pod's
//!   containers), until ContainerStatus reports both Running. The mixed pod (the `wasmtime`
//!   handler) has a Wasm app (the sleeper example); the baseline pod (the `runc` handler) has
//!   the same sidecar and a busybox `sleep` as its app. Alternating, after one warm-up each;
//!   every pod is removed after its measurement (not timed).
//! - **ExecSync**: a Wasm probe (`/bin/exit-code.wasm 0`, a program of the Wasm app's image)
//!   into the running Wasm app, against `/bin/true` into a busybox container of a runc pod, and
//!   `/bin/true` into the mixed pod's native sidecar (this shim's runc exec). Alternating, after
//!   two warm-ups each.

use crate::containerd::{Containerd, Version, workspace};
use crate::cri::{Cri, Pod, Spec};
use crate::image::{Image, busybox};
use anyhow::{Context, Result, bail, ensure};
use std::path::Path;
use std::time::{Duration, Instant};

/// One pod start and its parts (all from the same clock).
#[derive(Clone, Copy)]
pub struct PodStart {
    /// RunPodSandbox.
    pub sandbox: Duration,
    /// CreateContainer + StartContainer of the app.
    pub app: Duration,
    /// CreateContainer + StartContainer of the sidecar.
    pub sidecar: Duration,
    /// From RunPodSandbox to ContainerStatus Running for both containers.
    pub total: Duration,
}

pub struct Mixed {
    pub version: Version,
    pub mixed: Vec<PodStart>,
    pub runc: Vec<PodStart>,
    /// ExecSync of the Wasm probe into the Wasm app.
    pub wasm_exec: Vec<Duration>,
    /// ExecSync of `/bin/true` into a busybox container of a runc pod.
    pub runc_exec: Vec<Duration>,
    /// ExecSync of `/bin/true` into the native sidecar of the mixed pod.
    pub sidecar_exec: Vec<Duration>,
}

const WASM_APP: &str = "localhost/bench/wasm-app:latest";
const BUSYBOX: &str = "localhost/bench/busybox:latest";
const PROBE: [&str; 2] = ["/bin/exit-code.wasm", "0"];

/// Imports `image` into CRI's namespace and waits until CRI lists it.
fn import(c: &Containerd, cri: &Cri, image: &Image) -> Result<()> {
    let tar = c.dir.path().join("image.tar");
    image.write(&tar)?;
    c.ctr_ok(&["-n", "k8s.io", "images", "import", &tar.to_string_lossy()])?;
    cri.wait_image(&image.name)
}

/// The Wasm app's image: the sleeper example as its entrypoint, and the exit-code example to
/// exec (built by `examples/build.sh`).
fn wasm_app() -> Result<Image> {
    let guests = workspace().join("target/guests/wasm32-wasip1/release");
    let read = |name: &str| {
        std::fs::read(guests.join(name))
            .with_context(|| format!("read {name} (run examples/build.sh)"))
    };
    Ok(Image::new(WASM_APP)
        .file("/sleeper.wasm", read("sleeper.wasm")?)
        .file("/bin/exit-code.wasm", read("exit-code.wasm")?)
        .env("PATH=/bin")
        .entrypoint(&["/sleeper.wasm"]))
}

/// Polls ContainerStatus until `id` is Running.
fn wait_running(cri: &Cri, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = cri.status(id)?.state;
        if state == 1 {
            return Ok(());
        }
        if Instant::now() > deadline || state > 1 {
            bail!("container {id} in state {state}, not Running");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The sidecar of both pods: a native busybox `sleep`.
fn sidecar() -> Spec {
    Spec::new("sidecar", BUSYBOX).command(&["sleep", "3600"])
}

/// The app of a pod of `handler`: the Wasm sleeper, or a busybox `sleep` under runc.
fn app(handler: &str) -> Spec {
    if handler == "runc" {
        Spec::new("app", BUSYBOX).command(&["sleep", "3600"])
    } else {
        Spec::new("app", WASM_APP)
    }
}

/// Starts a pod of `handler` with its app and sidecar; returns it, the two container ids and
/// the times.
fn start_pod(
    cri: &Cri,
    logs: &Path,
    handler: &str,
    name: &str,
) -> Result<(Pod, [String; 2], PodStart)> {
    let t0 = Instant::now();
    let pod = cri.run_pod_with(name, logs, handler)?;
    let t1 = Instant::now();
    let app = cri.run(&pod, &app(handler))?;
    let t2 = Instant::now();
    let sidecar = cri.run(&pod, &sidecar())?;
    let t3 = Instant::now();
    wait_running(cri, &app)?;
    wait_running(cri, &sidecar)?;
    let total = t0.elapsed();
    let times = PodStart {
        sandbox: t1 - t0,
        app: t2 - t1,
        sidecar: t3 - t2,
        total,
    };
    Ok((pod, [app, sidecar], times))
}

/// One timed pod start; the pod is removed afterwards (not timed).
fn pod_start(cri: &Cri, logs: &Path, handler: &str, name: &str) -> Result<PodStart> {
    let (pod, _, times) =
        start_pod(cri, logs, handler, name).with_context(|| format!("{handler} pod {name}"))?;
    cri.remove_pod(&pod)?;
    Ok(times)
}

/// One timed ExecSync of `cmd` into `id`, which must exit 0.
fn exec(cri: &Cri, id: &str, cmd: &[&str]) -> Result<Duration> {
    let t0 = Instant::now();
    let out = cri.exec_sync_within(id, cmd, 10)?;
    let elapsed = t0.elapsed();
    ensure!(
        out.exit_code == 0,
        "ExecSync {cmd:?} into {id}: exit {} ({})",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

/// `starts` pod starts of each kind, then `execs` ExecSyncs of each kind, on containerd
/// `version`.
pub fn measure(version: Version, starts: usize, execs: usize) -> Result<Mixed> {
    let c = Containerd::start_cri(version)?;
    let cri = Cri::connect(&c)?;
    import(&c, &cri, &wasm_app()?)?;
    import(&c, &cri, &busybox(BUSYBOX)?)?;
    let logs = tempfile::tempdir()?;

    // The first Wasm start compiles the sleeper; later ones load the cached artifact.
    pod_start(&cri, logs.path(), "wasmtime", "mixed-warm")?;
    pod_start(&cri, logs.path(), "runc", "runc-warm")?;
    let (mut mixed, mut runc) = (Vec::new(), Vec::new());
    for i in 0..starts {
        mixed.push(pod_start(
            &cri,
            logs.path(),
            "wasmtime",
            &format!("mixed-{i}"),
        )?);
        runc.push(pod_start(&cri, logs.path(), "runc", &format!("runc-{i}"))?);
    }

    let (mixed_pod, [wasm_app, native_sidecar], _) =
        start_pod(&cri, logs.path(), "wasmtime", "exec-mixed")?;
    let (runc_pod, [runc_app, _], _) = start_pod(&cri, logs.path(), "runc", "exec-runc")?;
    let (mut wasm_exec, mut runc_exec, mut sidecar_exec) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..execs + 2 {
        let w = exec(&cri, &wasm_app, &PROBE)?;
        let r = exec(&cri, &runc_app, &["/bin/true"])?;
        let s = exec(&cri, &native_sidecar, &["/bin/true"])?;
        if i >= 2 {
            wasm_exec.push(w);
            runc_exec.push(r);
            sidecar_exec.push(s);
        }
    }
    cri.remove_pod(&mixed_pod)?;
    cri.remove_pod(&runc_pod)?;
    Ok(Mixed {
        version,
        mixed,
        runc,
        wasm_exec,
        runc_exec,
        sidecar_exec,
    })
}

/// Median and p90 (nearest rank) in ms, min and max.
fn summary(mut v: Vec<Duration>) -> [f64; 4] {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [ms(rank(0.5)), ms(rank(0.9)), ms(v[0]), ms(v[v.len() - 1])]
}

fn row(name: &str, v: Vec<Duration>) -> [f64; 4] {
    let s = summary(v.clone());
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
        s[0],
        s[1],
        s[2],
        s[3],
        v.len()
    );
    s
}

pub fn print(r: &Mixed) {
    let head = "| what | median | p90 | min | max | n |\n|---|---|---|---|---|---|";
    println!(
        "\n## Mixed pod start through CRI ({:?}): RunPodSandbox → app and sidecar Running (ms)\n",
        r.version
    );
    println!("{head}");
    let part = |v: &[PodStart], f: fn(&PodStart) -> Duration| v.iter().map(f).collect();
    let mixed = row(
        "mixed pod (wasmtime): Wasm sleeper + native busybox `sleep` sidecar",
        part(&r.mixed, |p| p.total),
    );
    let runc = row(
        "runc pod: busybox `sleep` app + the same sidecar",
        part(&r.runc, |p| p.total),
    );
    for (pod, v) in [("mixed", &r.mixed), ("runc", &r.runc)] {
        row(&format!("… {pod}: RunPodSandbox"), part(v, |p| p.sandbox));
        row(&format!("… {pod}: app create + start"), part(v, |p| p.app));
        row(
            &format!("… {pod}: sidecar create + start"),
            part(v, |p| p.sidecar),
        );
    }
    println!(
        "\n**mixed / runc: {:.2} (medians), {:.2} (p90)** (target ≤ 1)\n",
        mixed[0] / runc[0],
        mixed[1] / runc[1]
    );
    println!(
        "## ExecSync through CRI ({:?}), alternating (ms)\n",
        r.version
    );
    println!("{head}");
    let wasm = row(
        "Wasm probe `/bin/exit-code.wasm 0` into the Wasm app",
        r.wasm_exec.clone(),
    );
    let runc = row(
        "`/bin/true` into a busybox container of a runc pod",
        r.runc_exec.clone(),
    );
    let sidecar = row(
        "`/bin/true` into the mixed pod's native sidecar (this shim, runc exec)",
        r.sidecar_exec.clone(),
    );
    println!(
        "\n**Wasm exec / runc exec: {:.2} (medians), {:.2} (p90)** (target ≤ 1)",
        wasm[0] / runc[0],
        wasm[1] / runc[1]
    );
    println!(
        "**native sidecar exec (this shim) / runc exec: {:.2} (medians)**",
        sidecar[0] / runc[0]
    );
}
