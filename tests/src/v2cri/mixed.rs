//! A mixed pod on the v2 node: a Wasm container and a native (busybox) sidecar run through runc
//! by the shim, in the cgroup kubelet names, with exec probes into both.

use super::Checks;
use super::pods::{EXIT, GRACE, POLL, cgroup_of};
use crate::cri::Spec;
use anyhow::{Result, ensure};

/// The native image and the Wasm image with programs to exec (scripts/vm/test-v2.sh makes them).
pub const BUSYBOX: &str = "localhost/native/busybox:latest";
pub const WASM_EXEC: &str = "localhost/exec/wasm:latest";

pub fn mixed(c: &Checks, ids: &mut Vec<String>) -> Result<()> {
    let pod = c.cri.run_pod("mixed", &c.logs)?;
    ids.push(pod.id.clone());
    let app = c.cri.run(&pod, &Spec::new("app", WASM_EXEC))?;
    ids.push(app.clone());
    let sidecar = Spec::new("sidecar", BUSYBOX).command(&["sleep", "1000"]);
    let sidecar = c.cri.run(&pod, &sidecar)?;
    ids.push(sidecar.clone());
    let pid = c.cri.pid(&sidecar)?;
    let want = c.driver.container_path(&pod.cgroup_parent, &sidecar);
    let got = cgroup_of(pid)?;
    eprintln!("native sidecar {sidecar}: pid {pid} in {got}");
    ensure!(got == want, "the native sidecar is in {got}, not {want}");

    let out = c
        .cri
        .exec_sync_within(&sidecar, &["echo", "from the sidecar"], 120)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.exit_code == 0 && stdout.trim() == "from the sidecar",
        "exec into the sidecar: {} {stdout:?}",
        out.exit_code
    );
    let out = c
        .cri
        .exec_sync_within(&app, &["exit-code.wasm", "3"], 300)?;
    ensure!(
        out.exit_code == 3,
        "exec into the Wasm app: exit code {}",
        out.exit_code
    );

    for id in [&sidecar, &app] {
        c.cri.stop(id, GRACE)?;
        let status = c.cri.wait_exited_polling(id, EXIT, POLL)?;
        ensure!(status.finished_at > 0, "{id} did not stop: {status:?}");
        c.cri.remove(id)?;
    }
    c.cri.remove_pod(&pod)
}
