//! Links the shim as a position-dependent executable (`-no-pie`).
//!
//! Every shim, zygote and guest process maps this binary. Linked as PIE, each *exec* of it
//! relocates about 1 MB of data (vtables, the GOT) into private dirty pages, which a node
//! running many shims pays once per shim. Linked at a fixed address the same pages stay clean
//! and are shared through the page cache by every process of the node, as for containerd's own
//! (Go, non-PIE) shims. The price is that the binary's own code is not randomized by ASLR
//! (libraries, heap, stacks and mmaps still are).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
