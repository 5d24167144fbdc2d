//! A WASIp3 HTTP component (examples/p3-http, `wasi:http/handler@0.3`) served by the shim as
//! a pod, reached at its IP through CRI: the routes of the WASIp2 example, `wasmtime serve`'s
//! p3 reuse defaults, whole log lines, and the drain at kubelet's stop.

use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, wait_for};
use wasmtime_shim_tests::cri::{Cri, Spec, log_lines};
use wasmtime_shim_tests::http::{self, Upstream};

#[test]
fn a_wasip3_pod_serves_echoes_fetches_reuses_logs_and_drains() {
    // Reached from the pods at the host's address on their bridge.
    let upstream = Upstream::start("0.0.0.0:0", "upstream says hi").unwrap();
    for version in ALL {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let image = c.import_example_in("k8s.io", "p3-http").unwrap();
        cri.wait_image(&image).unwrap();
        let pod = cri.run_pod("p3", logs.path()).unwrap();
        let id = cri.run(&pod, &Spec::new("web", &image)).unwrap();
        let ip = cri.pod_ip(&pod).unwrap();
        let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
        let log = pod.log_dir.join("web.log");
        http::wait_listening(addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{version:?}: {e}\n{:?}", log_lines(&log)));

        let hello = http::get(addr, "/").unwrap();
        assert_eq!(hello.status, 200, "{version:?}");
        assert_eq!(hello.text(), "Hello from a WASIp3 HTTP component!\n");
        let body: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 253) as u8).collect();
        let echoed = http::request(addr, "POST", "/echo", &body).unwrap();
        assert_eq!(echoed.status, 200, "{version:?}");
        assert!(
            echoed.body == body,
            "{version:?}: echoed {} bytes",
            echoed.body.len()
        );
        let gateway = c.pod_gateway().unwrap();
        let url = format!("http://{gateway}:{}/", upstream.addr.port());
        let fetched = http::get(addr, &format!("/fetch?url={url}")).unwrap();
        assert_eq!(fetched.status, 200, "{version:?}: {}", fetched.text());
        assert_eq!(fetched.text(), "upstream says hi", "{version:?}");

        // wasmtime serve's p3 defaults with no setting: one instance serves request after
        // request (its global count climbs); a trap ends it, and the next starts over.
        let count = || http::get(addr, "/count").unwrap().text().trim().to_string();
        let first: u64 = count().parse().unwrap();
        assert_eq!(count(), (first + 1).to_string(), "{version:?}: not reused");
        let trapped = http::get(addr, "/trap").unwrap();
        assert_eq!(trapped.status, 500, "{version:?}");
        assert_eq!(
            count(),
            "1",
            "{version:?}: the trapped instance served again"
        );

        // 200 clients at once.
        let start = std::sync::Arc::new(std::sync::Barrier::new(200));
        let clients: Vec<_> = (0..200)
            .map(|i| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let path = if i % 2 == 0 { "/sleep?ms=100" } else { "/" };
                    http::get(addr, path).map(|r| r.status)
                })
            })
            .collect();
        let statuses: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
        assert_eq!(ok, 200, "{version:?}: {statuses:?}");

        // Lines whole on the container's stdout, also a partial one of an earlier request.
        let (partial, whole) = (unique("partial"), unique("whole"));
        http::get(addr, &format!("/partial?msg={partial}")).unwrap();
        http::get(addr, &format!("/log?msg={whole}")).unwrap();
        let want = [partial.clone(), format!("p3-http: log {whole}")];
        let found = wait_for(Duration::from_secs(5), || {
            let lines = log_lines(&log).ok()?;
            want.iter()
                .all(|w| {
                    lines
                        .iter()
                        .any(|(s, tag, text)| s == "stdout" && tag == "F" && text == w)
                })
                .then_some(())
        });
        assert!(
            found.is_some(),
            "{version:?}: {want:?} not as lines of their own in {:?}",
            log_lines(&log)
        );

        // kubelet's stop with a grace period: the request in flight completes, the exit is 0,
        // and the idle instance does not hold the stop back.
        let slow = std::thread::spawn(move || http::get(addr, "/sleep?ms=1000"));
        std::thread::sleep(Duration::from_millis(300));
        let began = std::time::Instant::now();
        cri.stop(&id, 10).unwrap();
        let answered = slow.join().unwrap().unwrap();
        assert_eq!(answered.status, 200, "{version:?}");
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "{version:?}: {:?}",
            began.elapsed()
        );
        let status = cri.status(&id).unwrap();
        assert_eq!(status.exit_code, 0, "{version:?}: {status:?}");
        cri.remove_pod(&pod).unwrap();
    }
}
