//! Compile once per node: the second start loads, a damaged entry is recompiled.

use super::*;
use wasmtime_shim_runtime::CacheOutcome;

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn second_start_is_a_hit_and_damaged_entries_are_recompiled() {
    let root = Rootfs::new();
    root.put_wat("/hello.wasm", &writer_wat(1, "cached\n"));
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CompileCache::new(cache_dir.path().join("cache"));
    let spec = root.spec(&["/hello.wasm"]);
    let start = |expect: CacheOutcome| {
        let p = prepare(&spec, &cache, b"").unwrap();
        assert_eq!(p.cache_outcome(), expect);
        let o = p.run();
        assert_eq!((o.status, stdout(&o).as_str()), (0, "cached\n"));
    };
    start(CacheOutcome::Compiled);
    start(CacheOutcome::Hit);
    let files = entries(&cache_dir.path().join("cache"));
    assert_eq!(files.len(), 1, "{files:?}");
    let entry = &files[0];
    let name = entry.file_name().unwrap().to_str().unwrap();
    assert!(
        name.ends_with(".cwasm") && name.len() == 64 + 1 + 16 + 6,
        "{name}"
    );

    // Truncated.
    let full = std::fs::read(entry).unwrap();
    std::fs::write(entry, &full[..full.len() / 2]).unwrap();
    start(CacheOutcome::Compiled);
    start(CacheOutcome::Hit);
    // Overwritten with garbage, and emptied.
    std::fs::write(entry, vec![0x5a; full.len()]).unwrap();
    start(CacheOutcome::Compiled);
    std::fs::write(entry, b"").unwrap();
    start(CacheOutcome::Compiled);
    start(CacheOutcome::Hit);
    assert_eq!(entries(&cache_dir.path().join("cache")).len(), 1);
}

#[test]
fn concurrent_first_starts_leave_one_valid_entry() {
    let root = Rootfs::new();
    root.put_wat("/hello.wasm", &writer_wat(1, "race\n"));
    let cache_dir = tempfile::tempdir().unwrap();
    let spec = root.spec(&["/hello.wasm"]);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let cache = CompileCache::new(cache_dir.path());
                let o = run_with(&spec, &cache, b"");
                assert_eq!(stdout(&o), "race\n");
            });
        }
    });
    let files = entries(cache_dir.path());
    assert_eq!(files.len(), 1, "no temporary files left: {files:?}");
    let p = prepare(&spec, &CompileCache::new(cache_dir.path()), b"").unwrap();
    assert_eq!(p.cache_outcome(), CacheOutcome::Hit);
}

#[test]
fn invalid_modules_are_never_cached() {
    let root = Rootfs::new();
    root.put("/bad.wasm", b"\0asm\x01\0\0\0\xff\xff");
    let cache_dir = tempfile::tempdir().unwrap();
    let err = prepare(
        &root.spec(&["/bad.wasm"]),
        &CompileCache::new(cache_dir.path()),
        b"",
    )
    .err()
    .unwrap();
    assert!(
        err.chain().contains("is not valid WebAssembly"),
        "{}",
        err.chain()
    );
    assert!(entries(cache_dir.path()).is_empty());
}
