//! Create/start/wait/delete cycles through containerd's gRPC API on one client connection, as
//! a kubelet-like client drives it: snapshot, container, task, start, wait, delete, cleanup.

use anyhow::{Context, Result};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Request;
use containerd_client::tonic::transport::Channel;
use containerd_client::with_namespace;
use std::path::Path;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "default";
const SNAPSHOTTER: &str = "overlayfs";
static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What every cycle runs.
pub struct Workload {
    pub image: String,
    /// Chain id of the image's (single) layer: the snapshot parent.
    pub chain_id: String,
    pub args: Vec<String>,
    pub runtime: String,
    /// `io.kubernetes.cri.sandbox-id` shared by all containers (one shim serves them).
    pub pod: String,
    /// The pod sandbox's process, whose network, IPC and UTS namespaces every container joins.
    pub sandbox_pid: i32,
}

/// The API calls of one cycle, in order.
pub const STEPS: [&str; 8] = [
    "create container",
    "prepare snapshot",
    "create task",
    "start task",
    "wait task",
    "delete task",
    "delete container",
    "remove snapshot",
];

/// What a run measured.
pub struct Report {
    /// Wall time of all cycles.
    pub took: Duration,
    /// Mean latency of each of [`STEPS`], per cycle.
    pub steps: [Duration; STEPS.len()],
}

/// Runs `total` cycles split over `parallel` concurrent workers.
pub fn run(socket: &Path, workload: &Workload, total: usize, parallel: usize) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = containerd_client::connect(socket)
            .await
            .context("connect to containerd")?;
        let start = Instant::now();
        let mut workers = Vec::new();
        for w in 0..parallel {
            let channel = channel.clone();
            let count = total / parallel + usize::from(w < total % parallel);
            let spec = spec(workload);
            let workload = (
                workload.image.clone(),
                workload.chain_id.clone(),
                workload.runtime.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut steps = [Duration::ZERO; STEPS.len()];
                for i in 0..count {
                    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let id = format!("tp-{w}-{i}-{n}");
                    cycle(&channel, &workload, &spec, &id, &mut steps).await?;
                }
                anyhow::Ok(steps)
            }));
        }
        let mut steps = [Duration::ZERO; STEPS.len()];
        for w in workers {
            for (sum, step) in steps.iter_mut().zip(w.await??) {
                *sum += step;
            }
        }
        let took = start.elapsed();
        let cycles = u32::try_from(total.max(1))?;
        Ok(Report {
            took,
            steps: steps.map(|d| d / cycles),
        })
    })
}

/// A container spec shaped like CRI's, the same for both runtimes: it joins the sandbox's
/// network, IPC and UTS namespaces, gets its own mount and pid namespaces and its own cgroup
/// (`{ID}` is replaced per container), and a container's usual capabilities.
fn spec(w: &Workload) -> String {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let ns = |kind: &str, file: &str| serde_json::json!({ "type": kind, "path": format!("/proc/{}/ns/{file}", w.sandbox_pid) });
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": { "uid": 0, "gid": 0 },
            "args": w.args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs" },
        "hostname": "bench",
        "annotations": { "io.kubernetes.cri.sandbox-id": w.pod },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        ],
        "linux": {
            "cgroupsPath": "/default/{ID}",
            "namespaces": [
                { "type": "mount" }, { "type": "pid" },
                ns("network", "net"), ns("ipc", "ipc"), ns("uts", "uts"),
            ],
        },
    })
    .to_string()
}

async fn cycle(
    channel: &Channel,
    (image, chain_id, runtime): &(String, String, String),
    spec: &str,
    id: &str,
    steps: &mut [Duration; STEPS.len()],
) -> Result<()> {
    let mut clock = Instant::now();
    let mut lap = |step: usize| {
        let now = Instant::now();
        steps[step] += now - clock;
        clock = now;
    };
    let mut snapshots = SnapshotsClient::new(channel.clone());
    let mut containers = ContainersClient::new(channel.clone());
    let mut tasks = TasksClient::new(channel.clone());

    containers
        .create(with_namespace!(
            CreateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    image: image.clone(),
                    runtime: Some(Runtime {
                        name: runtime.clone(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                        value: spec.replace("{ID}", id).into_bytes(),
                    }),
                    snapshotter: SNAPSHOTTER.into(),
                    snapshot_key: id.into(),
                    ..Default::default()
                }),
            },
            NAMESPACE
        ))
        .await
        .context("create container")?;
    lap(0);
    // Prepared after the container exists, which then holds it against garbage collection.
    let mounts = snapshots
        .prepare(with_namespace!(
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
                parent: chain_id.clone(),
                ..Default::default()
            },
            NAMESPACE
        ))
        .await
        .context("prepare snapshot")?
        .into_inner()
        .mounts;
    lap(1);
    tasks
        .create(with_namespace!(
            CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                ..Default::default()
            },
            NAMESPACE
        ))
        .await
        .context("create task")?;
    lap(2);
    tasks
        .start(with_namespace!(
            StartRequest {
                container_id: id.into(),
                ..Default::default()
            },
            NAMESPACE
        ))
        .await
        .context("start task")?;
    lap(3);
    let status = tasks
        .wait(with_namespace!(
            WaitRequest {
                container_id: id.into(),
                ..Default::default()
            },
            NAMESPACE
        ))
        .await
        .context("wait task")?
        .into_inner()
        .exit_status;
    lap(4);
    anyhow::ensure!(status == 0, "{id} exited with {status}");
    tasks
        .delete(with_namespace!(
            DeleteTaskRequest {
                container_id: id.into()
            },
            NAMESPACE
        ))
        .await
        .context("delete task")?;
    lap(5);
    containers
        .delete(with_namespace!(
            DeleteContainerRequest { id: id.into() },
            NAMESPACE
        ))
        .await
        .context("delete container")?;
    lap(6);
    // containerd's garbage collector may have removed it with the container already.
    let removed = snapshots
        .remove(with_namespace!(
            RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            },
            NAMESPACE
        ))
        .await;
    lap(7);
    match removed {
        Err(status) if status.code() != containerd_client::tonic::Code::NotFound => {
            Err(status).context("remove snapshot")
        }
        _ => Ok(()),
    }
}
