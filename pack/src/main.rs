//! wasm-oci: packages a WebAssembly module or component as an OCI image or the CNCF Wasm
//! artifact.
//!
//! ```text
//! wasm-oci build app.wasm -t registry.example/app:1.0 [--artifact] [-o app.tar]
//! ```

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use wasm_oci::{Format, Package};

#[derive(Parser)]
#[command(version, about = "Packages WebAssembly for OCI registries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the module and write an OCI archive (`ctr images import` reads it).
    Build {
        /// The .wasm module or component.
        wasm: PathBuf,
        /// The image reference, `registry/repository:tag`.
        #[arg(short = 't', long = "tag")]
        reference: String,
        /// The CNCF Wasm artifact instead of a plain image.
        #[arg(long)]
        artifact: bool,
        /// The archive to write [default: <file stem>.tar].
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Plain images: arguments after the entrypoint (`Cmd`).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// Plain images: `KEY=VALUE` environment entries.
        #[arg(long = "env")]
        env: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Build {
            wasm,
            reference,
            artifact,
            output,
            args,
            env,
        } => {
            let bytes = std::fs::read(&wasm).with_context(|| format!("read {}", wasm.display()))?;
            let file_name = wasm
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("the module path has no file name")?;
            let output = output.unwrap_or_else(|| wasm.with_extension("tar"));
            let package = Package {
                reference,
                file_name,
                wasm: bytes,
                format: if artifact {
                    Format::Artifact
                } else {
                    Format::Image
                },
                args,
                env,
            };
            let layout = package
                .build()
                .map_err(|e| anyhow::anyhow!(wasmtime_shim_runtime::error_chain(&e)))?;
            layout.write_archive(&output)?;
            println!(
                "{} {} → {}",
                layout.reference,
                layout.manifest.digest,
                output.display()
            );
        }
    }
    Ok(())
}
