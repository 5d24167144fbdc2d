//! file-writer: writes argv[2] to the file argv[1], then prints `wrote <path>` or, when the write
//! is refused, `cannot write <path>: <error>` and exits 1.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(text)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: file-writer <path> <text>");
        std::process::exit(2);
    };
    match std::fs::write(path, text) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => {
            println!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
