//! sleeper: announces itself, then sleeps argv[1] seconds (default one hour) in a host call.
fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3600);
    println!("sleeping for {secs}s");
    std::thread::sleep(std::time::Duration::from_secs(secs));
    println!("woke up");
}
