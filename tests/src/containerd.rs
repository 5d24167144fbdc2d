//! A private containerd for one test: its own root, state, sockets and shim PATH under a temp
//! dir, never the system's. Dropping it stops containerd, kills the shims it started, unmounts
//! what is left and removes the directory.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The containerd versions the shim is tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Debian 12's containerd 1.6 (config version 2).
    V1_6,
    /// containerd 1.7 from Debian trixie, unpacked by scripts/install-deps.sh (config version 2).
    V1_7,
    /// containerd 2.1 from Debian sid, unpacked by scripts/install-deps.sh (config version 3).
    V2_1,
}

pub const ALL: [Version; 2] = [Version::V1_6, Version::V2_1];
pub const RUNTIME: &str = "io.containerd.wasmtime.v1";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl Version {
    /// The `containerd` binary of this version.
    pub fn binary(self) -> PathBuf {
        self.bin_dir().join("containerd")
    }

    fn bin_dir(self) -> PathBuf {
        match self {
            Version::V1_6 => PathBuf::from("/usr/bin"),
            Version::V1_7 => workspace().join("target/containerd-1.7/usr/bin"),
            Version::V2_1 => workspace().join("target/containerd-2.1/usr/bin"),
        }
    }

    fn config(self, dir: &Path, cri: bool, handler: bool) -> String {
        if cri {
            return self.cri_config(dir, handler);
        }
        let d = dir.display();
        match self {
            Version::V1_6 | Version::V1_7 => format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n[debug]\n  level = \"debug\"\n"
            ),
            Version::V2_1 => format!(
                "version = 3\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \
                 \"io.containerd.cri.v1.runtime\", \"io.containerd.nri.v1.nri\",]\n\
                 [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n[debug]\n  level = \"debug\"\n"
            ),
        }
    }
}

impl Version {
    /// A containerd config with the CRI plugin on, as a node's: (with `handler`) the `wasmtime`
    /// handler beside runc, CNI from Debian's plugins (conflist in `<dir>/cni`), the local pause
    /// image, `restrict_oom_score_adj` (this machine lacks CAP_SYS_RESOURCE), and CRI's
    /// streaming server on a free loopback port.
    fn cri_config(self, dir: &Path, handler: bool) -> String {
        let d = dir.display();
        let wasmtime = |plugin: &str| {
            if handler {
                format!(
                    "[plugins.\"{plugin}\".containerd.runtimes.{HANDLER}]\n\
                     runtime_type = \"{RUNTIME}\"\n\
                     pod_annotations = [\"wasmtime.containerd.io/*\"]\n"
                )
            } else {
                String::new()
            }
        };
        let (v2, v3) = (
            wasmtime("io.containerd.grpc.v1.cri"),
            wasmtime("io.containerd.cri.v1.runtime"),
        );
        let common = format!(
            "root = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.nri.v1.nri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n"
        );
        match self {
            Version::V1_6 | Version::V1_7 => format!(
                "version = 2\n{common}\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 sandbox_image = \"{PAUSE_IMAGE}\"\n\
                 restrict_oom_score_adj = true\n\
                 stream_server_address = \"127.0.0.1\"\n\
                 stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
                 snapshotter = \"overlayfs\"\n\
                 default_runtime_name = \"runc\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                 runtime_type = \"io.containerd.runc.v2\"\n\
                 {v2}\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                 bin_dir = \"/usr/lib/cni\"\n\
                 conf_dir = \"{d}/cni\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
                 config_path = \"{d}/certs.d\"\n"
            ),
            Version::V2_1 => format!(
                "version = 3\n{common}\
                 [plugins.\"io.containerd.cri.v1.images\"]\n\
                 snapshotter = \"overlayfs\"\n\
                 [plugins.\"io.containerd.cri.v1.images\".registry]\n\
                 config_path = \"{d}/certs.d\"\n\
                 [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n\
                 sandbox = \"{PAUSE_IMAGE}\"\n\
                 [plugins.\"io.containerd.cri.v1.runtime\"]\n\
                 restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd]\n\
                 default_runtime_name = \"runc\"\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n\
                 runtime_type = \"io.containerd.runc.v2\"\n\
                 {v3}\
                 [plugins.\"io.containerd.cri.v1.runtime\".cni]\n\
                 bin_dirs = [\"/usr/lib/cni\"]\n\
                 conf_dir = \"{d}/cni\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 stream_server_address = \"127.0.0.1\"\n\
                 stream_server_port = \"0\"\n"
            ),
        }
    }
}

pub struct Containerd {
    pub version: Version,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// With the CRI plugin on: the pod network's bridge, deleted on drop.
    cri: Option<Network>,
}

