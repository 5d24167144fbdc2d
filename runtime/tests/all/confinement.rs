//! The guest sees its root filesystem and nothing else, as `wasmtime run --dir rootfs::/` does.

use super::*;

fn reader(root: &Rootfs) -> &Rootfs {
    root.put(
        "/file-reader.wasm",
        example_guest("wasm32-wasip1", "file-reader"),
    )
}

#[test]
fn etc_hostname_is_the_images_or_none() {
    let root = Rootfs::new();
    reader(&root);
    let o = run(&root.spec(&["/file-reader.wasm", "/etc/hostname"]));
    assert_eq!(o.status, 1);
    assert!(
        stdout(&o).starts_with("/etc/hostname: error:"),
        "{}",
        stdout(&o)
    );
    root.put("/etc/hostname", "image-host\n");
    let o = run(&root.spec(&["/file-reader.wasm", "/etc/hostname"]));
    assert_eq!(stdout(&o), "/etc/hostname: image-host\n");
}

#[test]
fn symlinks_and_dotdot_do_not_escape() {
    let root = Rootfs::new();
    reader(&root);
    std::fs::write(root.dir.path().join("secret"), "host secret\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("../../../../secret", root.path().join("up-link")).unwrap();
    std::os::unix::fs::symlink("../secret", root.path().join("parent-link")).unwrap();
    let o = run(&root.spec(&[
        "/file-reader.wasm",
        "/passwd-link",
        "/up-link",
        "/parent-link",
        "/../secret",
        "../secret",
    ]));
    let out = stdout(&o);
    assert_eq!(o.status, 1);
    assert!(!out.contains("host secret"), "{out}");
    assert!(!out.contains("root:"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(": error:")).count(),
        5,
        "{out}"
    );
}

#[test]
fn readonly_rootfs_and_volumes() {
    let root = Rootfs::new();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("v.txt"), "from the volume\n").unwrap();
    reader(&root);
    root.put("/data/message.txt", "in the image\n");
    let mut spec = root.spec(&["/file-reader.wasm", "/data/message.txt", "/mnt/vol/v.txt"]);
    spec.mounts.push(wasmtime_shim_runtime::Preopen {
        host: vol.path().to_path_buf(),
        guest: "/mnt/vol".into(),
        readonly: true,
    });
    spec.readonly_rootfs = true;
    let o = run(&spec);
    assert_eq!(
        (o.status, stdout(&o).as_str()),
        (
            0,
            "/data/message.txt: in the image\n/mnt/vol/v.txt: from the volume\n"
        )
    );
    // A write through a read-only preopen fails inside the guest.
    root.put_wat(
        "/write.wasm",
        r#"(module
          (import "wasi_snapshot_preview1" "path_open"
            (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "new.txt")
          ;; path_open(fd 3 = "/", lookup 0, "new.txt", O_CREAT, rights write, ...) -> errno as exit
          (func (export "_start")
            (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 7)
              (i32.const 1) (i64.const 64) (i64.const 64) (i32.const 0) (i32.const 100)))))"#,
    );
    let mut spec = root.spec(&["/write.wasm"]);
    spec.readonly_rootfs = true;
    let o = run(&spec);
    assert_ne!(o.status, 0, "create in a read-only rootfs must fail");
    assert!(!root.path().join("new.txt").exists());
    spec.readonly_rootfs = false;
    assert_eq!(run(&spec).status, 0);
    assert!(root.path().join("new.txt").exists());
}
