//! The soak and fault harness behind `scripts/soak.sh` (the `soak` binary): long runs and
//! injected faults against a private containerd, each step followed by a check that nothing was
//! left behind (processes, mounts, cgroups, network namespaces, the pod shim's open files,
//! containerd state files, compile-cache temporaries). Results go to `docs/reliability.md`.

pub mod cache;
pub mod cycles;
pub mod escape;
pub mod events;
pub mod faults;
pub mod flood;
pub mod guests;
pub mod node;
pub mod pod;
pub mod programs;
pub mod report;

/// How much to run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Sequential create/start/wait/remove cycles in one pod.
    pub cycles: usize,
    /// Containers started at once in one pod.
    pub parallel: usize,
    /// Rounds of containerd killed under 10 guests.
    pub containerd_rounds: usize,
    /// Rounds of the shims killed under 10 guests.
    pub shim_rounds: usize,
    /// Seconds of stdout flood.
    pub flood_secs: u64,
}

impl Sizes {
    /// The documented full form.
    pub const FULL: Sizes = Sizes {
        cycles: 1000,
        parallel: 100,
        containerd_rounds: 20,
        shim_rounds: 20,
        flood_secs: 10,
    };
    /// The reduced form CI runs: every step, fewer repetitions.
    pub const QUICK: Sizes = Sizes {
        cycles: 100,
        parallel: 20,
        containerd_rounds: 2,
        shim_rounds: 2,
        flood_secs: 10,
    };
}
