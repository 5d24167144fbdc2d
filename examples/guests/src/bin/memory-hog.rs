//! memory-hog: allocates memory 1 MiB at a time, touching every page, and never frees it. Prints
//! the total every 8 MiB. Waits argv[1] milliseconds after each MiB (default 0). Under a memory
//! limit it is stopped and reported out of memory.
fn main() {
    let pause: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![0xa5; 1 << 20]);
        if held.len() % 8 == 0 {
            println!("holding {} MiB", held.len());
        }
        if pause > 0 {
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
    }
}
