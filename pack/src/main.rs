//! wasm-oci: packages a WebAssembly module or component as an OCI image, writes it as an OCI
//! archive, and pushes archives to registries.
//!
//! ```text
//! wasm-oci build app.wasm -t registry.example/app:1.0 [--format image|artifact|component-layer|content-layer]
//!          [--artifact] [--native native.tar] [-o app.tar] [--arg A]... [--env K=V]...
//!          [--push [REGISTRY OPTIONS]]
//! wasm-oci push app.tar [-t registry.example/app:1.0] [REGISTRY OPTIONS]
//!
//! REGISTRY OPTIONS: [--plain-http] [--insecure]
//!                   [--username USER (--password PASS | --password-stdin)]
//! ```
//!
//! `--native` joins a native image (an OCI archive, e.g. linux/amd64 from `docker save` or
//! `ctr images export`) and the Wasm image under one index, so one tag serves runc and Wasm pods.
//! Without `--username`, `WASM_OCI_USERNAME` and `WASM_OCI_PASSWORD` are used when set, else the
//! registry is asked anonymously. The pushed reference and its digest go to stdout, progress to
//! stderr.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use wasm_oci::{CHUNKED_ABOVE, Format, Layout, Observer, Package, Progress, PushOptions, short};

#[derive(Parser)]
#[command(version, about = "Packages WebAssembly for OCI registries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the module and write an OCI archive (`ctr images import --platform wasi/wasm`
    /// reads it).
    Build {
        /// The .wasm module or component.
        wasm: PathBuf,
        /// The image reference, `registry/repository:tag`.
        #[arg(short = 't', long = "tag")]
        reference: String,
        /// What to build.
        #[arg(long, value_enum, default_value_t = FormatArg::Image, conflicts_with = "artifact")]
        format: FormatArg,
        /// The CNCF Wasm artifact: `--format artifact`.
        #[arg(long)]
        artifact: bool,
        /// An OCI archive of a native image to serve under the same tag: the output is an
        /// index of its manifests and the Wasm one.
        #[arg(long, value_name = "OCI_ARCHIVE")]
        native: Option<PathBuf>,
        /// The archive to write [default: <file stem>.tar].
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// All formats but the artifact: arguments after the entrypoint (`Cmd`).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// All formats but the artifact: `KEY=VALUE` environment entries.
        #[arg(long = "env")]
        env: Vec<String>,
        /// Push the image to the registry of its reference, too.
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Push an OCI archive (as `build` writes it) through the OCI distribution API.
    Push {
        /// The OCI archive.
        archive: PathBuf,
        /// Where to push [default: the image name in the archive].
        #[arg(short = 't', long = "tag")]
        reference: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// The module as a file in a tar layer (the shim runs it today).
    Image,
    /// The CNCF Wasm OCI artifact (application/wasm layer).
    Artifact,
    /// An image config and the component as a ...wasm.component.layer.v0+wasm layer.
    ComponentLayer,
    /// An image config and the module as a ...wasm.content.layer.v1+wasm layer.
    ContentLayer,
}

#[derive(Args)]
struct RegistryArgs {
    /// Talk plain HTTP to the registry (a local test registry).
    #[arg(long)]
    plain_http: bool,
    /// Accept any TLS certificate from the registry.
    #[arg(long)]
    insecure: bool,
    /// The registry user [default: $WASM_OCI_USERNAME].
    #[arg(long)]
    username: Option<String>,
    /// The password [default: $WASM_OCI_PASSWORD]; --password-stdin keeps it out of `ps`.
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    password_stdin: bool,
}

impl RegistryArgs {
    fn options(&self) -> Result<PushOptions> {
        let env = |name: &str| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let username = self.username.clone().or_else(|| env("WASM_OCI_USERNAME"));
        let password = if self.password_stdin {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("read the password from stdin")?;
            Some(password.trim_end_matches(['\r', '\n']).to_string())
        } else {
            self.password.clone().or_else(|| env("WASM_OCI_PASSWORD"))
        };
        let credentials = match (username, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            (Some(_), None) => bail!(
                "a user name needs a password: --password, --password-stdin or WASM_OCI_PASSWORD"
            ),
            (None, Some(_)) => {
                bail!("a password needs a user name: --username or WASM_OCI_USERNAME")
            }
        };
        Ok(PushOptions {
            plain_http: self.plain_http,
            insecure: self.insecure,
            credentials,
        })
    }
}

/// The library's errors on one line, causes included.
fn chain(err: wasm_oci::Error) -> anyhow::Error {
    anyhow::anyhow!(wasmtime_shim_runtime::error_chain(&err))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Build {
            wasm,
            reference,
            format,
            artifact,
            native,
            output,
            args,
            env,
            push: and_push,
            registry,
        } => {
            let bytes = std::fs::read(&wasm).with_context(|| format!("read {}", wasm.display()))?;
            let file_name = wasm
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("the module path has no file name")?;
            let output = output.unwrap_or_else(|| wasm.with_extension("tar"));
            let format = match (artifact, format) {
                (true, _) | (false, FormatArg::Artifact) => Format::Artifact,
                (false, FormatArg::Image) => Format::Image,
                (false, FormatArg::ComponentLayer) => Format::ComponentLayer,
                (false, FormatArg::ContentLayer) => Format::ContentLayer,
            };
            // Ask for the password before the work, not after it.
            let options = and_push.then(|| registry.options()).transpose()?;
            let package = Package {
                reference,
                file_name,
                wasm: bytes,
                format,
                args,
                env,
            };
            let mut layout = package.build().map_err(chain)?;
            if let Some(native) = native {
                layout = layout.with_native(&native).map_err(chain)?;
            }
            layout.write_archive(&output).map_err(chain)?;
            println!(
                "{} {} → {}",
                layout.reference,
                layout.target.digest,
                output.display()
            );
            if let Some(options) = options {
                let reference = layout.reference.clone();
                push(&layout, &reference, &options)?;
            }
        }
        Command::Push {
            archive,
            reference,
            registry,
        } => {
            let options = registry.options()?;
            let layout = Layout::read_archive(&archive).map_err(chain)?;
            let reference = match reference {
                Some(reference) => reference,
                None if !layout.reference.is_empty() => layout.reference.clone(),
                None => {
                    return Err(chain(wasm_oci::Error::NoReference {
                        path: archive.display().to_string(),
                    }));
                }
            };
            push(&layout, &reference, &options)?;
        }
    }
    Ok(())
}

