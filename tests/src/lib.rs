pub mod artifacts;
pub mod containerd;
pub mod cri;
pub mod density;
pub mod image;
pub mod pods;
pub mod registry;
pub mod throughput;
