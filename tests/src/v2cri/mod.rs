//! The CRI checks of the cgroup v2 + systemd test VM (`scripts/vm/shim-v2/run.sh`, issue 17):
//! the node's containerd, run by systemd, driven through its CRI socket as kubelet drives it,
//! with kubelet's pod cgroups for one cgroup driver. Each check prints `PASS <driver>: <name>`
//! or `FAIL <driver>: <name>: <why>`; details go to stderr.

mod leftovers;
mod mixed;
mod pods;

use crate::containerd::{HANDLER, PAUSE_IMAGE};
use crate::cri::{Cri, PodCgroups};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The example images, as `examples/build.sh` names them (imported with `ctr -n k8s.io`).
pub fn image(name: &str) -> String {
    format!("localhost/wasmtime-shim/{name}:latest")
}

/// The sandbox image the VM's CRI configuration pins: a static busybox `sleep` (pods of the
/// `wasmtime` handler never run it, but CRI wants the image), written as an archive for
/// `ctr -n k8s.io images import`.
pub fn write_pause_image(out: &Path) -> Result<()> {
    let busybox = std::fs::read("/bin/busybox").context("read /bin/busybox (busybox-static)")?;
    crate::image::Image::new(PAUSE_IMAGE)
        .file("/bin/busybox", busybox)
        .entrypoint(&["/bin/busybox", "sleep", "2147483647"])
        .write(out)
}

/// One line per CRI runtime handler from CRI's verbose Status: `<handler> <runtime type>
/// SystemdCgroup=<true|false|unset>`, sorted.
pub fn handlers(socket: &Path) -> Result<Vec<String>> {
    let cri = Cri::connect_socket(socket, Duration::from_secs(120))?;
    let status = cri.verbose_status()?;
    let config = status.info.get("config").context("no config in Status")?;
    let json: serde_json::Value = serde_json::from_str(config)?;
    let runtimes = json
        .pointer("/containerd/runtimes")
        .and_then(serde_json::Value::as_object)
        .context("no containerd.runtimes in CRI's configuration")?;
    let mut lines: Vec<String> = runtimes
        .iter()
        .map(|(name, r)| {
            let kind = r.get("runtimeType").and_then(|t| t.as_str()).unwrap_or("?");
            let systemd = r
                .pointer("/options/SystemdCgroup")
                .and_then(serde_json::Value::as_bool)
                .map_or("unset".to_string(), |b| b.to_string());
            format!("{name} {kind} SystemdCgroup={systemd}")
        })
        .collect();
    lines.sort();
    Ok(lines)
}

/// The checks of one cgroup driver; the outcome of each is printed as it ends.
pub struct Checks {
    pub cri: Cri,
    pub driver: PodCgroups,
    pub logs: PathBuf,
    failed: bool,
}

impl Checks {
    fn name(&self) -> &'static str {
        match self.driver {
            PodCgroups::Systemd => "systemd",
            PodCgroups::Cgroupfs => "cgroupfs",
            PodCgroups::E2e => "e2e",
        }
    }

    /// Runs `f` as the check `name`, prints its outcome and returns what `f` made.
    pub fn check<T>(&mut self, name: &str, f: impl FnOnce(&Checks) -> Result<T>) -> Option<T> {
        eprintln!("== {}: {name}", self.name());
        let (line, value) = match f(self) {
            Ok(v) => (format!("PASS {}: CRI {name}", self.name()), Some(v)),
            Err(e) => {
                self.failed = true;
                let why = format!("{e:#}").replace('\n', " | ");
                (format!("FAIL {}: CRI {name}: {why}", self.name()), None)
            }
        };
        eprintln!("{line}");
        println!("{line}");
        let _ = std::io::stdout().flush();
        value
    }
}

/// Every CRI check for `driver` against the containerd on `socket`. Returns whether all passed.
pub fn run(socket: &Path, driver: PodCgroups) -> Result<bool> {
    let cri = Cri::connect_socket(socket, Duration::from_secs(120))?.with_pod_cgroups(driver);
    for name in ["hello", "sleeper", "busy-loop", "memory-hog"] {
        cri.wait_image(&image(name))?;
    }
    cri.wait_image(mixed::BUSYBOX)?;
    cri.wait_image(mixed::WASM_EXEC)?;
    let mut checks = Checks {
        cri,
        driver,
        logs: PathBuf::from("/var/log/pods"),
        failed: false,
    };
    let before = leftovers::Node::take();
    let mut ids = Vec::new();
    checks.check(
        &format!(
            "pod (handler {HANDLER}): run, create, start, status, log, stop, remove; \
             cgroups where kubelet names them"
        ),
        |c| pods::lifecycle(c, &mut ids),
    );
    checks.check(
        "mixed pod: a Wasm app and a native sidecar (runc), in kubelet's cgroups; exec into both",
        |c| mixed::mixed(c, &mut ids),
    );
    let limits = checks.check(
        "limits pod: a spinning guest with a CPU quota and a sleeper with 64 MiB start",
        |c| pods::Limits::start(c, &mut ids),
    );
    if let Some(limits) = limits {
        let stats = match driver {
            PodCgroups::Systemd => {
                "ContainerStats of a spinning guest, and its pod slice (containerd 2.1's \
                 PodSandboxStats reads no slice): CPU and memory"
            }
            _ => "ContainerStats and PodSandboxStats of a spinning guest: CPU and memory",
        };
        checks.check(stats, |c| limits.stats(c));
        checks.check(
            "CPU quota 20000/100000: cpu.max, and the spinning guest under a core",
            |c| limits.cpu_quota(c),
        );
        checks.check(
            "UpdateContainerResources raises memory.max from 64 to 128 MiB",
            |c| limits.update_memory(c),
        );
        checks.check("a memory hog over 64 MiB is OOMKilled", |c| {
            limits.oom(c, &mut ids)
        });
        checks.check("limits pod: stop and remove", |c| limits.remove(c));
    }
    checks.check(
        "after removal: no scope or cgroup, guest, shim, rootfs mount or netns left",
        |_| before.leftovers(&ids),
    );
    Ok(!checks.failed)
}