fn push(layout: &Layout, reference: &str, options: &PushOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let digest = runtime
        .block_on(wasm_oci::push(layout, reference, options, progress()))
        .map_err(chain)?;
    println!("{reference}@{digest}");
    Ok(())
}

/// Progress on stderr as plain text: one line per blob, and for blobs above
/// [`CHUNKED_ABOVE`] a line per chunk (rewritten in place with `\r` on a terminal).
fn progress() -> Observer {
    let tty = std::io::stderr().is_terminal();
    Arc::new(move |event: Progress| match event {
        Progress::Exists { digest, size } => {
            eprintln!("{}  exists ({})", short(&digest), bytes(size));
        }
        Progress::Sent { digest, sent, size } if size > CHUNKED_ABOVE as u64 => {
            let line = format!(
                "{}  {} / {} ({}%)",
                short(&digest),
                bytes(sent),
                bytes(size),
                sent * 100 / size
            );
            match (tty, sent == size) {
                (true, false) => eprint!("\r{line}"),
                (true, true) => eprintln!("\r{line}"),
                (false, _) => eprintln!("{line}"),
            }
        }
        Progress::Sent { digest, sent, size } => {
            if sent == size {
                eprintln!("{}  pushed ({})", short(&digest), bytes(size));
            }
        }
        Progress::Manifest { digest, reference } if reference != digest => {
            eprintln!("{}  tagged {reference}", short(&digest));
        }
        Progress::Manifest { digest, .. } => eprintln!("{}  manifest pushed", short(&digest)),
    })
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}
