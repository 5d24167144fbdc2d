//! hello-component: built for wasm32-wasip2, this is a component exporting `wasi:cli/run`.
fn main() {
    println!("Hello from a WebAssembly component!");
}
