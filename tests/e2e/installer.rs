//! The node installer, run as an operator runs it, against real containerd configuration files
//! (each version's `config default` and node-style files, with and without other runtimes and
//! imports) and the real containerd 1.6 and 2.1 binaries: install, install again, dry-run,
//! uninstall back to the same bytes; refusals that change nothing; and a CRI node whose
//! containerd is restarted by the installer and then runs a Wasm pod.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, Containerd, Version, workspace};
use wasmtime_shim_tests::cri::{Cri, Spec, log_lines};

fn built(name: &str) -> PathBuf {
    workspace().join("target/release").join(name)
}

/// A node's files in a temp dir: `config.toml` from a fixture (`@DIR@` replaced by the dir),
/// `bin/` for the shim, `state/` for the installer, `conf.d/` for the drop-in.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(fixture: Option<&str>) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("wasmtime-shim-node.")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        if let Some(f) = fixture {
            let text = std::fs::read_to_string(workspace().join("tests/installer-configs").join(f))
                .unwrap();
            let text = text.replace("@DIR@", &dir.path().display().to_string());
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
        }
        Node { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn read(&self, p: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(p)).ok()
    }

    /// Runs the installer on this node with `version`'s containerd binary; `--restart never`
    /// unless `args` says otherwise.
    fn run(&self, version: Version, args: &[&str]) -> Output {
        self.run_with(&version.binary(), args)
    }

    fn run_with(&self, containerd: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(built("wasmtime-shim-installer"));
        cmd.args(&args[..1])
            .arg("--config")
            .arg(self.path("config.toml"))
            .arg("--bin-dir")
            .arg(self.path("bin"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--dropin")
            .arg(self.path("conf.d/wasmtime-shim.toml"))
            .arg("--containerd-bin")
            .arg(containerd)
            .args(&args[1..]);
        if args[0] == "install" && !args.contains(&"--shim") {
            cmd.arg("--shim").arg(built("containerd-shim-wasmtime-v1"));
        }
        if !args.iter().any(|a| a.starts_with("--restart")) {
            cmd.arg("--restart=never");
        }
        cmd.env_remove("KUBERNETES_SERVICE_HOST").output().unwrap()
    }

    /// Asserts the node holds nothing of the installer: `config` as given, no shim, drop-in,
    /// drop-in dir or state.
    fn assert_untouched(&self, config: Option<&[u8]>, what: &str) {
        assert_eq!(
            self.read("config.toml").as_deref(),
            config,
            "{what}: config changed"
        );
        assert_eq!(
            std::fs::read_dir(self.path("bin")).unwrap().count(),
            0,
            "{what}: bin/ not empty"
        );
        assert!(!self.path("state").exists(), "{what}: state left");
        assert!(!self.path("conf.d").exists(), "{what}: conf.d left");
    }
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `containerd config dump`: the configuration containerd itself reads from the files.
fn dump(version: Version, config: &Path) -> String {
    let out = Command::new(version.binary())
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_config_format_installs_once_and_uninstalls_to_the_same_bytes() {
    // (fixture, containerd versions, SystemdCgroup expected, text containerd must still see)
    let cases: [(Option<&str>, &[Version], bool, &str); 8] = [
        (
            Some("v2-default.toml"),
            &ALL,
            false,
            "registry.k8s.io/pause:3.6",
        ),
        (Some("v2-node.toml"), &ALL, true, "io.containerd.kata.v2"),
        (
            Some("v2-minimal.toml"),
            &ALL,
            false,
            "containerd.runtimes.runc]",
        ),
        (
            Some("v3-default.toml"),
            &[Version::V2_1],
            false,
            "registry.k8s.io/pause:3.10",
        ),
        (
            Some("v3-node.toml"),
            &[Version::V2_1],
            true,
            "io.containerd.kata.v2",
        ),
        (
            Some("v3-other-imports.toml"),
            &[Version::V2_1],
            false,
            "containerd.runtimes.runc]",
        ),
        (
            Some("v3-minimal.toml"),
            &[Version::V2_1],
            false,
            "containerd.runtimes.runc]",
        ),
        // No configuration file: containerd's defaults are written, and removed by uninstall.
        (None, &ALL, false, "containerd.runtimes.runc]"),
    ];
    for (fixture, versions, systemd, kept) in cases {
        for &version in versions {
            let what = format!("{fixture:?} on {version:?}");
            let node = Node::new(fixture);
            let original = node.read("config.toml");

            let out = ok(&node.run(version, &["install", "--dry-run"]), &what);
            assert!(
                out.contains("+++ b") && out.contains("would create"),
                "{what}: {out}"
            );
            node.assert_untouched(original.as_deref(), &format!("{what} dry-run"));

            let out = ok(&node.run(version, &["install"]), &what);
            assert!(out.contains("restart containerd to apply"), "{what}: {out}");
            let shim = node.path("bin/containerd-shim-wasmtime-v1");
            assert_eq!(
                std::fs::read(&shim).unwrap(),
                std::fs::read(built("containerd-shim-wasmtime-v1")).unwrap()
            );
            assert_eq!(
                std::fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
                0o755
            );
            let patched = node.read("config.toml").unwrap();
            let registered = String::from_utf8(
                node.read("conf.d/wasmtime-shim.toml")
                    .unwrap_or(patched.clone()),
            )
            .unwrap();
            assert!(
                registered.contains("io.containerd.wasmtime.v1"),
                "{what}: {registered}"
            );
            assert!(
                registered.contains(&format!("SystemdCgroup = {systemd}")),
                "{what}: {registered}"
            );
            assert!(
                registered.contains("pod_annotations = [\"wasmtime.containerd.io/*\"]"),
                "{what}: {registered}"
            );
            // What containerd reads: the handler, and everything that was there before.
            let d = dump(version, &node.path("config.toml"));
            assert!(
                d.contains("containerd.runtimes.wasmtime]") && d.contains(kept),
                "{what}: {d}"
            );

            let out = ok(&node.run(version, &["install"]), &what);
            assert!(
                out.contains("nothing to change"),
                "{what}: second install: {out}"
            );
            assert_eq!(
                node.read("config.toml").unwrap(),
                patched,
                "{what}: second install"
            );

            let out = ok(&node.run(version, &["uninstall", "--dry-run"]), &what);
            assert!(
                out.contains("--- a") && out.contains("would remove"),
                "{what}: {out}"
            );
            assert_eq!(
                node.read("config.toml").unwrap(),
                patched,
                "{what}: uninstall dry-run"
            );

            ok(&node.run(version, &["uninstall"]), &what);
            node.assert_untouched(original.as_deref(), &format!("{what} uninstall"));
            let out = ok(&node.run(version, &["uninstall"]), &what);
            assert!(out.contains("nothing to uninstall"), "{what}: {out}");
        }
    }
}

#[test]
fn bad_configs_unknown_versions_and_no_restart_method_are_refused_changing_nothing() {
    let fake = tempfile::tempdir().unwrap();
    // containerd 1.5 is not installed here; a script answers `--version` as it does.
    let old = fake.path().join("containerd");
    std::fs::write(
        &old,
        "#!/bin/sh\necho 'containerd github.com/containerd/containerd v1.5.18 abc'\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A shim built against libraries the host lacks fails as the loader makes it fail.
    let broken = fake.path().join("shim");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'error while loading shared libraries: libseccomp.so.2' >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broken = broken.display().to_string();
    let v16 = Version::V1_6.binary();
    let cases: [(&str, &Path, &[&str], &str); 7] = [
        ("refuse-invalid.toml", &v16, &[], "not valid TOML"),
        ("refuse-v1.toml", &v16, &[], "version 1"),
        ("refuse-taken.toml", &v16, &[], "io.containerd.spin.v2"),
        ("v3-minimal.toml", &v16, &[], "cannot read a version 3"),
        ("v2-default.toml", &old, &[], "unknown containerd"),
        (
            "v2-default.toml",
            &v16,
            &["--restart=auto"],
            "does not run systemd",
        ),
        (
            "v2-default.toml",
            &v16,
            &["--shim", &broken],
            "libseccomp.so.2",
        ),
    ];
    for (fixture, containerd, extra, message) in cases {
        let node = Node::new(Some(fixture));
        let original = node.read("config.toml");
        let mut args = vec!["install"];
        args.extend_from_slice(extra);
        let out = node.run_with(containerd, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{fixture}: accepted");
        assert!(
            stderr.contains(message) && stderr.contains("nothing changed"),
            "{fixture}: {stderr}"
        );
        node.assert_untouched(original.as_deref(), fixture);
    }
}

#[test]
fn containerd_is_restarted_only_when_its_configuration_changed() {
    // A running containerd for the installer to wait on; the restart command counts calls.
    let c = Containerd::start(Version::V2_1).unwrap();
    let node = Node::new(Some("v3-minimal.toml"));
    let count = node.path("restarts");
    let restart = format!("--restart-command=echo >> {}", count.display());
    let address = format!("--address={}", c.socket().display());
    let restarts = || std::fs::read_to_string(&count).map_or(0, |s| s.lines().count());

    let out = ok(
        &node.run(Version::V2_1, &["install", &restart, &address]),
        "install",
    );
    assert_eq!(restarts(), 1, "{out}");
    assert!(
        out.contains("containerd 2.1") && out.contains("is ready"),
        "{out}"
    );
    ok(
        &node.run(Version::V2_1, &["install", &restart, &address]),
        "again",
    );
    assert_eq!(restarts(), 1, "a second install restarted containerd");
    // A new shim binary alone needs no restart: containerd starts shims per pod.
    std::fs::write(node.path("bin/containerd-shim-wasmtime-v1"), b"older").unwrap();
    let out = ok(
        &node.run(Version::V2_1, &["install", &restart, &address]),
        "upgrade",
    );
    assert!(
        out.contains("update") && !out.contains("restarted"),
        "{out}"
    );
    assert_eq!(restarts(), 1);
    ok(
        &node.run(Version::V2_1, &["uninstall", &restart, &address]),
        "uninstall",
    );
    assert_eq!(restarts(), 2);
}

/// Runs the installer while this thread plays the service manager: the restart command
/// touches a marker and waits; the marker makes the harness restart containerd.
fn run_restarting(node: &Path, c: &mut Containerd, args: &[&str]) -> Output {
    let marker = node.join("restart-requested");
    let mut cmd = Command::new(built("wasmtime-shim-installer"));
    cmd.args(args)
        .arg("--config")
        .arg(c.config_path())
        .arg("--bin-dir")
        .arg(c.bin_dir())
        .arg("--state-dir")
        .arg(node.join("state"))
        .arg("--containerd-bin")
        .arg(c.version.binary())
        .arg(format!(
            "--restart-command=touch {m}; while [ -e {m} ]; do sleep 0.05; done",
            m = marker.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("KUBERNETES_SERVICE_HOST");
    if args[0] == "install" {
        cmd.arg("--shim").arg(built("containerd-shim-wasmtime-v1"));
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        if marker.exists() {
            c.restart().unwrap();
            std::fs::remove_file(&marker).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_installed_node_runs_a_wasm_pod_and_uninstall_takes_it_back() {
    for version in ALL {
        let mut c = Containerd::cri_node(version).unwrap();
        let original = std::fs::read(c.config_path()).unwrap();
        c.boot_cri().unwrap();
        let node = tempfile::tempdir().unwrap();

        let out = run_restarting(node.path(), &mut c, &["install"]);
        let stdout = ok(&out, &format!("{version:?} install"));
        assert!(
            stdout.contains("restarted containerd") && stdout.contains("is ready"),
            "{version:?}: {stdout}"
        );

        let cri = Cri::connect(&c).unwrap();
        let image = c.import_example_in("k8s.io", "hello").unwrap();
        cri.wait_image(&image).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let pod = cri.run_pod("installed", logs.path()).unwrap();
        let id = cri.run(&pod, &Spec::new("hello", &image)).unwrap();
        let status = cri.wait_exited(&id, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (0, "Completed"),
            "{version:?}"
        );
        let lines = log_lines(&pod.log_dir.join("hello.log")).unwrap();
        assert_eq!(
            lines.last().map(|l| l.2.as_str()),
            Some("Hello from WebAssembly!"),
            "{version:?}"
        );
        cri.remove_pod(&pod).unwrap();
        drop(cri);

        let stdout = ok(
            &run_restarting(node.path(), &mut c, &["uninstall"]),
            &format!("{version:?} uninstall"),
        );
        assert!(
            stdout.contains("restarted containerd"),
            "{version:?}: {stdout}"
        );
        assert_eq!(
            std::fs::read(c.config_path()).unwrap(),
            original,
            "{version:?}: config not restored"
        );
        assert!(
            !c.bin_dir().join("containerd-shim-wasmtime-v1").exists(),
            "{version:?}"
        );
        // The handler is gone from the restarted containerd: kubelet's pod is refused.
        let cri = Cri::connect(&c).unwrap();
        match cri.run_pod("uninstalled", logs.path()) {
            Ok(_) => panic!("{version:?}: a wasmtime pod started after uninstall"),
            Err(err) => assert!(
                format!("{err:#}").contains("wasmtime"),
                "{version:?}: {err:#}"
            ),
        }
    }
}

/// The host's root bind-mounted into a temp dir, as the DaemonSet mounts it at `/host`;
/// unmounted on drop.
struct HostRoot(tempfile::TempDir);

impl HostRoot {
    fn mount() -> HostRoot {
        let dir = tempfile::Builder::new()
            .prefix("wasmtime-shim-hostroot.")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["--bind", "/"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bind /: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        HostRoot(dir)
    }
}

impl Drop for HostRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn the_installer_works_through_a_mounted_host_root() {
    let host = HostRoot::mount();
    let root = format!("--root={}", host.0.path().display());
    for version in ALL {
        let node = Node::new(Some("v2-node.toml"));
        let original = node.read("config.toml");
        // Paths are the host's; the installer reaches them under --root and runs the host's
        // containerd binary there.
        ok(&node.run(version, &["install", &root]), "install");
        let d = dump(version, &node.path("config.toml"));
        assert!(
            d.contains("containerd.runtimes.wasmtime]"),
            "{version:?}: {d}"
        );
        assert!(node.path("bin/containerd-shim-wasmtime-v1").exists());
        ok(&node.run(version, &["uninstall", &root]), "uninstall");
        node.assert_untouched(original.as_deref(), "uninstall through the host root");
    }
}

#[test]
fn the_installer_image_installs_from_a_privileged_container_as_the_daemonset_runs_it() {
    // deploy/build-image.sh (run by scripts/test.sh) built it.
    let tar = workspace().join("target/images/installer.tar");
    let c = Containerd::start(Version::V1_6).unwrap();
    c.import(&tar).unwrap();
    let image = "localhost:5000/wasmtime-shim/installer:0.1.0";
    for version in ALL {
        let node = Node::new(Some("v2-default.toml"));
        let original = node.read("config.toml");
        let run = |verb: &str, extra: &[&str]| {
            let id = crate::unique("installer");
            let (config, bin, state) = (
                node.path("config.toml"),
                node.path("bin"),
                node.path("state"),
            );
            let mut args = vec![
                "run".to_string(),
                "--rm".into(),
                "--privileged".into(),
                "--mount".into(),
                "type=bind,src=/,dst=/host,options=rbind:rw".into(),
                image.into(),
                id,
                "/usr/local/bin/wasmtime-shim-installer".into(),
                verb.into(),
                "--root=/host".into(),
                format!("--config={}", config.display()),
                format!("--bin-dir={}", bin.display()),
                format!("--state-dir={}", state.display()),
                format!("--containerd-bin={}", version.binary().display()),
                "--restart=never".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = c.ctr(&args).unwrap();
            ok(&out, &format!("{version:?} {verb} in a container"))
        };
        let out = run(
            "install",
            &["--shim=/opt/wasmtime-shim/containerd-shim-wasmtime-v1"],
        );
        assert!(out.contains("update"), "{out}");
        // The shim from the image runs on this host (the installer checked) and is the build's.
        assert_eq!(
            std::fs::read(node.path("bin/containerd-shim-wasmtime-v1")).unwrap(),
            std::fs::read(built("containerd-shim-wasmtime-v1")).unwrap()
        );
        let d = dump(version, &node.path("config.toml"));
        assert!(d.contains("containerd.runtimes.wasmtime]"), "{version:?}");
        run("uninstall", &[]);
        node.assert_untouched(original.as_deref(), "uninstall from a container");
    }
}
