//! The runtime options containerd writes on the shim's stdin when it starts a shim.
//!
//! containerd-shim's `spawn` decodes them as runc's `Options` whatever their type, to move the
//! shim into `ShimCgroup`. CRI sends other runtimes a `runtimeoptions.v1.Options` whose field 3,
//! `ConfigBody`, is the handler's TOML `options` table; read as runc's field 3 it becomes a
//! `ShimCgroup` named `SystemdCgroup = true\n`, and the shim fails to start. So only runc's
//! options are passed on; the others carry nothing this shim uses (it takes the cgroup driver
//! from the form of the container's `cgroupsPath`).

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use std::io::{Read, Write};

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

/// Whether options (an encoded `Any`) are runc's, which containerd-shim may decode.
pub fn are_runc_options(data: &[u8]) -> bool {
    Any::parse_from_bytes(data).is_ok_and(|any| any.type_url.ends_with(RUNC_OPTIONS))
}

/// Reads the options from stdin and puts back on stdin only what containerd-shim can decode.
pub fn filter_stdin() -> std::io::Result<()> {
    let mut data = Vec::new();
    std::io::stdin().read_to_end(&mut data)?;
    let (read, write) = nix::unistd::pipe()?;
    if !data.is_empty() && are_runc_options(&data) {
        // Options are a few hundred bytes: far below a pipe's buffer, so this cannot block.
        std::fs::File::from(write).write_all(&data)?;
    } else {
        drop(write);
    }
    nix::unistd::dup2_stdin(&read)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value.to_vec();
        a.write_to_bytes().unwrap()
    }

    #[test]
    fn only_runc_options_pass() {
        // CRI's generic options: ConfigBody (field 3) holds the handler's TOML options.
        let body = b"\x1a\x16SystemdCgroup = true\n";
        assert!(!are_runc_options(&any("runtimeoptions.v1.Options", body)));
        assert!(are_runc_options(&any("containerd.runc.v1.Options", b"")));
        assert!(are_runc_options(&any(
            "type.googleapis.com/containerd.runc.v1.Options",
            b""
        )));
        assert!(!are_runc_options(b"\xff\xff not protobuf"));
    }
}
