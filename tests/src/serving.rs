//! The HTTP serving benchmark: requests per second and latency of the example component's hello
//! route served by the shim (under containerd, on the host's network), against a native hyper
//! server (the ceiling) and `wasmtime serve` of the same component, measured with `wrk` in
//! alternating rounds of one run.

use crate::containerd::{Containerd, RUNTIME, Version, workspace};
use crate::http;
use anyhow::{Context, Result, bail, ensure};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What `wrk` measured in one round.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Non-2xx responses and socket errors together.
    pub errors: u64,
    /// Requests completed in the round.
    pub requests: u64,
    /// The server's CPU time (user and system, all its threads) per request, when its process
    /// is known.
    pub cpu_per_request: Option<Duration>,
}

/// Which server a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The native hyper server: the ceiling.
    Native,
    /// The shim serving the example component.
    Shim,
    /// The shim serving it with instance reuse (`WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=128`).
    ShimReuse,
    /// `wasmtime serve` of the same component.
    WasmtimeServe,
    /// `wasmtime serve` with the pooling allocator, as the shim serves (same settings).
    WasmtimeServePooling,
    /// `wasmtime serve` with the pooling allocator and instance reuse 128.
    WasmtimeServeReuse,
    /// The shim serving the WASIp3 example (`examples/p3-http`) with its defaults (reuse 128,
    /// 16 at once).
    ShimP3,
    /// `wasmtime serve` of the WASIp3 example, pooling allocator, p3 defaults.
    WasmtimeServeP3,
    /// The native server made to spend as much CPU per request as the shim's in-process
    /// steps of one request take: what any server with that cost per request reaches here.
    NativeWithWork,
}

/// Results per server, one [`Load`] per round.
pub struct Serving {
    pub rounds: Vec<(Role, String, Vec<Load>)>,
    pub wrk: String,
    /// Resident memory of the shim's guest process after the load, in KiB.
    pub guest_rss_kib: Option<u64>,
    /// Proportional set size of the reusing guests: (server, when, KiB) after 1000 requests,
    /// after the whole load, and after an idle pause and 1000 requests more.
    pub pss: Vec<(String, String, u64)>,
    /// The steps of one request inside the shim's server, in-process and without a network
    /// (`request_cost`'s report: `step=microseconds` words).
    pub request_cost: Option<String>,
}

pub const THREADS: u32 = 2;
pub const CONNECTIONS: u32 = 50;

/// The `wrk` command line for `addr`.
pub fn wrk_command(addr: SocketAddr, seconds: u32) -> Vec<String> {
    vec![
        "wrk".into(),
        format!("-t{THREADS}"),
        format!("-c{CONNECTIONS}"),
        format!("-d{seconds}s"),
        "--latency".into(),
        format!("http://{addr}/"),
    ]
}

/// Runs `wrk` against `addr` for `seconds`.
pub fn wrk(addr: SocketAddr, seconds: u32) -> Result<Load> {
    let argv = wrk_command(addr, seconds);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .context("run wrk (apt-get install wrk)")?;
    ensure!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// Reads requests/s, the 50% and 99% latencies and the error counts from wrk's report.
pub fn parse_wrk(report: &str) -> Result<Load> {
    let mut load = Load {
        requests_per_sec: 0.0,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        errors: 0,
        requests: 0,
        cpu_per_request: None,
    };
    let mut seen = 0;
    for line in report.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => {
                load.requests_per_sec = rate.parse()?;
                seen += 1;
            }
            ["50%", value] => {
                load.p50 = parse_duration(value).context("50% latency")?;
                seen += 1;
            }
            ["99%", value] => {
                load.p99 = parse_duration(value).context("99% latency")?;
                seen += 1;
            }
            [n, "requests", "in", ..] => load.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                for pair in rest.join(" ").split(',') {
                    if let Some(n) = pair.split_whitespace().last() {
                        load.errors += n.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }
    if seen != 3 {
        bail!("unexpected wrk report:\n{report}");
    }
    Ok(load)
}

/// A server under test, stopped when dropped.
struct Target {
    role: Role,
    name: String,
    addr: SocketAddr,
    /// The server's process, for its CPU time.
    pid: Option<u32>,
    stop: Box<dyn FnMut()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        (self.stop)();
    }
}

fn spawn_process(role: Role, name: &str, mut command: Command, addr: SocketAddr) -> Result<Target> {
    let mut child: Child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {name}"))?;
    if let Err(e) = http::wait_listening(addr, Duration::from_secs(30)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context(format!("{name} did not listen")));
    }
    Ok(Target {
        role,
        name: name.to_string(),
        addr,
        pid: Some(child.id()),
        stop: Box::new(move || {
            let _ = child.kill();
            let _ = child.wait();
        }),
    })
}

