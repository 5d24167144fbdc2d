//! Pids against a real cgroup: a process with several threads is one process.

use super::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const CHILD_ENV: &str = "WASMTIME_SHIM_TEST_THREADED_CHILD";

/// Not a test: the process `pids_lists_processes_not_threads` starts, with three threads.
#[test]
#[ignore = "the child process of pids_lists_processes_not_threads"]
fn threaded_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    for _ in 0..2 {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(60)));
    }
    std::thread::sleep(Duration::from_secs(60));
}

/// The threaded child and its cgroup, both removed on drop, also when the test fails.
struct Fixture {
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            // The kernel lets the cgroup go a moment after its last process is reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Where the test cgroup goes: the hierarchy's mount point and this process's cgroup in it,
/// the unified hierarchy (v2), else the memory controller's (v1: where cgroups-rs's own
/// `Manager::pids` reads `tasks`).
fn parent() -> (bool, String, String) {
    let probe = cgroups_rs::manager::FsManager::new("").unwrap();
    if probe.v2() {
        let own = probe.paths().get("").cloned().unwrap_or_default();
        let mount = cgroups_rs::fs::hierarchies::UNIFIED_MOUNTPOINT.to_string();
        (true, mount, own)
    } else {
        (
            false,
            probe.mounts()["memory"].clone(),
            probe.paths()["memory"].clone(),
        )
    }
}

/// `ctr task ps` of a guest with three threads lists one process.
#[tokio::test]
async fn pids_lists_processes_not_threads() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: creating a cgroup needs root");
        return;
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["task::tests::pids::threaded_child", "--exact", "--ignored"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut fixture = Fixture { child, dir: None };
    for _ in 0..500 {
        if threads(pid) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(threads(pid) >= 3, "the child has {} threads", threads(pid));

    let (v2, mount, own) = parent();
    let name = format!("wasmtime-shim-pids-test-{pid}");
    let relative = format!("{}/{name}", own.trim_matches('/'))
        .trim_start_matches('/')
        .to_string();
    let dir = PathBuf::from(format!("{mount}/{relative}"));
    std::fs::create_dir(&dir).unwrap();
    fixture.dir = Some(dir.clone());
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
    let threads_file = if v2 { "cgroup.threads" } else { "tasks" };
    let listed = std::fs::read_to_string(dir.join(threads_file)).unwrap();
    assert!(listed.lines().count() >= 3, "{threads_file}: {listed}");

    let h = harness().await;
    let cgroup = Cgroup::open(&relative).unwrap();
    let _exit = h.add("ps", pid, Status::Running, Some(cgroup));
    let req = PidsRequest {
        id: "ps".into(),
        ..Default::default()
    };
    let resp = h.service.pids(&ctx(), req).await.unwrap();
    let pids: Vec<u32> = resp.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [pid]);
}

/// A cgroup that cannot be read leaves the guest's pid alone.
#[tokio::test]
async fn pids_fall_back_to_the_guest() {
    let h = harness().await;
    let (entered, _) = mpsc::unbounded_channel();
    let manager = SlowManager {
        slow: "",
        fired: AtomicBool::new(false),
        entered,
        done: Arc::default(),
        none: HashMap::new(),
    };
    let cgroup = Cgroup::with_manager("/gone", Box::new(manager));
    let _exit = h.add("c1", 77, Status::Running, Some(cgroup));
    let req = PidsRequest {
        id: "c1".into(),
        ..Default::default()
    };
    let resp = h.service.pids(&ctx(), req).await.unwrap();
    let pids: Vec<u32> = resp.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [77]);
}
