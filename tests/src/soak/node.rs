//! What a node holds that a container can leave behind, read from the kernel and the file
//! system: processes, mounts, cgroups, network namespaces, a shim's open files, and files in
//! containerd's state directory and the compile cache.

use crate::containerd::{Containerd, processes_with_arg};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Whether `pid` is alive (a zombie is not: this machine's pid 1 does not reap).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Live processes by parent pid.
fn children_by_parent() -> BTreeMap<i32, Vec<i32>> {
    let mut map: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:\t"))
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(parent) = parent
            && alive(pid)
        {
            map.entry(parent).or_default().push(pid);
        }
    }
    map
}

/// The live descendants of `roots` (not the roots themselves).
pub fn descendants(roots: &[i32]) -> BTreeSet<i32> {
    let map = children_by_parent();
    let mut found = BTreeSet::new();
    let mut todo: Vec<i32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        for child in map.get(&pid).into_iter().flatten() {
            if found.insert(*child) {
                todo.push(*child);
            }
        }
    }
    found
}

/// The shims of `c` and all their live descendants (zygotes, guests, pause processes).
pub fn tree(c: &Containerd) -> BTreeSet<i32> {
    let shims = c.shim_pids();
    let mut all = descendants(&shims);
    all.extend(shims.into_iter().filter(|p| alive(*p)));
    all
}

/// Live guest and zygote processes anywhere on the node (orphans too) started for one of
/// `ids` (`--wasmtime-guest <id>`, `--wasmtime-zygote <id>`).
pub fn guests_of(ids: &[String]) -> Vec<(i32, String)> {
    processes_with_arg("--wasmtime-")
        .into_iter()
        .filter(|(pid, args)| {
            alive(*pid)
                && args
                    .iter()
                    .any(|a| a == "--wasmtime-guest" || a == "--wasmtime-zygote")
                && args.iter().any(|a| ids.contains(a))
        })
        .map(|(pid, args)| (pid, args.join(" ")))
        .collect()
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What each open file of `pid` is, with inode numbers left out (`pipe:`, `socket:`,
/// `anon_inode:[pidfd]`, a path), sorted: two snapshots compare as multisets.
pub fn fds(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| {
            let t = t.to_string_lossy().into_owned();
            match t.split_once(":[") {
                Some((kind, _)) if kind == "pipe" || kind == "socket" || kind == "net" => {
                    format!("{kind}:")
                }
                _ => t,
            }
        })
        .collect();
    out.sort();
    out
}

/// `after` against `before` as multisets: `+x` opened since, `-x` closed since.
pub fn fd_diff(before: &[String], after: &[String]) -> Vec<String> {
    let count = |v: &[String]| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for x in v {
            *m.entry(x.clone()).or_default() += 1;
        }
        m
    };
    let (b, a) = (count(before), count(after));
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let mut diff = Vec::new();
    for k in keys {
        let n = a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0);
        if n != 0 {
            diff.push(format!("{n:+} {k}"));
        }
    }
    diff
}

/// The network namespace of `pid` (`net:[inode]`).
pub fn netns(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// What still holds network namespace `ns`: processes in it, and nsfs bind mounts of it
/// (`/run/netns/cni-…`).
pub fn netns_holders(ns: &str) -> Vec<String> {
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if alive(pid) && netns(pid).as_deref() == Some(ns) {
            holders.push(format!("process {pid}"));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(3) == Some(&ns) {
            holders.push(format!("mount {}", fields.get(4).unwrap_or(&"?")));
        }
    }
    holders
}

/// The roots of the cgroup hierarchies: each v1 controller's, or the unified one.
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: BTreeSet<PathBuf> = BTreeSet::new();
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if unified {
        roots.insert(PathBuf::from("/sys/fs/cgroup"));
    }
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.join("cgroup.procs").exists()
            && let Ok(real) = path.canonicalize()
        {
            roots.insert(real);
        }
    }
    roots.into_iter().collect()
}

/// The directories of cgroup `path` (`/a/b`) that exist, in any hierarchy.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    cgroup_roots()
        .into_iter()
        .map(|root| root.join(relative))
        .filter(|d| d.is_dir())
        .collect()
}

/// Names of the child cgroups of `path`, over all hierarchies.
pub fn cgroup_children(path: &str) -> BTreeSet<String> {
    cgroup_dirs(path)
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Names directly under the cgroup roots (`/sys/fs/cgroup/*`, `/sys/fs/cgroup/<ctrl>/*`).
pub fn cgroup_top() -> BTreeSet<String> {
    let mut top: BTreeSet<String> = BTreeSet::new();
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup")];
    dirs.extend(cgroup_roots());
    for dir in dirs {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            top.insert(e.path().to_string_lossy().into_owned());
        }
    }
    top
}

