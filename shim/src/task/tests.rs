//! The Task service in-process: a real `TaskService` (without its zygote), containerd's event
//! service faked on a unix socket behind the real publisher, containers inserted directly,
//! cgroups faked where a slow one is needed.

use super::*;
use crate::cgroup::Cgroup;
use crate::state::Exit;
use cgroups_rs::manager::Manager;
use cgroups_rs::{CgroupPid, CgroupStats, FreezerState};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Events as EventService, create_events};
use containerd_shim::protos::ttrpc::asynchronous::Server;
use containerd_shim::protos::ttrpc::asynchronous::transport::Listener;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::publisher::RemotePublisher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

mod pids;

/// containerd's event service: records the topics forwarded to it, in order.
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl EventService for Recorder {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let topic = req.envelope.topic.clone();
        self.0.lock().unwrap().push(topic);
        Ok(Empty::new())
    }
}

struct Harness {
    service: Arc<TaskService>,
    topics: Arc<Mutex<Vec<String>>>,
    _server: Server,
    dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("events.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let topics = Arc::new(Mutex::new(Vec::new()));
    let mut server = Server::new()
        .add_listener(Listener::try_from(listener).unwrap())
        .register_service(create_events(Arc::new(Recorder(topics.clone()))));
    server.start().await.unwrap();
    let publisher = RemotePublisher::new(socket.to_str().unwrap())
        .await
        .unwrap();
    let service = TaskService::without_zygote(
        Arc::default(),
        Events::new(publisher, "test"),
        Arc::default(),
        (String::new(), String::new()),
    );
    Harness {
        service: Arc::new(service),
        topics,
        _server: server,
        dir,
    }
}

impl Harness {
    /// The topics published so far, once there are at least `n` (or after 5 s).
    async fn topics(&self, n: usize) -> Vec<String> {
        for _ in 0..500 {
            if self.topics.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.topics.lock().unwrap().clone()
    }

    /// Puts a container in the service, with its exit watcher running. The returned sender
    /// is the guest's exit.
    fn add(
        &self,
        id: &str,
        pid: u32,
        status: Status,
        cgroup: Option<Cgroup>,
    ) -> (watch::Sender<Option<Exit>>, Arc<tokio::sync::Mutex<()>>) {
        let (exit_tx, exit) = watch::channel(None);
        let (reported_tx, exit_reported) = watch::channel(false);
        let lifecycle = Arc::new(tokio::sync::Mutex::new(()));
        let container = Container {
            id: id.to_string(),
            bundle: self.dir.path().join(id),
            mounted_rootfs: None,
            pid: pid as i32,
            pidfd: None,
            status,
            stdio: Default::default(),
            guest: None,
            native: None,
            exit,
            exit_reported,
            lifecycle: lifecycle.clone(),
            cgroup: cgroup.map(|c| Arc::new(Mutex::new(c))),
            execs: Default::default(),
            exec_base: None,
        };
        self.service.admit(container, reported_tx);
        (exit_tx, lifecycle)
    }
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

fn code<T>(result: &TtrpcResult<T>) -> Option<(Code, String)> {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => Some((status.code(), status.message().into())),
        _ => None,
    }
}

/// Two Creates of one id at once: one is refused while the other is in flight (mounting a
/// rootfs that is not there, on a blocking pool of one thread kept busy meanwhile, so the
/// mount surely waits), and the id is free again once that one failed.
#[test]
fn concurrent_creates_of_one_id_get_already_exists() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    runtime.block_on(async {
        let h = harness().await;
        let bundle = h.dir.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"ociVersion": "1.0.2",
                "process": {"user": {"uid": 0, "gid": 0}, "args": ["/app.wasm"], "cwd": "/"},
                "root": {"path": "rootfs"}}"#,
        )
        .unwrap();
        let req = CreateTaskRequest {
            id: "c1".into(),
            bundle: bundle.to_string_lossy().into_owned(),
            rootfs: vec![Mount {
                type_: "bind".into(),
                source: h.dir.path().join("missing").to_string_lossy().into_owned(),
                options: vec!["rbind".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (release, busy) = std::sync::mpsc::channel::<()>();
        let blocker = tokio::task::spawn_blocking(move || busy.recv());
        let ctx = ctx();
        let (first, second, _) = tokio::join!(
            h.service.create(&ctx, req.clone()),
            h.service.create(&ctx, req.clone()),
            async {
                // Both Creates have run up to their first wait by now.
                tokio::task::yield_now().await;
                release.send(()).unwrap();
            }
        );
        blocker.await.unwrap().unwrap();
        let mut codes = [code(&first).unwrap(), code(&second).unwrap()];
        codes.sort_by_key(|(code, _)| *code as i32);
        let [(refused, refusal), (failed, failure)] = codes;
        assert_eq!(
            (refused, refusal.as_str()),
            (Code::ALREADY_EXISTS, "container c1 already exists")
        );
        assert_eq!(failed, Code::INTERNAL, "{failure}");
        assert!(failure.contains("mount rootfs"), "{failure}");
        let third = h.service.create(&ctx, req).await;
        assert_eq!(code(&third).map(|c| c.0), Some(Code::INTERNAL));
        assert!(h.service.containers().creating.is_empty());
    });
}

/// Delete of a container whose exit watcher is held up after the exit is known (as by its
/// OOM check): TaskExit still comes first, and once.
#[tokio::test]
async fn delete_publishes_task_exit_before_task_delete() {
    let h = harness().await;
    let (exit, lifecycle) = h.add("c1", 4242, Status::Created, None);
    let held = lifecycle.lock().await;
    let at = SystemTime::now();
    exit.send_replace(Some(Exit { status: 137, at }));
    let service = h.service.clone();
    let delete = tokio::spawn(async move {
        let req = DeleteRequest {
            id: "c1".into(),
            ..Default::default()
        };
        service.delete(&ctx(), req).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);
    let resp = delete.await.unwrap().unwrap();
    assert_eq!((resp.pid, resp.exit_status), (4242, 137));
    assert_eq!(
        h.topics(2).await,
        [TASK_EXIT_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.topics(3).await.len(), 2, "an exit reported twice");
}

/// How long a [`SlowManager`] call takes.
const SLOW: Duration = Duration::from_secs(2);

/// A cgroup manager whose call named `slow` takes [`SLOW`] the first time, like a cgroup
/// write stuck in the kernel or a systemd slow to answer over D-Bus.
struct SlowManager {
    slow: &'static str,
    fired: AtomicBool,
    entered: mpsc::UnboundedSender<&'static str>,
    done: Arc<AtomicBool>,
    none: HashMap<String, String>,
}

impl SlowManager {
    fn call(&self, name: &'static str) {
        if name == self.slow && !self.fired.swap(true, Ordering::SeqCst) {
            let _ = self.entered.send(name);
            std::thread::sleep(SLOW);
            self.done.store(true, Ordering::SeqCst);
        }
    }
}

impl Manager for SlowManager {
    fn add_proc(&mut self, _: CgroupPid) -> cgroups_rs::manager::Result<()> {
        Ok(())
    }
    fn add_thread(&mut self, _: CgroupPid) -> cgroups_rs::manager::Result<()> {
        Ok(())
    }
    fn pids(&self) -> cgroups_rs::manager::Result<Vec<CgroupPid>> {
        self.call("pids");
        Ok(Vec::new())
    }
    fn freeze(&self, state: FreezerState) -> cgroups_rs::manager::Result<()> {
        self.call(match state {
            FreezerState::Frozen => "freeze",
            _ => "thaw",
        });
        Ok(())
    }
    fn destroy(&mut self) -> cgroups_rs::manager::Result<()> {
        Ok(())
    }
    fn set(&mut self, _: &oci_spec::runtime::LinuxResources) -> cgroups_rs::manager::Result<()> {
        self.call("set");
        Ok(())
    }
    fn cgroup_path(&self, _: Option<&str>) -> cgroups_rs::manager::Result<String> {
        Ok(String::new())
    }
    fn enable_cpus_topdown(&self, _: &str) -> cgroups_rs::manager::Result<()> {
        Ok(())
    }
    fn stats(&self) -> CgroupStats {
        self.call("stats");
        CgroupStats::default()
    }
    fn paths(&self) -> &HashMap<String, String> {
        &self.none
    }
    fn mounts(&self) -> &HashMap<String, String> {
        &self.none
    }
    fn systemd(&self) -> bool {
        false
    }
    /// The first question both Pids and the OOM check ask.
    fn v2(&self) -> bool {
        self.call("v2");
        false
    }
}

/// Pause, Resume, Update, Stats, Pids and the exit watcher's OOM check, each stuck in a slow
/// cgroup of its own container, do not hold up State of another container: the shim's one
/// async thread (a current-thread runtime, as in production) stays free.
#[tokio::test]
async fn a_slow_cgroup_does_not_hold_up_other_containers() {
    let h = harness().await;
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let mut done = Vec::new();
    let mut exits = Vec::new();
    let me = std::process::id();
    for (id, status, slow) in [
        ("pause", Status::Running, "freeze"),
        ("resume", Status::Paused, "thaw"),
        ("update", Status::Running, "set"),
        ("stats", Status::Running, "stats"),
        ("pids", Status::Running, "v2"),
        ("oom", Status::Running, "v2"),
    ] {
        let finished = Arc::new(AtomicBool::new(false));
        let manager = SlowManager {
            slow,
            fired: AtomicBool::new(false),
            entered: entered_tx.clone(),
            done: finished.clone(),
            none: HashMap::new(),
        };
        let cgroup = Cgroup::with_manager(id, Box::new(manager));
        exits.push(h.add(id, me, status, Some(cgroup)).0);
        done.push((id, finished));
    }
    h.add("other", me, Status::Running, None);

    let s = h.service.clone();
    let mut calls = vec![tokio::spawn(async move {
        let req = PauseRequest {
            id: "pause".into(),
            ..Default::default()
        };
        s.pause(&ctx(), req).await.map(drop)
    })];
    let s = h.service.clone();
    calls.push(tokio::spawn(async move {
        let req = ResumeRequest {
            id: "resume".into(),
            ..Default::default()
        };
        s.resume(&ctx(), req).await.map(drop)
    }));
    let s = h.service.clone();
    calls.push(tokio::spawn(async move {
        let req = UpdateTaskRequest {
            id: "update".into(),
            resources: Some(Any {
                value: br#"{"pids": {"limit": 10}}"#.to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        s.update(&ctx(), req).await.map(drop)
    }));
    let s = h.service.clone();
    calls.push(tokio::spawn(async move {
        let req = StatsRequest {
            id: "stats".into(),
            ..Default::default()
        };
        s.stats(&ctx(), req).await.map(drop)
    }));
    let s = h.service.clone();
    calls.push(tokio::spawn(async move {
        let req = PidsRequest {
            id: "pids".into(),
            ..Default::default()
        };
        s.pids(&ctx(), req).await.map(drop)
    }));
    let exit = Exit {
        status: 137,
        at: SystemTime::now(),
    };
    exits[5].send_replace(Some(exit));

    for _ in 0..done.len() {
        tokio::time::timeout(Duration::from_secs(30), entered.recv())
            .await
            .expect("every slow call starts")
            .unwrap();
    }
    let req = StateRequest {
        id: "other".into(),
        ..Default::default()
    };
    let state = h.service.state(&ctx(), req).await.unwrap();
    assert_eq!(state.status(), containerd_shim::api::Status::RUNNING);
    let finished: Vec<&str> = done
        .iter()
        .filter(|(_, d)| d.load(Ordering::SeqCst))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        finished.is_empty(),
        "State waited for the slow cgroup calls of {finished:?}"
    );
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let topics = h.topics(3).await;
    assert!(
        topics.contains(&TASK_EXIT_EVENT_TOPIC.to_string()),
        "{topics:?}"
    );
}
