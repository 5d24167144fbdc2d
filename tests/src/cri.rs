//! A CRI client that plays kubelet against a [`Containerd`] started with
//! [`Containerd::start_cri`], or against a node's containerd by its socket
//! ([`Cri::connect_socket`]): the same calls, with the same kind of configs kubelet sends.

use crate::containerd::{Containerd, HANDLER};
pub use crate::pod_cgroups::{PodCgroups, remove_cgroup};
use anyhow::{Context, Result, bail};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Pods run and not removed yet (id, cgroup parent): removed on drop, so a test that fails
    /// part-way leaves no network namespace or pod cgroup behind.
    live: std::cell::RefCell<Vec<(String, String)>>,
    /// How pod cgroups are named, made and removed (kubelet's cgroup driver).
    cgroups: PodCgroups,
}

/// A pod as kubelet creates it: its config (which every container create repeats) and its
/// log directory.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
    /// The pod's cgroup, which kubelet creates and removes around the pod's containers.
    pub cgroup_parent: String,
}

/// A container to create in a pod.
#[derive(Default, Clone)]
pub struct Spec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub memory_limit: i64,
    /// CFS quota and period in microseconds (0: unset), as kubelet sends a CPU limit.
    pub cpu_quota: i64,
    pub cpu_period: i64,
    /// Volumes: host path, container path, read-only (an emptyDir or hostPath as kubelet
    /// passes it: a bind mount).
    pub mounts: Vec<(PathBuf, String, bool)>,
}

impl Spec {
    pub fn new(name: &str, image: &str) -> Spec {
        Spec {
            name: name.into(),
            image: image.into(),
            ..Default::default()
        }
    }

    pub fn args(mut self, args: &[&str]) -> Spec {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn command(mut self, command: &[&str]) -> Spec {
        self.command = command.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Spec {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn mount(mut self, host: &Path, container: &str, readonly: bool) -> Spec {
        self.mounts
            .push((host.to_path_buf(), container.into(), readonly));
        self
    }

    pub fn memory_limit(mut self, bytes: i64) -> Spec {
        self.memory_limit = bytes;
        self
    }

    pub fn cpu_quota(mut self, quota: i64, period: i64) -> Spec {
        self.cpu_quota = quota;
        self.cpu_period = period;
        self
    }

    /// The resources kubelet sends for this container.
    pub fn resources(&self) -> LinuxContainerResources {
        LinuxContainerResources {
            memory_limit_in_bytes: self.memory_limit,
            cpu_shares: 2,
            cpu_quota: self.cpu_quota,
            cpu_period: self.cpu_period,
            // A BestEffort pod's, as kubelet sets it.
            oom_score_adj: 1000,
            ..Default::default()
        }
    }
}

impl Cri {
    pub fn connect(c: &Containerd) -> Result<Cri> {
        Self::connect_socket(&c.socket(), Duration::from_secs(20))
            .with_context(|| format!("containerd log:\n{}", c.log()))
    }

    /// Connects to the containerd listening on `socket` and waits up to `timeout` until CRI
    /// reports the runtime and the network ready. Pod cgroups are [`PodCgroups::E2e`] until
    /// [`Cri::with_pod_cgroups`] says otherwise.
    pub fn connect_socket(socket: &Path, timeout: Duration) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let channel = rt.block_on(containerd_client::connect(socket))?;
        let cri = Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
            live: Default::default(),
            cgroups: PodCgroups::E2e,
        };
        // CRI starts after containerd answers, and learns of imported images from events.
        let deadline = Instant::now() + timeout;
        loop {
            let mut runtime = cri.runtime.clone();
            let status = cri
                .rt
                .block_on(runtime.status(StatusRequest { verbose: false }));
            if let Ok(status) = status {
                let ready = status.into_inner().status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .filter(|c| c.r#type == "RuntimeReady" || c.r#type == "NetworkReady")
                        .all(|c| c.status)
                });
                if ready {
                    return Ok(cri);
                }
            }
            if Instant::now() > deadline {
                bail!("CRI did not become ready within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Names, makes and removes pod cgroups as kubelet with this cgroup driver does.
    pub fn with_pod_cgroups(mut self, cgroups: PodCgroups) -> Cri {
        self.cgroups = cgroups;
        self
    }

    pub fn pod_cgroups(&self) -> PodCgroups {
        self.cgroups
    }

    /// CRI's verbose Status: the runtime conditions and `info` (`config` is CRI's
    /// configuration as JSON, with its runtime handlers).
    pub fn verbose_status(&self) -> Result<StatusResponse> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.status(StatusRequest { verbose: true }))
            .context("Status")
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.rt
            .block_on(f)
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
    }

    /// Waits until CRI lists `image` (imported with `ctr -n k8s.io`).
    pub fn wait_image(&self, image: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut images = self.images.clone();
            let found = self
                .call(images.image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                }))?
                .image
                .is_some();
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRI does not know image {image}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PullImage as kubelet sends it (no credentials, the pod's config); returns the image
    /// reference CRI resolved (`<name>@sha256:...`).
    pub fn pull(&self, image: &str, pod: Option<&Pod>) -> Result<String> {
        let mut images = self.images.clone();
        Ok(self
            .call(images.pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: pod.map(|p| p.config.clone()),
            }))
            .with_context(|| format!("PullImage {image}"))?
            .image_ref)
    }

