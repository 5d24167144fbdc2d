//! Packages WebAssembly for OCI registries, in the two forms the shim runs:
//!
//! - a plain image: the module in the image's filesystem, the entrypoint set, platform
//!   `wasi/wasm`, one uncompressed tar layer;
//! - the CNCF Wasm OCI artifact: config `application/vnd.wasm.config.v0+json`, one
//!   `application/wasm` layer holding the module as is.
//!
//! Output is reproducible: no timestamps (or `SOURCE_DATE_EPOCH`'s), sorted JSON keys, fixed tar
//! headers, so the same input gives the same digests. The module is validated first with the
//! shim's own engine settings, so what the shim would refuse is refused here.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use wasmtime_shim_runtime::WasmKind;

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wasm(#[from] wasmtime_shim_runtime::Error),
    #[error("invalid reference {0:?}: expected [registry/]repository[:tag]")]
    Reference(String),
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Image,
    Artifact,
}

/// What to package.
#[derive(Debug, Clone)]
pub struct Package {
    /// `registry/repository:tag`, written as the image name in the archive.
    pub reference: String,
    /// The file's name inside the image (`app.wasm` → `/app.wasm`).
    pub file_name: String,
    pub wasm: Vec<u8>,
    pub format: Format,
    /// Plain images only: `Cmd` and `Env`.
    pub args: Vec<String>,
    pub env: Vec<String>,
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type,
            digest: digest(&bytes),
            bytes,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A packaged image: manifest, config and layers, ready to write or push.
#[derive(Debug, Clone)]
pub struct Layout {
    pub reference: String,
    pub os: &'static str,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// `created` of the artifact config: `SOURCE_DATE_EPOCH` when set, else the epoch.
fn created() -> String {
    let secs: i64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Package {
    /// Validates the module and builds the layout.
    pub fn build(&self) -> Result<Layout, Error> {
        if self.reference.is_empty() || self.reference.contains(char::is_whitespace) {
            return Err(Error::Reference(self.reference.clone()));
        }
        let kind = wasmtime_shim_runtime::validate(&self.file_name, &self.wasm)?;
        let wasi = match kind {
            WasmKind::Module => "wasip1",
            WasmKind::Component => "wasip2",
        };
        let path = format!("/{}", self.file_name.trim_start_matches('/'));
        let (config, layer, os) = match self.format {
            Format::Artifact => {
                let layer = Blob::new(WASM_LAYER, self.wasm.clone());
                let config = json!({
                    "created": created(),
                    "architecture": "wasm",
                    "os": wasi,
                    "layerDigests": [layer.digest],
                });
                (
                    Blob::new(WASM_CONFIG, serde_json::to_vec(&config).unwrap_or_default()),
                    layer,
                    wasi,
                )
            }
            Format::Image => {
                let layer = Blob::new(TAR_LAYER, tar_layer(&path, &self.wasm)?);
                let config = json!({
                    "architecture": "wasm",
                    "os": "wasi",
                    "config": {
                        "Entrypoint": [path],
                        "Cmd": self.args,
                        "Env": self.env,
                        "WorkingDir": "/",
                    },
                    "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
                });
                (
                    Blob::new(
                        IMAGE_CONFIG,
                        serde_json::to_vec(&config).unwrap_or_default(),
                    ),
                    layer,
                    "wasi",
                )
            }
        };
        let mut layer_desc = layer.descriptor();
        if self.format == Format::Artifact {
            layer_desc["annotations"] = json!({ "org.opencontainers.image.title": self.file_name });
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": [layer_desc],
        });
        Ok(Layout {
            reference: self.reference.clone(),
            os,
            manifest: Blob::new(MANIFEST, serde_json::to_vec(&manifest).unwrap_or_default()),
            config,
            layers: vec![layer],
        })
    }
}

/// One file at `path`, mode 0755, owned by root, mtime 0: the same bytes for the same input.
fn tar_layer(path: &str, wasm: &[u8]) -> Result<Vec<u8>, Error> {
    let io = |e| Error::Io {
        what: "build the layer".into(),
        source: e,
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(wasm.len() as u64);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, path.trim_start_matches('/'), wasm)
        .map_err(io)?;
    b.into_inner().map_err(io)
}

impl Layout {
    /// The OCI image layout as a tar archive (`ctr images import` reads it), with the
    /// reference as containerd's image name.
    pub fn write_archive(&self, out: &Path) -> Result<(), Error> {
        let tag = self
            .reference
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or("latest", |(_, t)| t);
        let mut entry = self.manifest.descriptor();
        entry["platform"] = json!({ "architecture": "wasm", "os": self.os });
        entry["annotations"] = json!({
            "io.containerd.image.name": self.reference,
            "org.opencontainers.image.ref.name": tag,
        });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        });
        let io = |e| Error::Io {
            what: format!("write {}", out.display()),
            source: e,
        };
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, name, bytes)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        let mut blobs: Vec<&Blob> = self.layers.iter().collect();
        blobs.extend([&self.config, &self.manifest]);
        for blob in blobs {
            let name = format!("blobs/sha256/{}", &blob.digest["sha256:".len()..]);
            add(&name, &blob.bytes).map_err(io)?;
        }
        add(
            "index.json",
            &serde_json::to_vec(&index).unwrap_or_default(),
        )
        .map_err(io)?;
        let bytes = b.into_inner().map_err(io)?;
        std::fs::write(out, bytes).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Vec<u8> {
        wat::parse_str(r#"(module (func (export "_start")))"#).unwrap()
    }

    fn package(format: Format, wasm: Vec<u8>) -> Package {
        Package {
            reference: "localhost:5000/app:1.0".into(),
            file_name: "app.wasm".into(),
            wasm,
            format,
            args: vec![],
            env: vec![],
        }
    }

    #[test]
    fn the_same_input_gives_the_same_digests() {
        for format in [Format::Image, Format::Artifact] {
            let a = package(format, hello()).build().unwrap();
            let b = package(format, hello()).build().unwrap();
            assert_eq!(a.manifest.digest, b.manifest.digest, "{format:?}");
            let d = tempfile::tempdir().unwrap();
            a.write_archive(&d.path().join("a.tar")).unwrap();
            b.write_archive(&d.path().join("b.tar")).unwrap();
            assert_eq!(
                std::fs::read(d.path().join("a.tar")).unwrap(),
                std::fs::read(d.path().join("b.tar")).unwrap()
            );
        }
    }

    #[test]
    fn the_artifact_follows_the_cncf_layout() {
        let l = package(Format::Artifact, hello()).build().unwrap();
        let m: serde_json::Value = serde_json::from_slice(&l.manifest.bytes).unwrap();
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], WASM_LAYER);
        assert_eq!(m["layers"][0]["digest"], digest(&hello()));
        let c: serde_json::Value = serde_json::from_slice(&l.config.bytes).unwrap();
        assert_eq!(
            (c["architecture"].as_str(), c["os"].as_str()),
            (Some("wasm"), Some("wasip1"))
        );
        assert_eq!(c["layerDigests"][0], digest(&hello()));
        assert_eq!(c["created"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_malformed_module_is_refused_with_wasmtime_s_error() {
        let mut bad = hello();
        bad.truncate(bad.len() - 1);
        let err = package(Format::Image, bad).build().unwrap_err();
        let chain = wasmtime_shim_runtime::error_chain(&err);
        assert!(chain.contains("not valid WebAssembly"), "{chain}");
        let err = package(Format::Image, b"\x7fELF....".to_vec())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("not a WebAssembly"), "{err}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_514), (2026, 3, 2));
    }
}
