//! Specs that try to reach outside: a `cgroupsPath` with `..` components, and mount
//! destinations that leave the root filesystem (`..`, a relative path, a symlink in the
//! image). Each must fail with a clear error or stay contained, and write nothing outside.
//! Every host path a naive join would reach is unique to this run (`/tmp/soak-…-<pid>`,
//! `/sys/fs/cgroup/soak-…-<pid>`) and is checked, and removed if it appears.

use super::node::{self, Baseline};
use super::programs::excerpt;
use super::report::Section;
use crate::containerd::{Containerd, RUNTIME, workspace};
use crate::image::Image;
use anyhow::{Context, Result};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

/// `path` with `.` and `..` resolved lexically (as `Path::join` plus a naive clean would).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Runs `ctr run --rm` with `extra` flags; returns (succeeded, stdout, stderr).
fn run(
    c: &Containerd,
    extra: &[&str],
    image: &str,
    id: &str,
    args: &[&str],
) -> Result<(bool, String, String)> {
    let mut argv = vec!["run", "--rm", "--runtime", RUNTIME];
    argv.extend_from_slice(extra);
    argv.extend([image, id]);
    argv.extend_from_slice(args);
    let out = c.ctr(&argv)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Fails for each of `paths` that exists now (and removes it: it is this run's).
fn nothing_outside(s: &mut Section, what: &str, paths: &[PathBuf]) {
    for p in paths {
        if p.symlink_metadata().is_ok() {
            s.fail(format!("{what}: written outside: {} exists", p.display()));
            let owned = p.starts_with("/tmp") || p.parent() == Some(Path::new("/sys/fs/cgroup"));
            if owned && p.to_string_lossy().contains("soak-") {
                let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
            }
        }
    }
}

fn outcome(ok: bool, stdout: &str, stderr: &str) -> String {
    if ok {
        format!("ran: `{}`", excerpt(stdout.trim(), 120))
    } else {
        format!("refused: `{}`", excerpt(stderr, 200).replace('|', "\\|"))
    }
}

pub fn cgroups_path(c: &Containerd, s: &mut Section) -> Result<()> {
    let hello = c.import_example("hello")?;
    let tag = std::process::id();
    let roots: Vec<PathBuf> = ["memory", "pids", "cpu", ""]
        .iter()
        .map(|r| Path::new("/sys/fs/cgroup").join(r))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    let cases = [
        format!("/../../../../../../tmp/soak-cg-abs-{tag}"),
        format!("../../../../../../tmp/soak-cg-rel-{tag}"),
        format!("/soak-inside-{tag}/../../soak-cg-top-{tag}"),
        format!("default/../../../soak-cg-up-{tag}/x"),
    ];
    let top_before = node::cgroup_top();
    let baseline = Baseline::take(c);
    for (k, path) in cases.iter().enumerate() {
        let id = format!("escape-cg-{k}-{tag}");
        let t0 = Instant::now();
        let (ok, stdout, stderr) = run(c, &["--cgroup", path], &hello, &id, &[])?;
        let took = t0.elapsed().as_millis();
        let mut reached: Vec<PathBuf> = roots
            .iter()
            .map(|r| lexical(&r.join(path.trim_start_matches('/'))))
            .collect();
        reached.retain(|p| !roots.iter().any(|r| p.starts_with(r) && p != r));
        reached.sort();
        reached.dedup();
        nothing_outside(s, &format!("cgroupsPath {path}"), &reached);
        if ok && stdout != "Hello from WebAssembly!\n" {
            s.fail(format!("cgroupsPath {path}: ran, but printed {stdout:?}"));
        }
        s.row(
            format!("cgroupsPath `{path}` ({took} ms)"),
            outcome(ok, &stdout, &stderr),
        );
        let ids = [id];
        s.leaks(
            &format!("cgroupsPath {path}"),
            super::pod::settle(|| baseline.leftovers(c, &ids, &ids, &[])),
        );
    }
    let top_after = node::cgroup_top();
    for new in top_after.difference(&top_before) {
        s.fail(format!(
            "new entry at the top of the cgroup file system: {new}"
        ));
        if new.contains(&format!("soak-inside-{tag}")) {
            // An empty cgroup of this run's: remove it.
            let _ = std::fs::remove_dir(new);
        }
    }
    Ok(())
}

pub fn mount_destinations(c: &Containerd, s: &mut Section) -> Result<()> {
    let tag = std::process::id();
    let reader_wasm = workspace().join("target/guests/wasm32-wasip1/release/file-reader.wasm");
    let reader = std::fs::read(&reader_wasm)
        .with_context(|| format!("read {} (run examples/build.sh)", reader_wasm.display()))?;
    let up = "../".repeat(12);
    let image = Image::new("localhost/soak/escape-links:latest")
        .file("/file-reader.wasm", reader)
        .symlink("/rel-link", &format!("{up}tmp/soak-mnt-link-{tag}"))
        .symlink("/abs-link", &format!("/tmp/soak-mnt-abslink-{tag}"))
        .entrypoint(&["/file-reader.wasm"]);
    let tar = c.dir.path().join("escape-links.tar");
    image.write(&tar)?;
    c.import(&tar)?;
    let volume = tempfile::tempdir()?;
    std::fs::write(volume.path().join("msg.txt"), "soak volume\n")?;
    let src = volume.path().display().to_string();
    // (destination, where a contained mount shows in the guest, host paths it must not touch)
    let cases = [
        (
            format!("{up}tmp/soak-mnt-rel-{tag}"),
            String::new(),
            vec![format!("/tmp/soak-mnt-rel-{tag}")],
        ),
        (
            format!("/{up}tmp/soak-mnt-abs-{tag}"),
            format!("/tmp/soak-mnt-abs-{tag}"),
            vec![format!("/tmp/soak-mnt-abs-{tag}")],
        ),
        (
            "/rel-link/vol".to_string(),
            format!("/tmp/soak-mnt-link-{tag}/vol"),
            vec![format!("/tmp/soak-mnt-link-{tag}")],
        ),
        (
            "/abs-link/vol".to_string(),
            format!("/tmp/soak-mnt-abslink-{tag}/vol"),
            vec![format!("/tmp/soak-mnt-abslink-{tag}")],
        ),
    ];
    let baseline = Baseline::take(c);
    for (k, (dst, inside, host)) in cases.iter().enumerate() {
        let id = format!("escape-mnt-{k}-{tag}");
        let mount = format!("type=bind,src={src},dst={dst},options=rbind:ro");
        let read = format!("{inside}/msg.txt");
        let args: Vec<&str> = if inside.is_empty() {
            vec![]
        } else {
            vec!["/file-reader.wasm", &read]
        };
        let t0 = Instant::now();
        let (ok, stdout, stderr) = run(c, &["--mount", &mount], &image.name, &id, &args)?;
        let took = t0.elapsed().as_millis();
        let host: Vec<PathBuf> = host.iter().map(PathBuf::from).collect();
        nothing_outside(s, &format!("mount at {dst}"), &host);
        let contained = ok && stdout == format!("{read}: soak volume\n");
        if ok && !contained {
            s.fail(format!("mount at {dst}: ran, but printed {stdout:?}"));
        }
        if !ok && !stderr.contains("mount") && !stderr.contains("destination") {
            s.fail(format!(
                "mount at {dst}: the error does not name the mount: {stderr}"
            ));
        }
        let how = if contained {
            format!("contained (the guest reads it at {inside}); ")
        } else {
            String::new()
        };
        s.row(
            format!("mount destination `{dst}` ({took} ms)"),
            format!("{how}{}", outcome(ok, &stdout, &stderr)),
        );
        let ids = [id];
        s.leaks(
            &format!("mount at {dst}"),
            super::pod::settle(|| baseline.leftovers(c, &ids, &ids, &[])),
        );
    }
    if std::fs::read_dir(volume.path())?.count() != 1 {
        s.fail("the read-only volume's contents changed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolves_dot_dot_as_a_naive_join_would() {
        let cases = [
            ("/sys/fs/cgroup/memory/../../../../tmp/x", "/tmp/x"),
            ("/sys/fs/cgroup/memory/a/../../b", "/sys/fs/cgroup/b"),
            ("/sys/fs/cgroup/memory/./a", "/sys/fs/cgroup/memory/a"),
            ("/../../x", "/x"),
        ];
        for (path, expected) in cases {
            assert_eq!(lexical(Path::new(path)), Path::new(expected), "{path}");
        }
    }
}
