pub mod containerd;
pub mod density;
pub mod image;
pub mod throughput;
