//! soak: the soak and fault harness. Runs the shim through long and hostile workloads on a
//! private containerd, checks after every step that nothing was left behind, and prints a
//! Markdown report; exits 1 if any step failed (a leak, a wrong exit status, an unclear error).
//!
//! ```text
//! soak [--quick] [--cycles N] [--parallel N] [--rounds N] [--containerd-rounds N]
//!      [--shim-rounds N] [--flood-secs N] [--only STEP,...] [--containerd 1.6|1.7|2.1]
//! ```
//! Steps: `cycles`, `parallel`, `containerd-kill`, `shim-kill`, `hostile`. Without `--quick`
//! the sizes are the full form (1000 cycles, 100 parallel, 20 rounds each). Run it through
//! `scripts/soak.sh`, which builds the shim and the example images first. As root.

use anyhow::{Context, Result, bail};
use std::process::Command;
use std::time::Instant;
use wasmtime_shim_tests::containerd::Version;
use wasmtime_shim_tests::soak::pod::PodNode;
use wasmtime_shim_tests::soak::report::{self, Section};
use wasmtime_shim_tests::soak::{Sizes, cache, cycles, escape, faults, flood, programs};

const STEPS: [&str; 5] = [
    "cycles",
    "parallel",
    "containerd-kill",
    "shim-kill",
    "hostile",
];

struct Options {
    sizes: Sizes,
    only: Vec<String>,
    version: Version,
    quick: bool,
}