/// Measures `rounds` alternating rounds of `seconds` each. `wasmtime` is the wasmtime CLI to
/// compare with, if installed.
pub fn measure(rounds: usize, seconds: u32, wasmtime: Option<&std::path::Path>) -> Result<Serving> {
    let component = workspace().join("target/guests/wasm32-wasip2/release/http_hello.wasm");
    ensure!(
        component.exists(),
        "{} missing: run examples/build.sh",
        component.display()
    );
    let request_cost = request_cost(&component)?;
    let c = Containerd::start(Version::V2_1)?;
    let image = c.import_example("http-hello")?;
    let id = format!("bench-http-{}", std::process::id());
    let (shim_addr, guest_pid) = run_shim(&c, &image, &id, &[])?;

    let p3_component = workspace().join("target/guests/wasm32-wasip2/release/p3_http.wasm");
    let p3_image = c.import_example("p3-http")?;
    let p3_id = format!("bench-http-p3-{}", std::process::id());
    let (p3_addr, p3_pid) = run_shim(&c, &p3_image, &p3_id, &[])?;

    let mut targets = Vec::new();
    let native_addr = http::free_addr();
    let mut native = Command::new(workspace().join("target/release/hello-server"));
    native.arg(native_addr.to_string());
    targets.push(spawn_process(
        Role::Native,
        "native hyper (tokio, 2 workers)",
        native,
        native_addr,
    )?);
    // Stopped with SIGTERM at the end, which also checks the drain.
    targets.push(Target {
        role: Role::Shim,
        name: "wasmtime shim (fresh instance per request)".into(),
        addr: shim_addr,
        pid: guest_pid,
        stop: Box::new(|| {}),
    });
    // The same image with instance reuse, in a second container.
    let reuse_id = format!("bench-http-reuse-{}", std::process::id());
    let (reuse_addr, reuse_pid) = run_shim(
        &c,
        &image,
        &reuse_id,
        &["WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=128"],
    )?;
    targets.push(Target {
        role: Role::ShimReuse,
        name: "wasmtime shim, instance reuse 128".into(),
        addr: reuse_addr,
        pid: reuse_pid,
        stop: Box::new(|| {}),
    });
    targets.push(Target {
        role: Role::ShimP3,
        name: "wasmtime shim, WASIp3 component (defaults: reuse 128, 16 at once)".into(),
        addr: p3_addr,
        pid: p3_pid,
        stop: Box::new(|| {}),
    });
    if let Some(wasmtime) = wasmtime {
        let addr = http::free_addr();
        let mut serve = Command::new(wasmtime);
        serve
            // -Scli: the component is Rust std, which imports wasi:cli (environment, exit).
            .args(["serve", "-Scli", "--addr", &addr.to_string()])
            .arg(&component);
        targets.push(spawn_process(
            Role::WasmtimeServe,
            "`wasmtime serve -Scli` 48 (otherwise defaults)",
            serve,
            addr,
        )?);
        // The shim's settings: wasmtime's pooling allocator, then also reuse.
        for (role, name, extra) in [
            (
                Role::WasmtimeServePooling,
                "`wasmtime serve -Scli -O pooling-allocator=y` 48",
                &[][..],
            ),
            (
                Role::WasmtimeServeReuse,
                "`wasmtime serve -Scli -O pooling-allocator=y --max-instance-reuse-count 128` 48",
                &["--max-instance-reuse-count", "128"][..],
            ),
        ] {
            let addr = http::free_addr();
            let mut serve = Command::new(wasmtime);
            serve
                .args(["serve", "-Scli", "-O", "pooling-allocator=y"])
                .args(extra)
                .args(["--addr", &addr.to_string()])
                .arg(&component);
            targets.push(spawn_process(role, name, serve, addr)?);
        }
        let addr = http::free_addr();
        let mut serve = Command::new(wasmtime);
        serve
            .args(["serve", "-Scli", "-Sp3", "-Wcomponent-model-async"])
            .args(["-O", "pooling-allocator=y", "--addr", &addr.to_string()])
            .arg(&p3_component);
        targets.push(spawn_process(
            Role::WasmtimeServeP3,
            "`wasmtime serve -Scli -Sp3 -Wcomponent-model-async -O pooling-allocator=y` 48, WASIp3 component",
            serve,
            addr,
        )?);
    }
    if let Some(work) = request_cost.as_deref().and_then(total_micros) {
        let addr = http::free_addr();
        let mut native = Command::new(workspace().join("target/release/hello-server"));
        native.arg(addr.to_string()).arg(format!("{work:.2}"));
        targets.push(spawn_process(
            Role::NativeWithWork,
            &format!("native hyper + {work:.1} µs of CPU per request (calibration)"),
            native,
            addr,
        )?);
    }
    // The reusing guests' memory after 1000 requests, one after another, and after the load
    // (hundreds of thousands more): what a long-lived instance accumulates.
    let reusing: Vec<(String, SocketAddr, u32)> = targets
        .iter()
        .filter(|t| matches!(t.role, Role::ShimReuse | Role::ShimP3))
        .filter_map(|t| Some((t.name.clone(), t.addr, t.pid?)))
        .collect();
    let mut pss = Vec::new();
    let mut served = vec![0u64; targets.len()];
    for (name, addr, pid) in &reusing {
        for _ in 0..1000 {
            http::get(*addr, "/").with_context(|| format!("1000 requests to {name}"))?;
        }
        let when = "after 1000 requests one after another".to_string();
        pss.push((name.clone(), when, pss_kib(*pid).unwrap_or(0)));
    }
    // Warm every server (compiled code, pools, connections) before measuring.
    for (i, t) in targets.iter().enumerate() {
        served[i] += wrk(t.addr, 2)
            .with_context(|| format!("warm up {}", t.name))?
            .requests;
    }
    let mut results: Vec<(Role, String, Vec<Load>)> = targets
        .iter()
        .map(|t| (t.role, t.name.clone(), Vec::new()))
        .collect();
    for _ in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let before = t.pid.and_then(cpu_time);
            let mut load = wrk(t.addr, seconds).with_context(|| format!("load {}", t.name))?;
            let after = t.pid.and_then(cpu_time);
            if let (Some(before), Some(after)) = (before, after)
                && load.requests > 0
            {
                load.cpu_per_request =
                    Some(after.saturating_sub(before).div_f64(load.requests as f64));
            }
            served[i] += load.requests;
            results[i].2.push(load);
        }
    }
    for (name, _, pid) in &reusing {
        let i = targets.iter().position(|t| &t.name == name).unwrap_or(0);
        let when = format!("after {} requests (the load)", 1000 + served[i]);
        pss.push((name.clone(), when, pss_kib(*pid).unwrap_or(0)));
    }
    // Once the load's instances have idled out (the idle timeout is 1 s), 1000 requests one
    // after another again: one instance lives, as at the first reading, so what the guest
    // keeps beyond that is what the load left behind.
    std::thread::sleep(Duration::from_secs(3));
    for (name, addr, pid) in &reusing {
        for _ in 0..1000 {
            http::get(*addr, "/").with_context(|| format!("1000 more requests to {name}"))?;
        }
        let when = "after the load, 3 s idle, then 1000 requests one after another".to_string();
        pss.push((name.clone(), when, pss_kib(*pid).unwrap_or(0)));
    }
    let guest_rss_kib = guest_pid.and_then(rss_kib);
    drop(targets);
    remove_shim(&c, &reuse_id, "SIGKILL").context("the reuse server's task did not stop")?;
    remove_shim(&c, &p3_id, "SIGTERM").context("the WASIp3 server's task did not stop")?;
    remove_shim(&c, &id, "SIGTERM").context("the shim's task did not stop on SIGTERM")?;
    Ok(Serving {
        rounds: results,
        wrk: wrk_command(shim_addr, seconds).join(" "),
        guest_rss_kib,
        pss,
        request_cost,
    })
}

