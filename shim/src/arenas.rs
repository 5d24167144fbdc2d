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

/// Sets the limit glibc uses when none is set: eight arenas per online CPU on 64-bit hosts.
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
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    /// In a forked child: apply `setup`, let more threads allocate at once than there are
    /// arenas, and exit with how many arenas that added. (The child inherits the test
    /// harness's arenas, and new threads take those first, whatever the limit.)
    fn arenas_added_after(setup: fn()) -> i32 {
        // SAFETY: the child only uses glibc's allocator (fork-safe in glibc) and its own new
        // threads, then leaves with `_exit`.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                setup();
                let before = count_arenas();
                let n = before.max(1) as usize + 3;
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
                    let _ = thread.join();
                }
                // SAFETY: `_exit` ends the child without running the parent's destructors.
                unsafe { libc::_exit(count_arenas() - before) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, added) => added,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    /// The `<heap>` entries of `malloc_info`, one per arena.
    fn count_arenas() -> i32 {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len = 0;
        // SAFETY: open_memstream and malloc_info write into a buffer glibc allocates; it is
        // read after fclose and freed once.
        unsafe {
            let stream = libc::open_memstream(&mut buf, &mut len);
            if stream.is_null() || libc::malloc_info(0, stream) != 0 {
                return -1;
            }
            libc::fclose(stream);
            let text = std::slice::from_raw_parts(buf.cast::<u8>(), len);
            let count = String::from_utf8_lossy(text).matches("<heap nr=").count();
            libc::free(buf.cast());
            count as i32
        }
    }

    #[test]
    fn one_arena_the_default_and_one_again() {
        assert_eq!(arenas_added_after(limit_to_one), 0);
        let added = arenas_added_after(|| {
            limit_to_one();
            restore_default();
        });
        assert!(added > 0, "no arena added");
        // A command guest goes back to one arena after its load.
        let added = arenas_added_after(|| {
            limit_to_one();
            restore_default();
            limit_to_one();
        });
        assert_eq!(added, 0);
    }
}