    /// RunPodSandbox with the `wasmtime` handler, a pod cgroup named by [`Cri::pod_cgroups`]
    /// (made first, as kubelet does), the pod's own network namespace, and kubelet's namespace options (pid per container, ipc shared).
    pub fn run_pod(&self, name: &str, logs: &Path) -> Result<Pod> {
        self.run_pod_with(name, logs, HANDLER)
    }

    /// RunPodSandbox as [`Cri::run_pod`], with the runtime handler `handler` (`runc` for the
    /// benchmark's native pods).
    pub fn run_pod_with(&self, name: &str, logs: &Path, handler: &str) -> Result<Pod> {
        let uid = format!("{name}-{}", std::process::id());
        let log_dir = logs.join(&uid);
        std::fs::create_dir_all(&log_dir)?;
        let cgroup_parent = self.cgroups.parent(&uid);
        self.cgroups.create(&cgroup_parent)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut runtime = self.runtime.clone();
        let id = match self.call(runtime.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })) {
            Ok(r) => r.pod_sandbox_id,
            Err(e) => {
                let _ = self.cgroups.remove(&cgroup_parent);
                return Err(e.context("RunPodSandbox"));
            }
        };
        self.live
            .borrow_mut()
            .push((id.clone(), cgroup_parent.clone()));
        Ok(Pod {
            id,
            config,
            log_dir,
            cgroup_parent,
        })
    }

    /// CreateContainer with `log_path` `<name>.log` in the pod's log directory.
    pub fn create(&self, pod: &Pod, spec: &Spec) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            log_path: format!("{}.log", spec.name),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container, readonly)| Mount {
                    host_path: host.to_string_lossy().into_owned(),
                    container_path: container.clone(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            linux: Some(LinuxContainerConfig {
                resources: Some(spec.resources()),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: pod
                        .config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|s| s.namespace_options.clone()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut runtime = self.runtime.clone();
        Ok(self
            .call(runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .with_context(|| format!("CreateContainer {}", spec.name))?
            .container_id)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.start_container(StartContainerRequest {
            container_id: id.into(),
        }))
        .context("StartContainer")?;
        Ok(())
    }

    /// Create and start; returns the container id.
    pub fn run(&self, pod: &Pod, spec: &Spec) -> Result<String> {
        let id = self.create(pod, spec)?;
        self.start(&id)?;
        Ok(id)
    }

    /// UpdateContainerResources, as kubelet's in-place resize sends it.
    pub fn update(&self, id: &str, resources: LinuxContainerResources) -> Result<()> {
        let mut runtime = self.runtime.clone();
        self.call(
            runtime.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(resources),
                ..Default::default()
            }),
        )
        .context("UpdateContainerResources")?;
        Ok(())
    }

    /// The container's process id on the node, from ContainerStatus's verbose `info`.
    pub fn pid(&self, id: &str) -> Result<i32> {
        let mut runtime = self.runtime.clone();
        let info = self
            .call(runtime.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }))?
            .info;
        let json: serde_json::Value = serde_json::from_str(info.get("info").context("no info")?)?;
        json.get("pid")
            .and_then(serde_json::Value::as_i64)
            .filter(|p| *p > 0)
            .map(|p| p as i32)
            .with_context(|| format!("no pid in the verbose status of {id}"))
    }

    pub fn status(&self, id: &str) -> Result<ContainerStatus> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        }))?
        .status
        .context("ContainerStatus without a status")
    }

    /// Polls ContainerStatus until the container exited (as kubelet's PLEG does).
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        self.wait_exited_polling(id, timeout, Duration::from_millis(20))
    }

    /// [`Cri::wait_exited`], asking every `poll`.
    pub fn wait_exited_polling(
        &self,
        id: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id)?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} still in state {} after {timeout:?}",
                    status.state
                );
            }
            std::thread::sleep(poll);
        }
    }

    pub fn stop(&self, id: &str, grace_seconds: i64) -> Result<()> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: grace_seconds,
        }))
        .context("StopContainer")?;
        Ok(())
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.remove_container(RemoveContainerRequest {
            container_id: id.into(),
        }))
        .context("RemoveContainer")?;
        Ok(())
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse> {
        self.exec_sync_within(id, cmd, 5)
    }

    /// ExecSync with kubelet's probe `timeout` in seconds.
    pub fn exec_sync_within(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            timeout,
        }))
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.container_stats(ContainerStatsRequest {
            container_id: id.into(),
        }))?
        .stats
        .context("ContainerStats without stats")
    }

    pub fn pod_stats(&self, pod: &Pod) -> Result<PodSandboxStats> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        }))?
        .stats
        .context("PodSandboxStats without stats")
    }

    /// The pod's IP on the CNI network.
    pub fn pod_ip(&self, pod: &Pod) -> Result<String> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: false,
        }))?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .filter(|ip| !ip.is_empty())
        .context("the pod has no IP")
    }

    /// StopPodSandbox then RemovePodSandbox (which removes the pod's containers), then the pod
    /// cgroup, as kubelet does; the cgroup removal fails if a container's cgroup is left in it.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.remove_pod_id(&pod.id)?;
        self.live.borrow_mut().retain(|(id, _)| *id != pod.id);
        self.cgroups.remove(&pod.cgroup_parent)
    }

    fn remove_pod_id(&self, id: &str) -> Result<()> {
        let mut runtime = self.runtime.clone();
        self.call(runtime.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))
        .context("StopPodSandbox")?;
        self.call(runtime.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))
        .context("RemovePodSandbox")?;
        Ok(())
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        for (id, cgroup) in self.live.take() {
            let _ = self.remove_pod_id(&id);
            let _ = self.cgroups.remove(&cgroup);
        }
    }
}

/// Lines of a CRI log file: `(stream, tag, text)` from `<time> <stream> <P|F> <text>`.
pub fn log_lines(path: &Path) -> Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut lines = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("not a CRI log line: {line:?}");
        };
        if !time.contains('T') || !(stream == "stdout" || stream == "stderr") {
            bail!("not a CRI log line: {line:?}");
        }
        lines.push((
            stream.to_string(),
            tag.to_string(),
            parts.next().unwrap_or("").to_string(),
        ));
    }
    Ok(lines)
}
