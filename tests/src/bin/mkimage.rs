//! mkimage: writes an OCI image tarball for `ctr images import` from Wasm files.
//!
//! ```text
//! mkimage --name localhost/wasmtime-shim/hello:latest --out hello.tar \
//!     --file examples/wat/hello.wat:/hello.wasm --entrypoint /hello.wasm [--cmd ARG]... \
//!     [--env K=V]... [--workdir /app] [--symlink /link:/target]... [--device /path:c:1:3]...
//! ```
//! `.wat` sources are assembled. The output is reproducible: same inputs, same digests.

use anyhow::{Context, Result, bail};
use std::path::Path;
use wasmtime_shim_tests::image::{Image, read_guest};

fn main() -> Result<()> {
    let mut image = Image::new("");
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => image.name = value()?,
            "--out" => out = Some(value()?),
            "--file" => {
                let v = value()?;
                let (src, dest) = v.split_once(':').context("--file wants SRC:DEST")?;
                image = image.file(dest, read_guest(Path::new(src))?);
            }
            "--symlink" => {
                let v = value()?;
                let (dest, target) = v.split_once(':').context("--symlink wants DEST:TARGET")?;
                image = image.symlink(dest, target);
            }
            "--device" => {
                let v = value()?;
                let parts: Vec<&str> = v.split(':').collect();
                let [dest, kind @ ("c" | "b"), major, minor] = parts[..] else {
                    bail!("--device wants PATH:c|b:MAJOR:MINOR, not {v}");
                };
                let kind = kind.chars().next().unwrap_or('c');
                image = image.device(dest, kind, major.parse()?, minor.parse()?);
            }
            "--entrypoint" => image.entrypoint.push(value()?),
            "--cmd" => image.cmd.push(value()?),
            "--env" => image = image.env(&value()?),
            "--workdir" => image.workdir = value()?,
            "--user" => image.user = value()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let out = out.context("--out is required")?;
    image.write(Path::new(&out))
}