fn options() -> Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        sizes: if quick { Sizes::QUICK } else { Sizes::FULL },
        only: STEPS.iter().map(|s| s.to_string()).collect(),
        version: Version::V1_6,
        quick,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--cycles" => o.sizes.cycles = number()?,
            "--parallel" => o.sizes.parallel = number()?,
            "--rounds" => {
                o.sizes.containerd_rounds = number()?;
                o.sizes.shim_rounds = number()?;
            }
            "--containerd-rounds" => o.sizes.containerd_rounds = number()?,
            "--shim-rounds" => o.sizes.shim_rounds = number()?,
            "--flood-secs" => o.sizes.flood_secs = number()? as u64,
            "--only" => {
                o.only = value.split(',').map(str::to_string).collect();
                if let Some(bad) = o.only.iter().find(|s| !STEPS.contains(&s.as_str())) {
                    bail!("unknown step {bad}; steps: {}", STEPS.join(", "));
                }
            }
            "--containerd" => {
                o.version = match value.as_str() {
                    "1.6" => Version::V1_6,
                    "1.7" => Version::V1_7,
                    "2.1" => Version::V2_1,
                    other => bail!("--containerd {other}: one of 1.6, 1.7, 2.1"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(o)
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A pod's sections, then its removal as a section of its own.
fn pod_sections(
    o: &Options,
    name: &str,
    examples: &[&str],
    steps: Vec<(String, PodStep<'_>)>,
    out: &mut Vec<Section>,
) {
    let node = match PodNode::start(o.version, name, examples) {
        Ok(node) => node,
        Err(err) => {
            out.push(report::run(&format!("{name}: start the pod"), |_| Err(err)));
            return;
        }
    };
    for (title, step) in steps {
        out.push(report::run(&title, |s| step(&node, s)));
    }
    out.push(report::run(&format!("{name}: RemovePodSandbox"), |s| {
        s.leaks("after RemovePodSandbox", node.remove_pod()?);
        s.row(
            "pod processes, network namespace, cgroups, mounts, state files",
            "checked",
        );
        Ok(())
    }));
}

type PodStep<'a> = Box<dyn FnOnce(&PodNode, &mut Section) -> Result<()> + 'a>;

fn main() -> Result<()> {
    let o = options()?;
    let z = o.sizes.clone();
    let started = Instant::now();
    let mut sections = Vec::new();
    let want = |step: &str| o.only.iter().any(|s| s == step);

    let mut soak: Vec<(String, PodStep<'_>)> = Vec::new();
    if want("cycles") {
        soak.push((
            format!("{} sequential cycles in one pod (CRI)", z.cycles),
            Box::new(move |p, s| {
                let image = "localhost/wasmtime-shim/exit-code:latest";
                cycles::sequential(p, image, z.cycles, s)
            }),
        ));
    }
    if want("parallel") {
        soak.push((
            format!("{} containers at once in one pod (CRI)", z.parallel),
            Box::new(move |p, s| {
                let image = "localhost/wasmtime-shim/sleeper:latest";
                cycles::parallel(p, image, z.parallel, s)
            }),
        ));
    }
    if !soak.is_empty() {
        pod_sections(&o, "soak", &["exit-code", "sleeper"], soak, &mut sections);
    }
    if want("containerd-kill") {
        let title = format!(
            "containerd killed (SIGKILL) under 10 guests, {} rounds",
            z.containerd_rounds
        );
        sections.push(report::run(&title, |s| {
            faults::containerd_kills(o.version, z.containerd_rounds, s)
        }));
    }
    if want("shim-kill") {
        let title = format!(
            "shims killed (SIGKILL) under 10 guests, {} rounds",
            z.shim_rounds
        );
        sections.push(report::run(&title, |s| {
            faults::shim_kills(o.version, z.shim_rounds, s)
        }));
    }
    if want("hostile") {
        let secs = z.flood_secs;
        let steps: Vec<(String, PodStep<'_>)> = vec![
            (
                "hostile: programs that cannot run".into(),
                Box::new(programs::bad_programs),
            ),
            (
                "hostile: 1 GiB memory.grow bomb".into(),
                Box::new(programs::memory_bomb),
            ),
            (
                format!("hostile: stdout flood for {secs} s"),
                Box::new(move |p, s| flood::flood(p, secs, s)),
            ),
            (
                "hostile: corrupt compile-cache entries".into(),
                Box::new(|p, s| cache::corrupt_entries(&p.c, s)),
            ),
            (
                "hostile: cgroupsPath escapes".into(),
                Box::new(|p, s| escape::cgroups_path(&p.c, s)),
            ),
            (
                "hostile: mount destination escapes".into(),
                Box::new(|p, s| escape::mount_destinations(&p.c, s)),
            ),
        ];
        pod_sections(&o, "hostile", &["hello"], steps, &mut sections);
    }

    let failed: usize = sections.iter().map(|s| s.failures.len()).sum();
    println!("# Soak and fault report\n");
    println!("| | |\n|---|---|");
    println!(
        "| form | {} |",
        if o.quick {
            "quick (`--quick`)"
        } else {
            "sizes as given (full form by default)"
        }
    );
    println!(
        "| sizes | {} cycles, {} parallel, {} containerd rounds, {} shim rounds, {} s flood |",
        z.cycles, z.parallel, z.containerd_rounds, z.shim_rounds, z.flood_secs
    );
    println!(
        "| containerd | {} |",
        command_output(&o.version.binary().to_string_lossy(), &["--version"])
    );
    println!(
        "| kernel / cgroups | {} / {} |",
        command_output("uname", &["-r"]),
        if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        }
    );
    println!(
        "| date | {} |",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    println!("| wall time | {:.0} s |", started.elapsed().as_secs_f64());
    println!(
        "| result | {} |\n",
        if failed == 0 {
            "pass".to_string()
        } else {
            format!("**FAIL** ({failed} failures)")
        }
    );
    println!("| section | result | s |\n|---|---|---|");
    for s in &sections {
        let verdict = if s.passed() && !s.known.is_empty() {
            format!("pass ({} known-defect findings)", s.known.len())
        } else if s.passed() {
            "pass".to_string()
        } else {
            format!("**FAIL** ({})", s.failures.len())
        };
        println!("| {} | {verdict} | {:.1} |", s.title, s.took.as_secs_f64());
    }
    println!();
    for s in &sections {
        print!("{}", s.markdown());
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
