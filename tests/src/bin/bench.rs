//! bench: start-time, kill-latency and large-module measurements of the shim against a runc
//! baseline measured in the same run, on a private containerd 1.6. Prints a Markdown report.
//!
//! Run through `scripts/bench.sh` (builds everything, installs the baseline's busybox).

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmtime_shim_tests::containerd::{ALL, Containerd, RUNTIME, Version, wait_for};
use wasmtime_shim_tests::density::{self, Density};
use wasmtime_shim_tests::image::Image;
use wasmtime_shim_tests::serving::Role;
use wasmtime_shim_tests::throughput::{self, Workload};
use wasmtime_shim_tests::{artifacts, mixed_bench, pods, serving};

const RUNS: usize = 20;

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, s: &Stats) -> String {
    format!(
        "| {name} | {} | {} | {} |",
        ms(s.median),
        ms(s.min),
        ms(s.max)
    )
}

/// Wall time of `ctr run --rm [runtime] image id`, which must print `expect`.
fn timed_run(
    c: &Containerd,
    runtime: Option<&str>,
    image: &str,
    id: &str,
    expect: &str,
) -> Result<Duration> {
    let mut args = vec!["run", "--rm"];
    if let Some(r) = runtime {
        args.extend(["--runtime", r]);
    }
    args.extend([image, id]);
    let start = Instant::now();
    let out = c.ctr(&args)?;
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout != expect {
        bail!(
            "{image}: {stdout:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

/// A module of about `mb` megabytes of code that prints "big\n".
fn big_module(mb: usize) -> Result<Vec<u8>> {
    let funcs = mb * 1000;
    let mut wat = String::with_capacity(mb * 8_000_000);
    wat.push_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "\10\00\00\00\04\00\00\00") (data (i32.const 16) "big\n")
        (func (export "_start") (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
          (drop (call $f0 (i32.const 1))))"#,
    );
    for i in 0..funcs {
        wat.push_str(&format!("(func $f{i} (param i32) (result i32)"));
        for k in 0..130 {
            wat.push_str(&format!(
                " local.get 0 i32.const {} i32.add local.set 0",
                i * 131 + k
            ));
        }
        wat.push_str(" local.get 0)");
    }
    wat.push(')');
    wat::parse_str(&wat).context("assemble the large module")
}

fn import(c: &Containerd, dir: &Path, image: Image) -> Result<String> {
    let tar = dir.join("image.tar");
    image.write(&tar)?;
    c.import(&tar)?;
    Ok(image.name)
}

fn shim_uptimes(log: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains("shim exiting"))
        .filter_map(|l| {
            l.split("uptime_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .map(Duration::from_micros)
        .collect()
}

/// The shim's own work for container `id`, from its log lines: the Create and Delete handlers
/// (`took_us`) and the guest's run, from Start's reply to its exit being reaped.
fn shim_work(log: &str, id: &str) -> Option<[Duration; 3]> {
    let line = |needle: &str| log.lines().find(|l| l.contains(needle));
    let took = |l: &str| -> Option<Duration> {
        let us = l.split("took_us=").nth(1)?.split_whitespace().next()?;
        Some(Duration::from_micros(us.parse().ok()?))
    };
    // `2026-11-22T01:41:59.421450Z ...`: seconds into the day.
    let at = |l: &str| -> Option<f64> {
        let time = l
            .split_whitespace()
            .next()?
            .split('T')
            .nth(1)?
            .trim_end_matches('Z');
        let mut parts = time.split(':');
        let (h, m, s): (f64, f64, f64) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let create = took(line(&format!("create{{id={id}}}: created"))?)?;
    let delete = took(line(&format!("delete{{id={id}}}: deleted"))?)?;
    let started = at(line(&format!("start{{id={id}}}: started"))?)?;
    let exited = at(line(&format!("guest exited id=\"{id}\""))?)?;
    let run = Duration::from_secs_f64((exited - started).max(0.0));
    Some([create, run, delete])
}

/// Prints the end of containerd's log (the shim's lines included), to explain a failure.
fn log_tail(c: &Containerd) {
    let log = c.log();
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("--- containerd log (last 80 lines)");
    for line in &lines[lines.len().saturating_sub(80)..] {
        eprintln!("{line}");
    }
}

fn main() -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: apt-get install busybox-static");
    }
    let c = Containerd::start(Version::V1_6)?;
    let dir = tempfile::tempdir()?;
    if std::env::args().nth(1).as_deref() == Some("throughput") {
        let (rates, shims) = throughput_section(&c, dir.path()).inspect_err(|_| log_tail(&c))?;
        print_throughput(rates, shims);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("http") {
        drop(c);
        print_serving(&serving_section()?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("artifacts") {
        drop(c);
        print_artifacts(&artifacts_section()?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("pods") {
        drop(c);
        print_pods(&pods_section()?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("mixed") {
        drop(c);
        mixed_bench::print(&mixed_section()?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("density") {
        let n = std::env::args()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(DENSITY);
        let (wasm, runc) = density_section(&c, dir.path(), n).inspect_err(|_| log_tail(&c))?;
        print_density(&wasm, &runc);
        return Ok(());
    }
    let hello = c.import_example("hello")?;
    let native = import(
        &c,
        dir.path(),
        Image::new("localhost/bench/busybox-echo:latest")
            .file("/bin/busybox", std::fs::read(busybox)?)
            .entrypoint(&["/bin/busybox", "echo", "Hello from WebAssembly!"]),
    )?;
    let greeting = "Hello from WebAssembly!\n";

    // 1. Start to exit, alternating, after one warm-up each (the first Wasm start compiles).
    timed_run(&c, Some(RUNTIME), &hello, "warm-wasm", greeting)?;
    timed_run(&c, None, &native, "warm-runc", greeting)?;
    let log_before = shim_uptimes(&c.log()).len();
    let (mut wasm, mut runc) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        wasm.push(timed_run(
            &c,
            Some(RUNTIME),
            &hello,
            &format!("wasm-{i}"),
            greeting,
        )?);
        runc.push(timed_run(
            &c,
            None,
            &native,
            &format!("runc-{i}"),
            greeting,
        )?);
    }
    let uptimes: Vec<Duration> = wait_for(Duration::from_secs(5), || {
        let u = shim_uptimes(&c.log());
        (u.len() >= log_before + RUNS).then(|| u[log_before..].to_vec())
    })
    .context("shim exit lines missing from containerd's log")?;
    let log = c.log();
    let work: Vec<[Duration; 3]> = (0..RUNS)
        .filter_map(|i| shim_work(&log, &format!("wasm-{i}")))
        .collect();
    anyhow::ensure!(work.len() == RUNS, "shim log lines missing");
    let part = |k: usize| stats(work.iter().map(|w| w[k]).collect());
    let own = stats(work.iter().map(|w| w.iter().sum()).collect());
    let (create, run, delete) = (part(0), part(1), part(2));
    let (wasm, runc, uptime) = (stats(wasm), stats(runc), stats(uptimes));

    // 2. Kill latency: SIGTERM to a busy-looping guest until `ctr run` returns.
    let busy = c.import_example("busy-loop")?;
    let mut kills = Vec::new();
    for i in 0..10 {
        let id = format!("kill-{i}");
        let mut run = c
            .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &busy, &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for(Duration::from_secs(10), || {
            c.ctr_ok(&["tasks", "ls"])
                .ok()?
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
                .then_some(())
        })
        .context("busy loop did not start")?;
        let start = Instant::now();
        let status = Command::new(c.ctr_command(&[]).get_program())
            .args([
                "--address",
                &c.socket().to_string_lossy(),
                "tasks",
                "kill",
                "--signal",
                "SIGTERM",
                &id,
            ])
            .status()?;
        if !status.success() {
            bail!("kill failed");
        }
        run.wait()?;
        kills.push(start.elapsed());
    }
    let kills = stats(kills);

    // 3. A large module: first start (compiles) against cached starts.
    let big = big_module(5)?;
    let big_size = big.len();
    let big_image = import(
        &c,
        dir.path(),
        Image::new("localhost/bench/big:latest")
            .file("/big.wasm", big)
            .entrypoint(&["/big.wasm"]),
    )?;
    let cold = timed_run(&c, Some(RUNTIME), &big_image, "big-cold", "big\n")?;
    let mut warm = Vec::new();
    let mut hello_warm = Vec::new();
    for i in 0..10 {
        warm.push(timed_run(
            &c,
            Some(RUNTIME),
            &big_image,
            &format!("big-{i}"),
            "big\n",
        )?);
        hello_warm.push(timed_run(
            &c,
            Some(RUNTIME),
            &hello,
            &format!("hello-{i}"),
            greeting,
        )?);
    }
    let (warm, hello_warm) = (stats(warm), stats(hello_warm));

    let (rates, shims) = throughput_section(&c, dir.path()).inspect_err(|_| log_tail(&c))?;
    let (dense_wasm, dense_runc) =
        density_section(&c, dir.path(), DENSITY).inspect_err(|_| log_tail(&c))?;
    let pod_starts = pods_section()?;
    let mixed = mixed_section()?;
    let artifacts = artifacts_section()?;
    let serving = serving_section()?;

    let ratio = wasm.median.as_secs_f64() / runc.median.as_secs_f64();
    println!("## Start to exit: `ctr run --rm`, {RUNS} alternating runs each (ms)\n");
    println!("| what | median | min | max |\n|---|---|---|---|");
    println!("{}", row("wasmtime shim, hello (WAT module)", &wasm));
    println!("{}", row("runc, static busybox `echo`", &runc));
    println!("{}", row("shim process lifetime (own timestamps)", &uptime));
    println!(
        "{}",
        row("… of which the shim's own work (the 3 below)", &own)
    );
    println!("{}", row("… Create handler", &create));
    println!("{}", row("… guest run: Start → exit reaped", &run));
    println!("{}", row("… Delete handler", &delete));
    println!("\n**ratio shim/runc (medians): {ratio:.2}**\n");
    println!("## Kill latency: SIGTERM to a busy-looping guest → `ctr run` returns (ms)\n");
    println!("| what | median | min | max |\n|---|---|---|---|");
    println!(
        "{}",
        row(
            "`ctr tasks kill` spawn + kill + exit seen by `ctr run`",
            &kills
        )
    );
    println!(
        "\n## Large module ({:.1} MB of Wasm)\n",
        big_size as f64 / 1e6
    );
    println!("| what | median | min | max |\n|---|---|---|---|");
    println!("| first start (compiles) | {} | | |", ms(cold));
    println!("{}", row("cached start, large module", &warm));
    println!("{}", row("cached start, hello", &hello_warm));
    print_throughput(rates, shims);
    print_density(&dense_wasm, &dense_runc);
    print_pods(&pod_starts);
    mixed_bench::print(&mixed);
    print_artifacts(&artifacts);
    print_serving(&serving);
    Ok(())
}

const ARTIFACT_ROUNDS: usize = 7;

const SERVING_ROUNDS: usize = 3;
const SERVING_SECONDS: u32 = 10;

/// The HTTP benchmark. `wasmtime serve` is measured when the CLI is at `$WASMTIME_CLI` or on
/// `PATH` (the benchmark's own install: `cargo install wasmtime-cli --version 48.0.8`).
fn serving_section() -> Result<serving::Serving> {
    let cli = std::env::var_os("WASMTIME_CLI")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("wasmtime"))
                    .find(|p| p.is_file())
            })
        });
    serving::measure(SERVING_ROUNDS, SERVING_SECONDS, cli.as_deref())
}

fn print_serving(r: &serving::Serving) {
    let median = |loads: &[serving::Load], f: fn(&serving::Load) -> f64| {
        let mut v: Vec<f64> = loads.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\n## HTTP serving: the example component's hello route, `{}`, \
         {SERVING_ROUNDS} alternating rounds\n",
        r.wrk
    );
    println!(
        "| server | requests/s (median) | p50 (ms) | p99 (ms) | errors | server CPU per request (µs, median) | requests/s per round |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rates = Vec::new();
    for (role, name, loads) in &r.rounds {
        let rps = median(loads, |l| l.requests_per_sec);
        rates.push((*role, rps));
        let cpu = if loads.iter().all(|l| l.cpu_per_request.is_some()) {
            format!(
                "{:.1}",
                median(loads, |l| l
                    .cpu_per_request
                    .map_or(0.0, |d| d.as_secs_f64() * 1e6))
            )
        } else {
            "-".into()
        };
        println!(
            "| {name} | {rps:.0} | {:.2} | {:.2} | {} | {cpu} | {} |",
            median(loads, |l| l.p50.as_secs_f64() * 1e3),
            median(loads, |l| l.p99.as_secs_f64() * 1e3),
            loads.iter().map(|l| l.errors).sum::<u64>(),
            loads
                .iter()
                .map(|l| format!("{:.0}", l.requests_per_sec))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let rate = |role| rates.iter().find(|(r, _)| *r == role).map(|(_, rps)| *rps);
    if let (Some(native), Some(shim)) = (rate(Role::Native), rate(Role::Shim)) {
        println!("\n**shim / native hyper (medians): {:.2}**", shim / native);
        match rate(Role::WasmtimeServe) {
            Some(serve) => println!("**shim / `wasmtime serve`: {:.2}**", shim / serve),
            None => println!("(`wasmtime serve` not measured: no wasmtime CLI found)"),
        }
        if let Some(serve) = rate(Role::WasmtimeServePooling) {
            println!(
                "**shim / `wasmtime serve` with the same settings (pooling allocator), fresh \
                 instances: {:.2}**",
                shim / serve
            );
        }
        if let (Some(reuse), Some(serve)) = (rate(Role::ShimReuse), rate(Role::WasmtimeServeReuse))
        {
            println!(
                "**shim / `wasmtime serve`, both with pooling and instance reuse 128: {:.2}**",
                reuse / serve
            );
        }
        if let Some(reuse) = rate(Role::ShimReuse) {
            println!(
                "**shim with instance reuse 128 / native hyper: {:.2}** (fresh instances: {:.2})",
                reuse / native,
                shim / native
            );
        }
        if let Some(p3) = rate(Role::ShimP3) {
            println!(
                "**shim, WASIp3 component with its defaults / native hyper: {:.2}**",
                p3 / native
            );
            if let Some(serve) = rate(Role::WasmtimeServeP3) {
                println!(
                    "**shim / `wasmtime serve`, WASIp3 component, both with p3 defaults and \
                     pooling: {:.2}**",
                    p3 / serve
                );
            }
        }
        if let Some(worked) = rate(Role::NativeWithWork) {
            println!(
                "**native hyper with the shim's in-process cost per request / native hyper: {:.2}**",
                worked / native
            );
        }
    }
    if let Some(kib) = r.guest_rss_kib {
        println!(
            "\nThe shim's guest process after the load: {:.1} MiB resident.",
            kib as f64 / 1024.0
        );
    }
    for (name, when, kib) in &r.pss {
        println!(
            "\n{name}: guest process PSS {:.1} MiB {when}.",
            *kib as f64 / 1024.0
        );
    }
    if let Some(cost) = &r.request_cost {
        println!(
            "\nOne request inside the shim's server, one after another on one thread, without a \
             network (mean µs per step, `target/release/examples/request_cost`): {cost}"
        );
    }
}

fn artifacts_section() -> Result<artifacts::ArtifactStarts> {
    artifacts::measure(&big_module(5)?, &big_module(10)?, ARTIFACT_ROUNDS)
}

fn print_artifacts(r: &artifacts::ArtifactStarts) {
    let (first, second, hello) = (
        stats(r.first.clone()),
        stats(r.second.clone()),
        stats(r.hello.clone()),
    );
    println!(
        "\n## Artifact starts through CRI (containerd 2.1): CreateContainer + StartContainer, \
         {ARTIFACT_ROUNDS} alternating rounds (ms)\n"
    );
    println!("| what | median | min | max |\n|---|---|---|---|");
    println!(
        "{}",
        row(
            &format!(
                "first start, {:.1} MB module as a CNCF artifact (compiles)",
                r.module_bytes as f64 / 1e6
            ),
            &first
        )
    );
    println!(
        "{}",
        row("second start, same artifact (node cache)", &second)
    );
    println!("{}", row("hello example (plain image, cached)", &hello));
    println!(
        "\n**second start / hello (medians): {:.2}**\n",
        second.median.as_secs_f64() / hello.median.as_secs_f64()
    );
    println!(
        "## `wasm-oci build --artifact --push` of a {:.1} MB module to the loopback registry (ms)\n",
        r.push_bytes as f64 / 1e6
    );
    println!("| what | median | min | max |\n|---|---|---|---|");
    println!(
        "{}",
        row(
            "validate + package + push (new repository)",
            &stats(r.pack_push.clone())
        )
    );
}

const POD_RUNS: usize = 15;

/// Pod start latency through CRI on each containerd, Wasm against runc.
fn pods_section() -> Result<Vec<pods::PodStarts>> {
    ALL.iter().map(|v| pods::measure(*v, POD_RUNS)).collect()
}

fn print_pods(results: &[pods::PodStarts]) {
    println!(
        "\n## Pod start through CRI (RunPodSandbox → container Running, {POD_RUNS} pods each, alternating)\n"
    );
    println!("| containerd | pod | median ms | min | max |");
    println!("|---|---|---|---|---|");
    for r in results {
        let (w, n) = (stats(r.wasm.clone()), stats(r.runc.clone()));
        println!(
            "{}",
            row(
                &format!("{:?} | Wasm (wasmtime handler, sleeper)", r.version),
                &w
            )
        );
        println!(
            "{}",
            row(
                &format!("{:?} | runc (static busybox sleep)", r.version),
                &n
            )
        );
        println!(
            "\n{:?}: Wasm / runc = **{:.2}** (target ≤ 1)\n",
            r.version,
            w.median.as_secs_f64() / n.median.as_secs_f64()
        );
    }
}

/// Mixed pods (a Wasm app and a native sidecar) against runc pods, and ExecSync, through CRI
/// on containerd 2.1.
fn mixed_section() -> Result<mixed_bench::Mixed> {
    mixed_bench::measure(Version::V2_1, MIXED_STARTS, MIXED_EXECS)
}

const MIXED_STARTS: usize = 15;
const MIXED_EXECS: usize = 30;

/// The pid of task `id`, from `ctr tasks ls`.
fn task_pid(c: &Containerd, id: &str) -> Result<i32> {
    let out = c.ctr_ok(&["tasks", "ls"])?;
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("no pid for task {id} in {out}"))
}

/// Idle containers in the density measurement.
const DENSITY: usize = 100;

/// `n` idle sleepers under the shim, then `n` idle busybox `sleep`s under runc.
fn density_section(c: &Containerd, dir: &Path, n: usize) -> Result<(Density, Density)> {
    let sleeper = c.import_example("sleeper")?;
    let busybox = import(
        c,
        dir,
        Image::new("localhost/bench/busybox-sleep:latest")
            .file("/bin/busybox", std::fs::read("/bin/busybox")?)
            .entrypoint(&["/bin/busybox", "sleep", "3600"]),
    )?;
    let wasm = density::measure(
        c,
        Some(RUNTIME),
        "containerd-shim-wasmtime",
        &sleeper,
        &[],
        "dense-wasm",
        n,
    )?;
    let runc = density::measure(
        c,
        None,
        "containerd-shim-runc",
        &busybox,
        &[],
        &format!("dense-runc-{}", std::process::id()),
        n,
    )?;
    Ok((wasm, runc))
}

fn print_density(wasm: &Density, runc: &Density) {
    let mib = |b: f64| format!("{:.2}", b / (1024.0 * 1024.0));
    println!(
        "\n## Density: {} idle containers, one shim each (`ctr run -d`)\n",
        wasm.containers
    );
    println!(
        "| what | PSS per container (MiB) | processes | start all (s) | cgroup memory per container (MiB) |"
    );
    println!("|---|---|---|---|---|");
    for (name, d) in [
        ("wasmtime shim, sleeper (shim + guest processes)", wasm),
        ("runc, busybox `sleep` (shim + process)", runc),
    ] {
        println!(
            "| {name} | {} | {} | {:.2} | {} |",
            mib(d.pss_per_container()),
            d.processes,
            d.start_all.as_secs_f64(),
            mib(d.cgroup_per_container())
        );
    }
    println!(
        "\n**PSS ratio shim/runc: {:.2}**",
        wasm.pss_per_container() / runc.pss_per_container()
    );
}

/// Cycles/s with 1 and 2 workers (shim, then runc), and how many shim processes served the pod.
/// (runtime, parallel workers, cycles per second)
type Rate = (
    &'static str,
    usize,
    f64,
    [std::time::Duration; throughput::STEPS.len()],
);

fn throughput_section(c: &Containerd, dir: &Path) -> Result<(Vec<Rate>, usize)> {
    // 4. Throughput: cycles through containerd's API, all in one pod (one shim), whose sandbox
    //    (a sleeping guest, as the pause container) keeps the shim alive between cycles.
    let hello_wasm = wat::parse_str(include_str!("../../../examples/wat/hello.wat"))?;
    let tp_image = Image::new("localhost/bench/hello-tp:latest")
        .file("/hello.wasm", hello_wasm)
        .entrypoint(&["/hello.wasm"]);
    let chain_id = tp_image.chain_id()?;
    let tp_name = import(c, dir, tp_image)?;
    let pod = "bench-pod";
    let sleeper = c.import_example("sleeper")?;
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &annotation,
        &sleeper,
        "bench-sandbox",
    ])?;
    let workload = Workload {
        image: tp_name,
        chain_id,
        args: vec!["/hello.wasm".into()],
        runtime: RUNTIME.into(),
        pod: pod.into(),
        sandbox_pid: task_pid(c, "bench-sandbox")?,
    };
    throughput::run(&c.socket(), &workload, 10, 1)?;
    let mut rates = Vec::new();
    for parallel in [1, 2] {
        let n = 300;
        let report = throughput::run(&c.socket(), &workload, n, parallel)?;
        rates.push((
            "wasmtime shim, hello",
            parallel,
            n as f64 / report.took.as_secs_f64(),
            report.steps,
        ));
    }
    let shims = c.shim_pids().len();
    remove_sandbox(c, "bench-sandbox")?;

    // The same cycles under runc (static busybox `true`): what containerd itself allows here.
    let native = Image::new("localhost/bench/busybox-true:latest")
        .file("/bin/busybox", std::fs::read("/bin/busybox")?)
        .entrypoint(&["/bin/busybox", "true"]);
    let mut runc = Workload {
        chain_id: native.chain_id()?,
        image: import(c, dir, native)?,
        args: vec!["/bin/busybox".into(), "true".into()],
        runtime: "io.containerd.runc.v2".into(),
        pod: "bench-runc-pod".into(),
        sandbox_pid: 0,
    };
    // runc's shim also serves a pod from one process, and exits when its last task goes: a
    // sleeping sandbox keeps it up, as for the Wasm pod.
    let runc_pod = format!("io.kubernetes.cri.sandbox-id={}", runc.pod);
    // runc keeps its state outside containerd's root (/run/containerd/runc): a unique id, and
    // the sandbox is deleted at the end.
    let sandbox = format!("bench-runc-sandbox-{}", std::process::id());
    c.ctr_ok(&[
        "run",
        "-d",
        "--annotation",
        &runc_pod,
        &runc.image,
        &sandbox,
        "/bin/busybox",
        "sleep",
        "3600",
    ])?;
    runc.sandbox_pid = task_pid(c, &sandbox)?;
    throughput::run(&c.socket(), &runc, 5, 1)?;
    for parallel in [1, 2] {
        let n = 100;
        let report = throughput::run(&c.socket(), &runc, n, parallel)?;
        rates.push((
            "runc, busybox `true` (baseline)",
            parallel,
            n as f64 / report.took.as_secs_f64(),
            report.steps,
        ));
    }
    remove_sandbox(c, &sandbox)?;
    Ok((rates, shims))
}

/// Kills and deletes a sandbox task and its container, so nothing of it (its cgroup, runc's
/// state) outlives the bench.
fn remove_sandbox(c: &Containerd, id: &str) -> Result<()> {
    c.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", id])?;
    wait_for(Duration::from_secs(5), || {
        c.ctr(&["tasks", "delete", id])
            .ok()
            .filter(|out| out.status.success())
    })
    .with_context(|| format!("delete the sandbox task {id}"))?;
    c.ctr_ok(&["containers", "delete", id])?;
    Ok(())
}

fn print_throughput(rates: Vec<Rate>, shims: usize) {
    println!(
        "\n## Throughput: create/start/wait/delete cycles through containerd's API, one pod\n"
    );
    println!("| runtime | parallel | cycles/s |\n|---|---|---|");
    for (runtime, parallel, rate, _) in &rates {
        println!("| {runtime} | {parallel} | {rate:.1} |");
    }
    println!("\nMean latency of each call in a cycle (ms):\n");
    let header: Vec<_> = rates.iter().map(|(r, p, ..)| format!("{r} ×{p}")).collect();
    println!("| call | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(rates.len()));
    for (i, step) in throughput::STEPS.iter().enumerate() {
        let cells: Vec<_> = rates
            .iter()
            .map(|r| format!("{:.2}", r.3[i].as_secs_f64() * 1e3))
            .collect();
        println!("| {step} | {} |", cells.join(" | "));
    }
    println!("\nshim processes serving the pod: {shims}");
}
