//! disk-filler: writes argv[2] MiB (default 1024) into the file argv[1], 1 MiB at a time,
//! printing the total every 8 MiB. On a tmpfs those pages are memory charged to the container:
//! under a memory limit the kernel's OOM killer stops it (Wasm's own budget never sees them).
use std::io::Write;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/scratch/fill".into());
    let mib: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let mut file = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => {
            println!("cannot create {path}: {e}");
            std::process::exit(1);
        }
    };
    let chunk = vec![0x5a_u8; 1 << 20];
    for n in 1..=mib {
        if let Err(e) = file.write_all(&chunk) {
            println!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        if n % 8 == 0 {
            println!("wrote {n} MiB");
        }
    }
    println!("wrote {mib} MiB");
}
