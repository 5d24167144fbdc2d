//! wasi:http components served by the shim: the example (examples/http-hello) through `ctr`
//! on the host's network, and as a pod reached at its IP through CRI.

use super::*;
use std::time::Duration;
use wasmtime_shim_tests::containerd::{ALL, wait_for};
use wasmtime_shim_tests::cri::{Cri, Spec, log_lines};
use wasmtime_shim_tests::http::{self, Upstream, free_addr};

#[test]
fn the_example_serves_hello_echo_outgoing_and_200_concurrent_requests_then_drains_on_sigterm() {
    let upstream = Upstream::start("127.0.0.1:0", "upstream says hi").unwrap();
    for version in ALL {
        let c = Containerd::start(version).unwrap();
        let image = c.import_example("http-hello").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("http.log");
        let addr = free_addr();
        let id = unique("http");
        let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
        c.ctr_ok(&[
            "run",
            "-d",
            "--net-host",
            "--env",
            &listen,
            "--log-uri",
            &format!("file://{}", log.display()),
            "--runtime",
            RUNTIME,
            &image,
            &id,
        ])
        .unwrap();
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        http::wait_listening(addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{version:?}: {e}\nlog: {}", log_text()));

        let hello = http::get(addr, "/").unwrap();
        assert_eq!(hello.status, 200, "{version:?}");
        assert_eq!(hello.text(), "Hello from a wasi:http component!\n");

        let body: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 253) as u8).collect();
        let echoed = http::request(addr, "POST", "/echo", &body).unwrap();
        assert_eq!(echoed.status, 200, "{version:?}");
        assert!(
            echoed.body == body,
            "{version:?}: echoed {} bytes",
            echoed.body.len()
        );

        let fetched = http::get(addr, &format!("/fetch?url=http://{}/", upstream.addr)).unwrap();
        assert_eq!(fetched.status, 200, "{version:?}: {}", fetched.text());
        assert_eq!(fetched.text(), "upstream says hi", "{version:?}");

        // 200 clients at once, each on its own connection.
        let start = std::sync::Arc::new(std::sync::Barrier::new(200));
        let clients: Vec<_> = (0..200)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    http::get(addr, "/").map(|r| r.status)
                })
            })
            .collect();
        let statuses: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
        assert_eq!(ok, 200, "{version:?}: {statuses:?}");

        let trapped = http::get(addr, "/trap").unwrap();
        assert_eq!(trapped.status, 500, "{version:?}");
        assert_eq!(http::get(addr, "/").unwrap().status, 200, "{version:?}");

        // The guest's line, whole, in the task's log.
        let marker = unique("marker");
        assert_eq!(
            http::get(addr, &format!("/log?msg={marker}"))
                .unwrap()
                .status,
            200
        );
        let line = format!("http-hello: log {marker}");
        let logged = wait_for(Duration::from_secs(5), || {
            log_text().lines().any(|l| l == line).then_some(())
        });
        assert!(
            logged.is_some(),
            "{version:?}: {line:?} not in\n{}",
            log_text()
        );
        assert!(
            log_text().contains("request GET /trap failed"),
            "{version:?}: the trap is not reported:\n{}",
            log_text()
        );

        // SIGTERM while a request is in flight: it completes, then the task exits 0.
        let slow = std::thread::spawn(move || http::get(addr, "/sleep?ms=1500"));
        std::thread::sleep(Duration::from_millis(400));
        c.ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", &id])
            .unwrap();
        let answered = slow.join().unwrap().unwrap();
        assert_eq!(answered.status, 200, "{version:?}");
        assert_eq!(answered.text(), "slept 1500 ms\n", "{version:?}");
        assert!(
            stopped_within(&c, &id, Duration::from_secs(5)),
            "{version:?}: not stopped after draining"
        );
        assert_eq!(delete_status(&c, &id), 0, "{version:?}: {}", log_text());
        c.ctr_ok(&["containers", "delete", &id]).unwrap();
        assert_gone(&c, &id);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{version:?}: still listening"
        );
    }
}

#[test]
fn a_pod_serves_on_its_ip_and_logs_to_its_stdout() {
    for version in ALL {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let image = c.import_example_in("k8s.io", "http-hello").unwrap();
        cri.wait_image(&image).unwrap();
        let pod = cri.run_pod("web", logs.path()).unwrap();
        let id = cri.run(&pod, &Spec::new("web", &image)).unwrap();
        let ip = cri.pod_ip(&pod).unwrap();
        let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
        http::wait_listening(addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        let hello = http::get(addr, "/").unwrap();
        assert_eq!(hello.status, 200, "{version:?}");
        assert_eq!(hello.text(), "Hello from a wasi:http component!\n");

        let marker = unique("pod-marker");
        http::get(addr, &format!("/log?msg={marker}")).unwrap();
        let log = pod.log_dir.join("web.log");
        let want = format!("http-hello: log {marker}");
        let found = wait_for(Duration::from_secs(5), || {
            let lines = log_lines(&log).ok()?;
            lines
                .iter()
                .any(|(stream, tag, text)| stream == "stdout" && tag == "F" && *text == want)
                .then_some(())
        });
        assert!(
            found.is_some(),
            "{version:?}: {want:?} not on stdout in {:?}",
            log_lines(&log)
        );

        // kubelet's stop with a grace period: the request in flight completes, the exit is 0.
        let slow = std::thread::spawn(move || http::get(addr, "/sleep?ms=1000"));
        std::thread::sleep(Duration::from_millis(300));
        cri.stop(&id, 10).unwrap();
        let answered = slow.join().unwrap().unwrap();
        assert_eq!(answered.status, 200, "{version:?}");
        let status = cri.status(&id).unwrap();
        assert_eq!(status.exit_code, 0, "{version:?}: {status:?}");
        cri.remove_pod(&pod).unwrap();
    }
}

/// Instance reuse set in a pod's env, as a user sets it: the component's request count (a
/// global) climbs to the reuse count, then a fresh instance starts over; one request's output
/// without a line end is never joined to the next request's line.
#[test]
fn a_pod_reuses_instances_when_its_env_asks() {
    for version in ALL {
        let c = Containerd::start_cri(version).unwrap();
        let cri = Cri::connect(&c).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let image = c.import_example_in("k8s.io", "http-hello").unwrap();
        cri.wait_image(&image).unwrap();
        let pod = cri.run_pod("reuse", logs.path()).unwrap();
        let spec = Spec::new("web", &image)
            .env("WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT", "3")
            .env("WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT", "30s");
        cri.run(&pod, &spec).unwrap();
        let ip = cri.pod_ip(&pod).unwrap();
        let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
        http::wait_listening(addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        let counts: Vec<String> = (0..4)
            .map(|_| http::get(addr, "/count").unwrap().text().trim().to_string())
            .collect();
        assert_eq!(counts, ["1", "2", "3", "1"], "{version:?}");

        let (partial, whole) = (unique("partial"), unique("whole"));
        http::get(addr, &format!("/partial?msg={partial}")).unwrap();
        http::get(addr, &format!("/log?msg={whole}")).unwrap();
        let log = pod.log_dir.join("web.log");
        let want = [partial.clone(), format!("http-hello: log {whole}")];
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
        cri.remove_pod(&pod).unwrap();
    }
}