/// The node's compile cache of `c`.
pub fn cache_dir(c: &Containerd) -> PathBuf {
    c.dir.path().join("state/io.containerd.wasmtime.v1/cache")
}

/// Compile-cache entries (`*.cwasm`) of `c`.
pub fn cache_entries(c: &Containerd) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(cache_dir(c))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    entries.sort();
    entries
}

/// Anything in the compile cache that is not an entry (a temporary, a directory).
pub fn cache_strays(c: &Containerd) -> Vec<String> {
    std::fs::read_dir(cache_dir(c))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !(p.is_file() && p.extension().is_some_and(|x| x == "cwasm")))
        .map(|p| p.display().to_string())
        .collect()
}

/// Paths under containerd's state directory (relative), without the compile cache's entries,
/// without the directories of the first two levels (each plugin's, each namespace's: made once
/// and kept) and without looking into mounted root filesystems.
pub fn state_files(c: &Containerd) -> BTreeSet<String> {
    let root = c.dir.path().join("state");
    let mounts: BTreeSet<String> = c.mounts().into_iter().collect();
    let mut found = BTreeSet::new();
    let mut todo = vec![root.clone()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if path.parent() == Some(cache_dir(c).as_path())
                && path.extension().is_some_and(|x| x == "cwasm")
            {
                continue;
            }
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !(is_dir && name.matches('/').count() < 2) {
                found.insert(name);
            }
            if is_dir && !mounts.contains(&path.to_string_lossy().into_owned()) {
                todo.push(path);
            }
        }
    }
    found
}

/// What a containerd had at the start of a step (mounts, state files, shims and their
/// descendants), to find what the step left behind.
pub struct Baseline {
    pub mounts: BTreeSet<String>,
    pub state: BTreeSet<String>,
    /// The shims of this containerd and their descendants (a pod that stays).
    pub processes: BTreeSet<i32>,
}

impl Baseline {
    pub fn take(c: &Containerd) -> Baseline {
        Baseline {
            mounts: c.mounts().into_iter().collect(),
            state: state_files(c),
            processes: tree(c),
        }
    }

    /// Mounts and state files that were not there at the baseline, and cache strays.
    pub fn new_things(&self, c: &Containerd) -> Vec<String> {
        let mut left = Vec::new();
        for m in c.mounts() {
            if !self.mounts.contains(&m) {
                left.push(format!("mount {m}"));
            }
        }
        for f in state_files(c) {
            if !self.state.contains(&f) {
                left.push(format!("state file {f}"));
            }
        }
        left.extend(
            cache_strays(c)
                .into_iter()
                .map(|p| format!("cache stray {p}")),
        );
        left
    }

    /// After containers `ids` of namespace `default` were deleted (by `ctr`): no guest or
    /// zygote of them, no shim of this containerd but the baseline's, no cgroup `/default/<id>`, no holder of
    /// their network namespaces, no shim socket of `groups`, nothing new (see `new_things`).
    pub fn leftovers(
        &self,
        c: &Containerd,
        ids: &[String],
        groups: &[String],
        netns: &[String],
    ) -> Vec<String> {
        let mut left: Vec<String> = guests_of(ids)
            .into_iter()
            .map(|(pid, args)| format!("process {pid}: {args}"))
            .collect();
        left.extend(
            tree(c)
                .difference(&self.processes)
                .map(|p| format!("shim process {p}")),
        );
        for id in ids {
            for d in cgroup_dirs(&format!("/default/{id}")) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        for ns in netns {
            left.extend(netns_holders(ns).into_iter().map(|h| format!("{ns}: {h}")));
        }
        for g in groups {
            let socket = c.shim_socket("default", g);
            if socket.exists() {
                left.push(format!("shim socket {}", socket.display()));
            }
        }
        left.extend(self.new_things(c));
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_diff_compares_multisets() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let before = v(&["pipe:", "pipe:", "socket:", "/dev/null"]);
        assert!(fd_diff(&before, &before).is_empty());
        let after = v(&[
            "pipe:",
            "socket:",
            "socket:",
            "/dev/null",
            "anon_inode:[pidfd]",
        ]);
        assert_eq!(
            fd_diff(&before, &after),
            ["+1 anon_inode:[pidfd]", "-1 pipe:", "+1 socket:"]
        );
    }

    #[test]
    fn our_own_process_is_alive_and_has_open_files() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(!fds(me).is_empty());
        assert!(rss_kib(me).is_some_and(|k| k > 0));
    }
}
