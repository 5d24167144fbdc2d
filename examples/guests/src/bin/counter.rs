//! counter: prints 0, 1, 2, ... one number every 100 ms, forever (or argv[1] numbers).
fn main() {
    let limit: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(u64::MAX);
    for n in 0..limit {
        println!("{n}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
