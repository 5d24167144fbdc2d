pub mod containerd;
pub mod image;
pub mod throughput;
