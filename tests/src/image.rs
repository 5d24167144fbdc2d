//! A small, reproducible OCI image writer: one uncompressed layer, an image config and a
//! manifest in an OCI layout tarball that `ctr images import` accepts. Same input, same digest.

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct Image {
    /// Full reference, e.g. `localhost/wasmtime-shim/hello:latest`.
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub symlinks: Vec<(String, String)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// The image's `User` (`uid[:gid]`), empty for root.
    pub user: String,
    /// Device nodes: path, `c` or `b`, major, minor.
    pub devices: Vec<(String, char, u32, u32)>,
}

/// `sha256:<hex>` of `bytes`, as OCI names blobs.
pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `std::env::consts::ARCH` in OCI's spelling.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Image {
    pub fn new(name: &str) -> Self {
        Image {
            name: name.to_string(),
            workdir: "/".into(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
            ..Default::default()
        }
    }

    pub fn file(mut self, dest: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.push((dest.to_string(), bytes.into()));
        self
    }

    pub fn symlink(mut self, dest: &str, target: &str) -> Self {
        self.symlinks.push((dest.to_string(), target.to_string()));
        self
    }

    /// A device node at `dest`: `kind` `c` (character) or `b` (block), `major`:`minor`.
    pub fn device(mut self, dest: &str, kind: char, major: u32, minor: u32) -> Self {
        self.devices.push((dest.to_string(), kind, major, minor));
        self
    }

    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets `KEY=value`, replacing an earlier value of the same key.
    pub fn env(mut self, kv: &str) -> Self {
        let key = kv.split('=').next().unwrap_or(kv);
        self.env.retain(|e| e.split('=').next() != Some(key));
        self.env.push(kv.to_string());
        self
    }

    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = dir.to_string();
        self
    }

    fn layer(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        let mut entries: Vec<&str> = self.files.iter().map(|(d, _)| d.as_str()).collect();
        entries.extend(self.symlinks.iter().map(|(d, _)| d.as_str()));
        entries.extend(self.devices.iter().map(|(d, ..)| d.as_str()));
        for dest in entries {
            let mut p = Path::new(dest.trim_start_matches('/'));
            while let Some(parent) = p.parent() {
                if parent.as_os_str().is_empty() {
                    break;
                }
                dirs.insert(parent.to_path_buf());
                p = parent;
            }
        }
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        for dir in &dirs {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            builder.append_data(&mut h, format!("{}/", dir.display()), std::io::empty())?;
        }
        let mut files = self.files.clone();
        files.sort();
        for (dest, bytes) in &files {
            let mut h = header(tar::EntryType::Regular, 0o755, bytes.len() as u64);
            builder.append_data(&mut h, dest.trim_start_matches('/'), bytes.as_slice())?;
        }
        let mut links = self.symlinks.clone();
        links.sort();
        for (dest, target) in &links {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            builder.append_link(&mut h, dest.trim_start_matches('/'), target)?;
        }
        let mut devices = self.devices.clone();
        devices.sort();
        for (dest, kind, major, minor) in &devices {
            let kind = match kind {
                'b' => tar::EntryType::Block,
                _ => tar::EntryType::Char,
            };
            let mut h = header(kind, 0o666, 0);
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            builder.append_data(&mut h, dest.trim_start_matches('/'), std::io::empty())?;
        }
        Ok(builder.into_inner()?)
    }

    /// The digest of the image's single, uncompressed layer: its diff id and chain id.
    pub fn chain_id(&self) -> Result<String> {
        Ok(digest(&self.layer()?))
    }

    /// Writes the OCI layout tarball to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        if self.name.is_empty() {
            bail!("image has no name");
        }
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "WorkingDir": self.workdir,
                "User": self.user,
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let tag = self
            .name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest(&manifest),
                "size": manifest.len(),
                "platform": { "architecture": oci_arch(), "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))?;
        let mut tarball = tar::Builder::new(Vec::new());
        let mut add = |path: String, bytes: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            h.set_mtime(0);
            tarball.append_data(&mut h, path, bytes)?;
            Ok(())
        };
        add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        for blob in [&layer, &config, &manifest] {
            let d = digest(blob);
            add(format!("blobs/sha256/{}", &d["sha256:".len()..]), blob)?;
        }
        add("index.json".into(), &index)?;
        let bytes = tarball.into_inner()?;
        std::fs::write(out, bytes).with_context(|| format!("write {}", out.display()))
    }
}

/// Reads a guest binary: `.wat` files are assembled, anything else is taken as is.
pub fn read_guest(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "wat") {
        return wat::parse_file(path).with_context(|| format!("assemble {}", path.display()));
    }
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// A native image: the host's static busybox at `/bin/busybox`, with `/bin/<applet>` links for
/// the applets the tests use (`apt-get install busybox-static`).
pub fn busybox(name: &str) -> Result<Image> {
    let busybox = std::fs::read("/bin/busybox")
        .context("read /bin/busybox for a native image (apt-get install busybox-static)")?;
    let mut image = Image::new(name).file("/bin/busybox", busybox);
    for applet in [
        "sh", "echo", "cat", "sleep", "wget", "true", "false", "hostname", "ls", "id", "env",
    ] {
        image = image.symlink(&format!("/bin/{applet}"), "busybox");
    }
    Ok(image.env("PATH=/bin"))
}
