pub mod containerd;
pub mod cri;
pub mod density;
pub mod image;
pub mod pods;
pub mod throughput;