/// Runs the example image as container `id` serving on the host's network with `env`; returns
/// its address once it listens, and its guest's pid.
fn run_shim(
    c: &Containerd,
    image: &str,
    id: &str,
    env: &[&str],
) -> Result<(SocketAddr, Option<u32>)> {
    let addr = http::free_addr();
    let listen = format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}");
    let mut args = vec!["run", "-d", "--net-host", "--env", listen.as_str()];
    for e in env {
        args.extend(["--env", e]);
    }
    args.extend(["--runtime", RUNTIME, image, id]);
    c.ctr_ok(&args)?;
    http::wait_listening(addr, Duration::from_secs(30))?;
    let pid = c
        .ctr_ok(&["tasks", "ls"])?
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    Ok((addr, pid))
}

/// Stops container `id` with `signal`, then deletes its task and the container.
fn remove_shim(c: &Containerd, id: &str, signal: &str) -> Result<()> {
    c.ctr_ok(&["tasks", "kill", "--signal", signal, id])?;
    crate::containerd::wait_for(Duration::from_secs(10), || {
        c.ctr(&["tasks", "delete", id])
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })
    .context("not stopped within 10 s")?;
    c.ctr_ok(&["containers", "delete", id])?;
    Ok(())
}

/// Runs the runtime's `request_cost` example (built by `scripts/bench.sh`) on `component`'s
/// hello route; `None` when it is not built.
fn request_cost(component: &std::path::Path) -> Result<Option<String>> {
    let tool = workspace().join("target/release/examples/request_cost");
    if !tool.exists() {
        return Ok(None);
    }
    let out = Command::new(&tool)
        .arg(component)
        .args(["/", "20000"])
        .output()
        .context("run request_cost")?;
    ensure!(
        out.status.success(),
        "request_cost: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// The `total=` figure of a `request_cost` report, in microseconds.
pub fn total_micros(report: &str) -> Option<f64> {
    report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

/// User and system CPU time of process `pid` (all its threads) so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// A process's proportional set size (its share of shared pages counted once), in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let report = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 50 connections\n\
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   412.34us  1.02ms  30.12ms   95.12%\n\
            Latency Distribution\n     50%  301.00us\n     75%  402.00us\n     90%  601.00us\n     99%    2.10ms\n\
            1234567 requests in 10.00s, 150.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 2\n\
            Non-2xx or 3xx responses: 7\nRequests/sec: 123456.78\nTransfer/sec:     15.00MB\n";
        let load = parse_wrk(report).unwrap();
        assert_eq!(load.requests_per_sec, 123456.78);
        assert_eq!(load.p50, Duration::from_micros(301));
        assert_eq!(load.p99, Duration::from_micros(2100));
        assert_eq!(load.errors, 12);
        assert_eq!(load.requests, 1234567);
    }

    #[test]
    fn reads_the_request_cost_total() {
        let report = "requests=10 setup=1.30 instantiate=7.77 handle=5.46 reset=4.32 total=18.86";
        assert_eq!(total_micros(report), Some(18.86));
        assert_eq!(total_micros("requests=10"), None);
    }

    #[test]
    fn reads_this_process_cpu_time() {
        // The kernel's own count of this process's CPU time, to compare with.
        let process_cpu = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec it is given.
            assert_eq!(
                unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) },
                0
            );
            Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
        };
        let before = cpu_time(std::process::id()).unwrap();
        let start = process_cpu();
        let mut x = 0u64;
        while process_cpu() - start < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spent = cpu_time(std::process::id()).unwrap() - before;
        // /proc counts in clock ticks (10 ms here): allow a few.
        assert!(spent >= Duration::from_millis(150), "{spent:?}");
    }
}