/// The CNI bridge network of a CRI containerd: a bridge and a /24 of its own, so that tests
/// running side by side do not share addresses (host-local keeps its leases in the temp dir).
pub struct Network {
    pub bridge: String,
    pub subnet_prefix: String,
}

impl Network {
    fn new() -> Network {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % 200 + 20;
        Network {
            bridge: format!("wsh{k}"),
            subnet_prefix: format!("10.213.{k}"),
        }
    }

    fn conflist(&self, dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.bridge,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.join("ipam"),
                        "ranges": [[{ "subnet": format!("{}.0/24", self.subnet_prefix) }]],
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        })
        .to_string()
    }
}

/// The sandbox ("pause") image CRI is configured with. Pods of the `wasmtime` handler never run
/// its program (the shim runs a built-in pause), but CRI needs the image to exist, and runc pods
/// run it: one is built from a static busybox and imported, as nothing can be pulled here.
pub const PAUSE_IMAGE: &str = "localhost/wasmtime-shim/pause:3.10";
/// The CRI runtime handler, as in RuntimeClass.yaml.
pub const HANDLER: &str = "wasmtime";

impl Containerd {
    /// A temp dir named `prefix…` with the config (and with `cri` the CNI conflist) and, with
    /// `shim`, the shim in `bin/` and registered; containerd not started yet.
    fn prepare(
        prefix: &str,
        version: Version,
        cri: Option<Network>,
        shim: bool,
    ) -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin)?;
        if shim {
            let built = workspace().join("target/release/containerd-shim-wasmtime-v1");
            std::fs::copy(&built, bin.join("containerd-shim-wasmtime-v1"))
                .with_context(|| format!("copy {} (build it first)", built.display()))?;
        }
        if let Some(net) = &cri {
            std::fs::create_dir(dir.path().join("cni"))?;
            std::fs::write(
                dir.path().join("cni/10-wasmtime-test.conflist"),
                net.conflist(dir.path()),
            )?;
        }
        std::fs::write(
            dir.path().join("config.toml"),
            version.config(dir.path(), cri.is_some(), shim),
        )?;
        Ok(Containerd {
            version,
            dir,
            child: None,
            cri,
        })
    }

    /// Starts containerd `version` with the freshly built shim first on its PATH.
    pub fn start(version: Version) -> Result<Containerd> {
        let mut c = Self::prepare("wasmtime-shim-e2e.", version, None, true)?;
        c.launch()?;
        Ok(c)
    }

    /// Starts containerd `version` with its CRI plugin on, as a kubelet node has it: the
    /// `wasmtime` runtime handler, a CNI bridge network, and the sandbox image imported into
    /// the `k8s.io` namespace.
    pub fn start_cri(version: Version) -> Result<Containerd> {
        let mut c = Self::prepare("wasmtime-shim-cri.", version, Some(Network::new()), true)?;
        c.boot_cri()?;
        Ok(c)
    }

    /// A CRI node before the shim is installed: config (`config_path`) without the `wasmtime`
    /// handler, an empty `bin/` on containerd's PATH, containerd not running. Start it with
    /// [`Containerd::boot_cri`].
    pub fn cri_node(version: Version) -> Result<Containerd> {
        Self::prepare("wasmtime-shim-node.", version, Some(Network::new()), false)
    }

    /// Starts a prepared CRI containerd and imports the sandbox image.
    pub fn boot_cri(&mut self) -> Result<()> {
        self.launch()?;
        // A static busybox `sleep` as the pause program, for pods of the runc handler (the
        // benchmark's native baseline); the wasmtime shim runs its own pause instead.
        let busybox = std::fs::read("/bin/busybox")
            .context("read /bin/busybox for the pause image (apt-get install busybox-static)")?;
        let pause = crate::image::Image::new(PAUSE_IMAGE)
            .file("/bin/busybox", busybox)
            .entrypoint(&["/bin/busybox", "sleep", "2147483647"]);
        let tar = self.dir.path().join("pause.tar");
        pause.write(&tar)?;
        self.ctr_ok(&["-n", "k8s.io", "images", "import", &tar.to_string_lossy()])?;
        Ok(())
    }

    /// The registry hosts directory (`config_path`) of a CRI containerd: `<host>/hosts.toml`.
    pub fn certs_d(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The directory first on containerd's PATH, where shims are found.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// The pod network of a CRI containerd.
    pub fn network(&self) -> Option<&Network> {
        self.cri.as_ref()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// With the CRI plugin on: the host's address on the pod network (its bridge), which pods
    /// reach the host at.
    pub fn pod_gateway(&self) -> Option<String> {
        self.cri.as_ref().map(|n| format!("{}.1", n.subnet_prefix))
    }

    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let path = format!(
            "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.dir.path().join("bin").display(),
            self.version.bin_dir().display()
        );
        let child = Command::new(self.version.bin_dir().join("containerd"))
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self
                .ctr(&["version"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("containerd did not answer; log:\n{}", self.log())
    }

    /// Stops containerd (SIGTERM) and starts it again on the same root and state.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills containerd with SIGKILL, as a crash or the OOM killer would, leaving its shims
    /// running. Start it again with [`Containerd::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again on the same root and state, after [`Containerd::kill`].
    pub fn start_again(&mut self) -> Result<()> {
        self.launch()
    }

    pub fn containerd_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.version.bin_dir().join("ctr"));
        cmd.arg("--address").arg(self.socket()).args(args);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Ok(self.ctr_command(args).stdin(Stdio::null()).output()?)
    }

    /// Runs ctr with `input` on its stdin, closed after it (as a shell pipe does); kills it
    /// after `limit`, so a process that never sees its input end fails the test instead of
    /// hanging it.
    pub fn ctr_with_input(
        &self,
        args: &[&str],
        input: &[u8],
        limit: std::time::Duration,
    ) -> Result<Output> {
        let mut child = self
            .ctr_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("ctr's stdin")?;
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
        let pid = child.id() as i32;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(limit).is_err() {
                // SAFETY: kill(2) of the ctr child, not yet reaped (wait_with_output holds it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let out = child.wait_with_output()?;
        let _ = done_tx.send(());
        let _ = watchdog.join();
        let _ = feeder.join();
        Ok(out)
    }

    /// Runs ctr and fails with its output unless it succeeds.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports `target/images/<name>.tar`; returns the image reference.
    pub fn import_example(&self, name: &str) -> Result<String> {
        self.import_example_in("default", name)
    }

    /// Imports `target/images/<name>.tar` into `namespace` (`k8s.io` for CRI); returns the
    /// image reference.
    pub fn import_example_in(&self, namespace: &str, name: &str) -> Result<String> {
        let tar = workspace().join(format!("target/images/{name}.tar"));
        self.ctr_ok(&["-n", namespace, "images", "import", &tar.to_string_lossy()])?;
        Ok(format!("localhost/wasmtime-shim/{name}:latest"))
    }

    pub fn import(&self, tar: &Path) -> Result<()> {
        self.ctr_ok(&["images", "import", &tar.to_string_lossy()])?;
        Ok(())
    }

    /// Pids of shim processes serving this containerd.
    pub fn shim_pids(&self) -> Vec<i32> {
        processes_with_arg(&self.socket().to_string_lossy())
            .into_iter()
            .filter(|(_, cmdline)| {
                cmdline
                    .first()
                    .is_some_and(|a| a.contains("containerd-shim-wasmtime"))
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Where containerd expects the shim of `group` in `namespace` to listen.
    pub fn shim_socket(&self, namespace: &str, group: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = format!("{}/{namespace}/{group}", self.socket().display());
        let hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PathBuf::from("/run/containerd/s").join(hash)
    }

    /// Mounts under this containerd's directory.
    pub fn mounts(&self) -> Vec<String> {
        let prefix = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        for (pid, args) in processes_with_arg(&self.socket().to_string_lossy()) {
            if !args
                .first()
                .is_some_and(|a| a.contains("containerd-shim-wasmtime"))
            {
                continue;
            }
            // SAFETY: killing shims this test's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // ...and removing the sockets they can no longer remove.
            if let Some(path) = args
                .iter()
                .skip_while(|a| *a != "-socket")
                .nth(1)
                .and_then(|a| a.strip_prefix("unix://"))
            {
                let _ = std::fs::remove_file(path);
            }
        }
        let mut mounts = self.mounts();
        mounts.sort();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        // The bridge plugin never deletes its bridge; a node keeps it, a test does not.
        if let Some(net) = &self.cri {
            let _ = Command::new("ip")
                .args(["link", "del", &net.bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `(pid, argv)` of every process with an argument containing `needle`.
pub fn processes_with_arg(needle: &str) -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.contains(needle)) {
            out.push((pid, args));
        }
    }
    out
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Calls the Tasks service's Update for container `id` of namespace `default` with `resources`
/// (an OCI `LinuxResources` as JSON), as kubelet's in-place resize does through CRI. `ctr` has
/// no command for it.
pub fn update_task(c: &Containerd, id: &str, resources: serde_json::Value) -> Result<()> {
    use containerd_client::services::v1::UpdateTaskRequest;
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::tonic::Request;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = containerd_client::connect(c.socket()).await?;
        let request = UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources)?,
            }),
            ..Default::default()
        };
        TasksClient::new(channel)
            .update(containerd_client::with_namespace!(request, "default"))
            .await?;
        Ok(())
    })
}
