//! hello-server: the native baseline of the HTTP benchmark. hyper's HTTP/1.1 on tokio's
//! multi-threaded runtime, answering every request with the same body as the example wasi:http
//! component's hello route. `hello-server <addr> [work-µs]`: with `work-µs`, each request first
//! keeps its thread busy for that long (the benchmark's calibration: what a server that spends
//! that much CPU per request can reach on the same machine).

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::time::{Duration, Instant};

const BODY: &str = "Hello from a wasi:http component!\n";

fn hello(work: Duration) -> Response<Full<Bytes>> {
    if !work.is_zero() {
        let began = Instant::now();
        while began.elapsed() < work {
            std::hint::spin_loop();
        }
    }
    Response::new(Full::new(Bytes::from_static(BODY.as_bytes())))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let work = match args.next() {
        Some(us) => {
            let us: f64 = us.parse()?;
            anyhow::ensure!(
                us.is_finite() && us >= 0.0,
                "work-µs must be a non-negative number"
            );
            Duration::from_secs_f64(us / 1e6)
        }
        None => Duration::ZERO,
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("serving HTTP on http://{}/", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |_: Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(hello(work))
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
