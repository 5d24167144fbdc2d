//! file-reader: prints each file named on the command line, or the error opening it.
//! Exit status 1 if any file could not be read.
fn main() {
    let mut failed = false;
    for path in std::env::args().skip(1) {
        match std::fs::read_to_string(&path) {
            Ok(text) => print!("{path}: {text}"),
            Err(e) => {
                println!("{path}: error: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
