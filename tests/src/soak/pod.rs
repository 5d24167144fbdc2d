//! A long-lived Wasm pod on a CRI node, and what must stay constant in it while containers
//! come and go: the one shim's open files, its children (zygote and pause), the pod's child
//! cgroups, mounts and containerd's state files.

use super::node::{self, Baseline};
use crate::containerd::{Containerd, Version, wait_for};
use crate::cri::{Cri, Pod, Spec};
use crate::image::Image;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::time::Duration;

/// A CRI containerd with one Wasm pod running.
pub struct PodNode {
    // Field order is drop order: the CRI client removes its pods before containerd stops.
    pub cri: Cri,
    pub pod: Pod,
    pub watch: Watch,
    /// Before RunPodSandbox: what the node must be back to after RemovePodSandbox.
    pub before_pod: Baseline,
    pub c: Containerd,
}

impl PodNode {
    /// Starts a CRI containerd, imports `examples` (from target/images) and runs pod `name`.
    pub fn start(version: Version, name: &str, examples: &[&str]) -> Result<PodNode> {
        let c = Containerd::start_cri(version)?;
        let cri = Cri::connect(&c)?;
        for example in examples {
            let image = c.import_example_in("k8s.io", example)?;
            cri.wait_image(&image)?;
        }
        let before_pod = Baseline::take(&c);
        let logs = c.dir.path().join("logs");
        let pod = cri.run_pod(name, &logs)?;
        // One container first, so that what the shim sets up once (on its first container)
        // is in the baseline.
        if let Some(example) = examples.first() {
            let image = format!("localhost/wasmtime-shim/{example}:latest");
            let id = cri.create(&pod, &Spec::new("warm-up", &image).args(&["0"]))?;
            cri.start(&id)?;
            cri.wait_exited(&id, Duration::from_secs(30))?;
            cri.remove(&id)?;
            // Its guest is reaped a moment after CRI reports the exit.
            std::thread::sleep(Duration::from_millis(500));
        }
        let watch = Watch::take(&c, &pod)?;
        Ok(PodNode {
            cri,
            pod,
            watch,
            before_pod,
            c,
        })
    }

    /// Imports `image` into CRI's namespace; returns its name.
    pub fn import(&self, image: &Image) -> Result<String> {
        let tar = self.c.dir.path().join("image.tar");
        image.write(&tar)?;
        self.c
            .ctr_ok(&["-n", "k8s.io", "images", "import", &tar.to_string_lossy()])?;
        self.cri.wait_image(&image.name)?;
        Ok(image.name.clone())
    }

    /// What is left of container `id` (removed): its guest process, its cgroup.
    pub fn container_left(&self, id: &str) -> Vec<String> {
        let cgroup = format!("{}/{id}", self.pod.cgroup_parent);
        let check = || {
            let mut left: Vec<String> = node::guests_of(&[id.to_string()])
                .into_iter()
                .map(|(pid, args)| format!("process {pid}: {args}"))
                .collect();
            left.extend(
                node::cgroup_dirs(&cgroup)
                    .into_iter()
                    .map(|d| format!("cgroup {}", d.display())),
            );
            left
        };
        settle(check)
    }

    /// Differences from the pod's baseline (see [`Watch`]), after up to 5 s to settle.
    pub fn pod_left(&self) -> Vec<String> {
        settle(|| self.watch.differences(&self.c, &self.pod))
    }

    /// RemovePodSandbox (and the pod cgroup), then: none of the pod's processes, its network
    /// namespace held by nothing, and mounts and state files as before the pod.
    pub fn remove_pod(&self) -> Result<Vec<String>> {
        let processes = node::tree(&self.c);
        self.cri.remove_pod(&self.pod)?;
        Ok(settle(|| {
            let mut left: Vec<String> = processes
                .iter()
                .filter(|p| node::alive(**p))
                .map(|p| format!("process {p} of the pod"))
                .collect();
            left.extend(
                node::netns_holders(&self.watch.netns)
                    .into_iter()
                    .map(|h| format!("pod netns {}: {h}", self.watch.netns)),
            );
            left.extend(
                node::cgroup_dirs(&self.pod.cgroup_parent)
                    .into_iter()
                    .map(|d| format!("cgroup {}", d.display())),
            );
            left.extend(self.before_pod.new_things(&self.c));
            left
        }))
    }
}

/// `check` until it finds nothing, for up to 5 s; what it found last.
pub fn settle(mut check: impl FnMut() -> Vec<String>) -> Vec<String> {
    let mut last = Vec::new();
    let clean = wait_for(Duration::from_secs(5), || {
        last = check();
        last.is_empty().then_some(())
    });
    if clean.is_some() { Vec::new() } else { last }
}

/// A pod's state with no container of its own running.
pub struct Watch {
    /// The pod's one shim.
    pub shim: i32,
    pub fds: Vec<String>,
    /// The shim's descendants: the zygote and the pause process.
    pub children: BTreeSet<i32>,
    /// Child cgroups of the pod's cgroup (the sandbox's).
    pub cgroups: BTreeSet<String>,
    pub baseline: Baseline,
    /// The pod's network namespace (of its pause process).
    pub netns: String,
}

impl Watch {
    pub fn take(c: &Containerd, pod: &Pod) -> Result<Watch> {
        let shims = c.shim_pids();
        let [shim] = shims[..] else {
            bail!("expected one shim for the pod, found {shims:?}");
        };
        let host = node::netns(std::process::id() as i32);
        let children = node::descendants(&[shim]);
        let netns = children
            .iter()
            .filter_map(|p| node::netns(*p))
            .find(|ns| Some(ns) != host.as_ref())
            .context("no process of the pod in its own network namespace")?;
        Ok(Watch {
            shim,
            fds: node::fds(shim),
            children,
            cgroups: node::cgroup_children(&pod.cgroup_parent),
            baseline: Baseline::take(c),
            netns,
        })
    }

    pub fn differences(&self, c: &Containerd, pod: &Pod) -> Vec<String> {
        let mut diff = Vec::new();
        if !node::alive(self.shim) {
            diff.push(format!("the pod's shim {} died", self.shim));
            return diff;
        }
        let fds = node::fd_diff(&self.fds, &node::fds(self.shim));
        if !fds.is_empty() {
            diff.push(format!(
                "shim {} open files changed: {}",
                self.shim,
                fds.join(", ")
            ));
        }
        let children = node::descendants(&[self.shim]);
        for p in children.difference(&self.children) {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            diff.push(format!("process {p}: {}", cmdline.trim()));
        }
        for p in self.children.difference(&children) {
            diff.push(format!("process {p} of the pod (zygote or pause) is gone"));
        }
        for g in node::cgroup_children(&pod.cgroup_parent).difference(&self.cgroups) {
            diff.push(format!("cgroup {}/{g}", pod.cgroup_parent));
        }
        diff.extend(self.baseline.new_things(c));
        diff
    }
}
