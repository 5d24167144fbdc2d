//! memory-hog: allocates memory 1 MiB at a time, touching every page, and never frees it. Prints
//! the total every 8 MiB. Under a memory limit it is stopped and reported out of memory.
fn main() {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![0xa5; 1 << 20]);
        if held.len() % 8 == 0 {
            println!("holding {} MiB", held.len());
        }
    }
}
