use super::*;

fn spec(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

/// The shape of `ctr run`'s default spec, trimmed.
const CTR_LIKE: &str = r#"{
  "ociVersion": "1.0.2",
  "process": {
    "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
    "args": ["/hello.wasm"], "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"],
      "effective": ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_NET_BIND_SERVICE","CAP_KILL"],
      "permitted": ["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW","CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE","CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs"},
  "hostname": "wasm",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid","strictatime","mode=755","size=65536k"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid","noexec","nodev","mode=1777","size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid","noexec","nodev","ro"]},
    {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid","nodev","mode=755","size=1m"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/hosts", "options": ["rbind","ro"]},
    {"destination": "/data", "source": "/srv/data", "options": ["bind","rw"]}
  ],
  "linux": {
    "cgroupsPath": "/default/c1",
    "namespaces": [
      {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
      {"type": "network", "path": "/var/run/netns/pod"}
    ]
  }
}"#;

#[test]
fn reads_namespaces_mounts_user_capabilities_and_rlimits() {
    let (c, pid) = Confinement::from_spec(&spec(CTR_LIKE)).unwrap();
    assert_eq!(pid, PidNamespace::New);
    let kinds: Vec<(Kind, bool)> = c
        .namespaces
        .iter()
        .map(|n| (n.kind, n.path.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::Ipc, false),
            (Kind::Uts, false),
            (Kind::Mount, false),
            (Kind::Network, true)
        ]
    );
    assert!(c.pivots());
    assert_eq!(c.hostname.as_deref(), Some("wasm"));
    assert_eq!(
        c.user,
        User {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10]
        }
    );
    // Only what a WASI host can use survives.
    assert_eq!(
        c.capabilities,
        [
            "CAP_NET_BIND_SERVICE",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_FSETID"
        ]
    );
    assert!(c.no_new_privs);
    assert_eq!(
        c.rlimits,
        [Rlimit {
            resource: libc::RLIMIT_NOFILE as i32,
            soft: 512,
            hard: 1024
        }]
    );
    // /proc, /sys and /dev (with /dev/shm) are left out; binds and other tmpfs kept.
    let destinations: Vec<&str> = c
        .mounts
        .iter()
        .map(|m| match m {
            Mount::Bind { destination, .. } | Mount::Tmpfs { destination, .. } => {
                destination.as_str()
            }
        })
        .collect();
    assert_eq!(destinations, ["/run", "/etc/hosts", "/data"]);
    assert!(matches!(
        &c.mounts[1],
        Mount::Bind {
            readonly: true,
            recursive: true,
            ..
        }
    ));
    assert!(matches!(
        &c.mounts[2],
        Mount::Bind {
            readonly: false,
            recursive: false,
            ..
        }
    ));
    assert!(matches!(&c.mounts[0], Mount::Tmpfs { data, .. } if data == "mode=755,size=1m"));
}

#[test]
fn joined_namespaces_and_refusals() {
    let joined = CTR_LIKE.replace(
        r#"{"type": "pid"}"#,
        r#"{"type": "pid", "path": "/proc/42/ns/pid"}"#,
    );
    let (_, pid) = Confinement::from_spec(&spec(&joined)).unwrap();
    assert_eq!(pid, PidNamespace::Join("/proc/42/ns/pid".into()));

    let user_ns = CTR_LIKE.replace(r#"{"type": "pid"}"#, r#"{"type": "user"}"#);
    let err = Confinement::from_spec(&spec(&user_ns)).unwrap_err();
    assert!(err.to_string().contains("user namespaces"), "{err}");

    let relative = CTR_LIKE.replace(r#""destination": "/data""#, r#""destination": "data""#);
    let err = Confinement::from_spec(&spec(&relative)).unwrap_err();
    assert!(err.to_string().contains("not an absolute path"), "{err}");

    // Without a mount namespace of its own the guest does not pivot, and mounts stay
    // WASI preopens.
    let no_mnt = CTR_LIKE.replace(r#"{"type": "mount"},"#, "");
    let (c, _) = Confinement::from_spec(&spec(&no_mnt)).unwrap();
    assert!(!c.pivots() && c.mounts.is_empty());
}

#[test]
fn seccomp_profiles_are_carried_and_notify_is_refused() {
    let with_profile = CTR_LIKE.replace(
        r#""cgroupsPath": "/default/c1","#,
        r#""cgroupsPath": "/default/c1",
           "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                       "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]},"#,
    );
    let (c, _) = Confinement::from_spec(&spec(&with_profile)).unwrap();
    assert!(c.seccomp.is_some());
    let notify = with_profile.replace(
        r#""action": "SCMP_ACT_ALLOW""#,
        r#""action": "SCMP_ACT_NOTIFY""#,
    );
    let err = Confinement::from_spec(&spec(&notify)).unwrap_err();
    assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
}
