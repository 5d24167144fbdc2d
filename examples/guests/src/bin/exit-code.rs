//! exit-code: exits with the status given as argv[1] (`proc_exit(n)`).
fn main() {
    let code = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<i32>().ok())
        .unwrap_or(0);
    println!("exiting with {code}");
    std::process::exit(code);
}
