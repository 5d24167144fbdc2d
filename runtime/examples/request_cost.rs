//! Where one request's time goes inside the HTTP server, apart from the network:
//! `request_cost <component.wasm> [path] [requests]` serves GET requests for `path` (default `/`)
//! one after another in this process and prints the mean time of each step in microseconds, as
//! `step=value` words on one line. The HTTP benchmark (`bench http`) runs it.

use std::path::Path;
use wasmtime_shim_runtime::{CompileCache, GuestSpec, Host, Program, Stdio};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: request_cost <component.wasm> [path] [requests]");
        std::process::exit(2);
    };
    let path = args.next().unwrap_or_else(|| "/".into());
    let requests = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let file = Path::new(&file);
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        eprintln!("request_cost: {} names no file", file.display());
        std::process::exit(2);
    };
    let spec = GuestSpec {
        args: vec![format!("/{}", name.to_string_lossy())],
        rootfs: dir.to_path_buf(),
        ..GuestSpec::default()
    };
    let costs = Host::new()
        .and_then(|host| Program::prepare(&host, &spec, &CompileCache::disabled(), Stdio::Inherit))
        .and_then(|program| program.request_costs(&path, requests));
    match costs {
        Ok(c) => {
            let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
            println!(
                "requests={} setup={:.2} instantiate={:.2} handle={:.2} reset={:.2} total={:.2}",
                c.requests,
                us(c.setup),
                us(c.instantiate),
                us(c.handle),
                us(c.reset),
                us(c.total())
            );
        }
        Err(e) => {
            eprintln!("request_cost: {}", e.chain());
            std::process::exit(1);
        }
    }
}
