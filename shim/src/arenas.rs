//! glibc's malloc arenas. A shim, a zygote or an idle command guest allocates little, and glibc's
//! arena per thread would cost each of them a few hundred KiB of touched memory on a node that
//! runs hundreds, so they keep to one. A guest that serves HTTP allocates on one thread per CPU,
//! and with one arena those threads queue on its lock; it gets glibc's usual limit back.
//!
//! glibc fixes the limit when a second thread first allocates, so these calls only count while
//! the process has allocated on one thread (a guest that compiled its program on wasmtime's
//! threads keeps the limit it had then). `mallopt(M_ARENA_MAX, 0)` does not undo a limit (glibc
//! ignores 0), hence the explicit figure in [`restore_default`].

/// Limits the process to one arena (the main one).
pub fn limit_to_one() {
    // SAFETY: mallopt only changes the allocator's settings.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Sets about the limit glibc uses when none is set: eight arenas per online CPU (glibc's
/// figure for 64-bit hosts; it counts the CPUs the process may run on).
pub fn restore_default() {
    // SAFETY: sysconf reads a system value; mallopt only changes the allocator's settings.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
    let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Names the settings [`probe`] applies, in its environment.
    const PROBE: &str = "ARENAS_PROBE";

    /// Runs [`probe`] in a fresh process of this test binary (a fork would inherit the
    /// harness's allocator state, which glibc may have fixed already) and returns how many
    /// arenas its threads added under `settings`.
    fn arenas_added_after(settings: &str) -> usize {
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "arenas::tests::probe",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(PROBE, settings)
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("GLIBC_TUNABLES")
            .output()
            .expect("run the probe");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "probe failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.split_once("arenas added: ").map(|(_, n)| n.trim()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in the probe's output: {stdout}"))
    }

    /// Applies the settings named in `ARENAS_PROBE` (`one`, `default`, or both in order, comma
    /// separated), lets more threads allocate at once than there are arenas, and prints how
    /// many arenas that added. Run by [`arenas_added_after`] only.
    #[test]
    #[ignore = "run in its own process by one_arena_the_default_and_one_again"]
    fn probe() {
        let settings = std::env::var(PROBE).expect("run by arenas_added_after");
        for setting in settings.split(',') {
            match setting {
                "one" => limit_to_one(),
                "default" => restore_default(),
                other => panic!("unknown setting {other}"),
            }
        }
        let before = count_arenas();
        let n = before + 3;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let block = std::hint::black_box(vec![1u8; 4096]);
                    barrier.wait();
                    drop(block);
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("allocating thread");
        }
        println!("arenas added: {}", count_arenas() - before);
    }

    /// The `<heap>` entries of `malloc_info`, one per arena.
    fn count_arenas() -> usize {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len = 0;
        // SAFETY: open_memstream and malloc_info write into a buffer glibc allocates; it is
        // read after fclose and freed once.
        let text = unsafe {
            let stream = libc::open_memstream(&mut buf, &mut len);
            assert!(!stream.is_null(), "open_memstream");
            assert_eq!(libc::malloc_info(0, stream), 0, "malloc_info");
            libc::fclose(stream);
            let text = String::from_utf8_lossy(std::slice::from_raw_parts(buf.cast::<u8>(), len))
                .into_owned();
            libc::free(buf.cast());
            text
        };
        text.matches("<heap nr=").count()
    }

    #[test]
    fn one_arena_the_default_and_one_again() {
        assert_eq!(arenas_added_after("one"), 0);
        assert!(arenas_added_after("one,default") > 0, "no arena added");
        // A command guest goes back to one arena after its load.
        assert_eq!(arenas_added_after("one,default,one"), 0);
    }
}
