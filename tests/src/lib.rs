pub mod containerd;
pub mod image;
