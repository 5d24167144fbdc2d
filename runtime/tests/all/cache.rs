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

/// A blob that counts its reads and can be told to fail them.
struct CountingBlob {
    digest: String,
    bytes: Vec<u8>,
    reads: std::cell::Cell<u32>,
}

impl CountingBlob {
    fn new(bytes: Vec<u8>) -> CountingBlob {
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        CountingBlob {
            digest: format!("sha256:{hex}"),
            bytes,
            reads: Default::default(),
        }
    }
}

impl wasmtime_shim_runtime::Blob for CountingBlob {
    fn digest(&self) -> &str {
        &self.digest
    }
    fn name(&self) -> &str {
        "layer test.wasm"
    }
    fn read(&self) -> Result<Vec<u8>, wasmtime_shim_runtime::Error> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.bytes.clone())
    }
}

#[test]
fn a_blob_is_read_only_on_a_miss_and_shares_the_entry_of_the_same_bytes() {
    let host = wasmtime_shim_runtime::Host::new().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = CompileCache::new(cache_dir.path());
    let blob = CountingBlob::new(wat::parse_str(writer_wat(1, "blob\n")).unwrap());
    let loaded =
        wasmtime_shim_runtime::Loaded::load_blob(&host, &blob, &Default::default(), &cache)
            .unwrap();
    assert_eq!(
        (loaded.cache_outcome(), blob.reads.get()),
        (CacheOutcome::Compiled, 1)
    );
    let loaded =
        wasmtime_shim_runtime::Loaded::load_blob(&host, &blob, &Default::default(), &cache)
            .unwrap();
    assert_eq!(
        (loaded.cache_outcome(), blob.reads.get()),
        (CacheOutcome::Hit, 1)
    );
    // The same bytes as a file in a root filesystem: the same entry.
    let root = Rootfs::new();
    std::fs::write(root.path().join("same.wasm"), &blob.bytes).unwrap();
    let p = prepare(&root.spec(&["/same.wasm"]), &cache, b"").unwrap();
    assert_eq!(p.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(entries(cache_dir.path()).len(), 1);
    // Bad digests are refused before anything is read.
    let mut bad = CountingBlob::new(blob.bytes.clone());
    bad.digest = "sha512:00".into();
    let err = wasmtime_shim_runtime::Loaded::load_blob(&host, &bad, &Default::default(), &cache)
        .err()
        .unwrap();
    assert!(err.to_string().contains("sha256 only"), "{err}");
    assert_eq!(bad.reads.get(), 0);
}

#[test]
fn the_cache_keeps_to_its_limit_dropping_the_least_recently_used() {
    let host = wasmtime_shim_runtime::Host::new().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let blobs: Vec<CountingBlob> = (0..4)
        .map(|i| CountingBlob::new(wat::parse_str(writer_wat(1, &format!("blob {i}\n"))).unwrap()))
        .collect();
    // Room for about two entries.
    let one = {
        let probe = tempfile::tempdir().unwrap();
        wasmtime_shim_runtime::Loaded::load_blob(
            &host,
            &blobs[0],
            &Default::default(),
            &CompileCache::new(probe.path()),
        )
        .unwrap();
        std::fs::metadata(&entries(probe.path())[0]).unwrap().len()
    };
    let cache = CompileCache::new(cache_dir.path()).with_limit(one * 2 + one / 2);
    let load = |i: usize| {
        let l =
            wasmtime_shim_runtime::Loaded::load_blob(&host, &blobs[i], &Default::default(), &cache)
                .unwrap();
        // mtime granularity: keep the order observable.
        std::thread::sleep(std::time::Duration::from_millis(20));
        l.cache_outcome()
    };
    assert_eq!(load(0), CacheOutcome::Compiled);
    assert_eq!(load(1), CacheOutcome::Compiled);
    assert_eq!(load(0), CacheOutcome::Hit); // 0 is now the most recently used
    assert_eq!(load(2), CacheOutcome::Compiled); // evicts 1
    assert_eq!(entries(cache_dir.path()).len(), 2);
    assert_eq!(load(0), CacheOutcome::Hit);
    assert_eq!(load(1), CacheOutcome::Compiled);
}
