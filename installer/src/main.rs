//! wasmtime-shim-installer: puts the wasmtime shim on a node and registers it with containerd.
//!
//! ```text
//! wasmtime-shim-installer install   [--root /host] [--dry-run] [--restart auto|systemd|never] ...
//! wasmtime-shim-installer uninstall [--root /host] [--dry-run] ...
//! ```

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;
use wasmtime_shim_installer::containerd::Restart;
use wasmtime_shim_installer::kube::Cluster;
use wasmtime_shim_installer::{Options, Outcome, install, uninstall};

#[derive(Parser)]
#[command(
    version,
    about = "Installs the wasmtime containerd shim on a Kubernetes node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy the shim, register the runtime handler, restart containerd if that changed it.
    Install {
        #[command(flatten)]
        common: Common,
        /// The shim binary to install.
        #[arg(long, default_value = "/opt/wasmtime-shim/containerd-shim-wasmtime-v1")]
        shim: PathBuf,
        /// `options.SystemdCgroup` of the handler; by default the same as the runc handler's.
        #[arg(long, value_enum, default_value_t = CgroupDriver::Auto)]
        cgroup_driver: CgroupDriver,
        /// After installing, wait for SIGTERM (the DaemonSet's container stays running).
        #[arg(long)]
        stay: bool,
    },
    /// Take back exactly what `install` did; the configuration ends byte-identical.
    Uninstall {
        #[command(flatten)]
        common: Common,
        /// After uninstalling, wait for SIGTERM (the DaemonSet's container stays running).
        #[arg(long)]
        stay: bool,
    },
}

#[derive(Args)]
struct Common {
    /// Where the host's root file system is mounted (the DaemonSet mounts it at /host).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// containerd's configuration file (a host path, as are the paths below).
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    config: PathBuf,
    /// Where the shim binary goes; containerd must find it on its PATH.
    #[arg(long, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// Where the installer keeps its backups and the record of what it changed.
    #[arg(long, default_value = "/var/lib/wasmtime-shim-installer")]
    state_dir: PathBuf,
    /// The drop-in file (version 3 configurations) [default: <config dir>/conf.d/wasmtime-shim.toml].
    #[arg(long)]
    dropin: Option<PathBuf>,
    /// The containerd binary [default: the first of /usr/local/bin, /usr/bin, ...].
    #[arg(long)]
    containerd_bin: Option<PathBuf>,
    /// containerd's socket [default: grpc.address from the configuration].
    #[arg(long)]
    address: Option<PathBuf>,
    /// The CRI runtime handler (RuntimeClass `handler`).
    #[arg(long, default_value = "wasmtime")]
    handler: String,
    /// How to restart containerd when its configuration changed: `auto` is systemd when the
    /// host runs it, else a refusal (before anything changes) asking for one of the others.
    #[arg(long, value_enum, default_value_t = RestartKind::Auto)]
    restart: RestartKind,
    /// A shell command, run in the host root, that restarts containerd (e.g. for OpenRC:
    /// `rc-service containerd restart`). Implies --restart=command.
    #[arg(long)]
    restart_command: Option<String>,
    /// The systemd unit to restart.
    #[arg(long, default_value = "containerd")]
    unit: String,
    /// Seconds to wait for containerd to answer after the restart.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// Print the changes (a diff of each file) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RestartKind {
    Auto,
    Systemd,
    Command,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum CgroupDriver {
    Auto,
    Systemd,
    Cgroupfs,
}

impl Common {
    fn options(self, shim: PathBuf, systemd_cgroup: Option<bool>) -> Result<Options> {
        let restart = match (self.restart, self.restart_command) {
            (RestartKind::Auto | RestartKind::Command, Some(c)) => Restart::Command(c),
            (RestartKind::Command, None) => {
                anyhow::bail!("--restart=command needs --restart-command")
            }
            (_, Some(_)) => anyhow::bail!("--restart-command goes with --restart=command"),
            (RestartKind::Auto, None) => Restart::Auto,
            (RestartKind::Systemd, None) => Restart::Systemd,
            (RestartKind::Never, None) => Restart::Never,
        };
        Ok(Options {
            root: self.root,
            config: self.config,
            bin_dir: self.bin_dir,
            state_dir: self.state_dir,
            dropin: self.dropin,
            containerd_bin: self.containerd_bin,
            address: self.address,
            shim,
            handler: self.handler,
            systemd_cgroup,
            restart,
            unit: self.unit,
            ready_timeout: Duration::from_secs(self.ready_timeout),
            dry_run: self.dry_run,
            cluster: if self.dry_run {
                None
            } else {
                Cluster::in_cluster()?
            },
        })
    }
}

fn report(out: &Outcome, dry_run: bool) {
    print!("{}", out.diff);
    let verb = if dry_run { "would " } else { "" };
    for c in &out.changes {
        println!("{verb}{c}");
    }
    for w in &out.warnings {
        println!("note: {w}");
    }
    if let Some(v) = &out.ready {
        println!("containerd {v} is ready");
    }
    if !out.changed() {
        println!("nothing to change");
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Install {
            common,
            shim,
            cgroup_driver,
            stay,
        } => {
            let dry_run = common.dry_run;
            let systemd = match cgroup_driver {
                CgroupDriver::Auto => None,
                CgroupDriver::Systemd => Some(true),
                CgroupDriver::Cgroupfs => Some(false),
            };
            let out = install(&common.options(shim, systemd)?)?;
            report(&out, dry_run);
            if stay {
                wait_for_sigterm()?;
            }
        }
        Command::Uninstall { common, stay } => {
            let dry_run = common.dry_run;
            let out = uninstall(&common.options(PathBuf::new(), None)?)?;
            report(&out, dry_run);
            if stay {
                wait_for_sigterm()?;
            }
        }
    }
    Ok(())
}

/// Blocks until SIGTERM or SIGINT (the pod is deleted); the installation stays.
fn wait_for_sigterm() -> Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block()?;
    set.wait()?;
    Ok(())
}
