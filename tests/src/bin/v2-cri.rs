//! v2-cri: the CRI checks of the cgroup v2 + systemd test VM (issue 17), run inside it by
//! `scripts/vm/shim-v2/run.sh` against the node's containerd, as kubelet would drive it.
//!
//! ```text
//! v2-cri pause-image OUT.tar          the sandbox image the VM's CRI configuration pins
//! v2-cri handlers [--socket PATH]     CRI's runtime handlers: `<name> <type> SystemdCgroup=<b>`
//! v2-cri pods systemd|cgroupfs [--socket PATH]
//! ```
//! `pods` runs the pod checks with kubelet's pod cgroups for that cgroup driver and prints one
//! `PASS <driver>: …` or `FAIL <driver>: …: <why>` line per check (details on stderr); exits 1
//! if one failed. The socket defaults to `/run/containerd/containerd.sock`. As root.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use wasmtime_shim_tests::cri::PodCgroups;
use wasmtime_shim_tests::v2cri;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = PathBuf::from("/run/containerd/containerd.sock");
    if let Some(i) = args.iter().position(|a| a == "--socket") {
        socket = args.get(i + 1).context("--socket needs a path")?.into();
        args.drain(i..i + 2);
    }
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["pause-image", out] => v2cri::write_pause_image(out.as_ref()),
        ["handlers"] => {
            for line in v2cri::handlers(&socket)? {
                println!("{line}");
            }
            Ok(())
        }
        ["pods", driver] => {
            let driver = match driver {
                "systemd" => PodCgroups::Systemd,
                "cgroupfs" => PodCgroups::Cgroupfs,
                other => bail!("unknown cgroup driver {other:?} (systemd or cgroupfs)"),
            };
            if !v2cri::run(&socket, driver)? {
                std::process::exit(1);
            }
            Ok(())
        }
        _ => bail!(
            "usage: v2-cri pause-image OUT | handlers | pods systemd|cgroupfs [--socket PATH]"
        ),
    }
}
