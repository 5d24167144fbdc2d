//! A module and its settings → the manifest, config and layer of one of the four formats.

use crate::{
    Blob, COMPONENT_LAYER, CONTENT_LAYER, Error, IMAGE_CONFIG, Layout, MANIFEST, Platform,
    TAR_LAYER, TITLE, WASM_CONFIG, WASM_LAYER, to_json,
};
use serde_json::json;
use wasmtime_shim_runtime::WasmKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The module as a file in a tar layer.
    Image,
    /// The CNCF Wasm OCI artifact.
    Artifact,
    /// An image config and one `…wasm.component.layer.v0+wasm` layer: components only.
    ComponentLayer,
    /// An image config and one `…wasm.content.layer.v1+wasm` layer.
    ContentLayer,
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
    /// Every format but the artifact: `Cmd` and `Env`.
    pub args: Vec<String>,
    pub env: Vec<String>,
}

impl Package {
    /// Validates the module and builds the layout.
    pub fn build(&self) -> Result<Layout, Error> {
        if self.reference.is_empty() || self.reference.contains(char::is_whitespace) {
            return Err(Error::Reference(self.reference.clone()));
        }
        let kind = wasmtime_shim_runtime::validate(&self.file_name, &self.wasm)?;
        if self.format == Format::ComponentLayer && kind != WasmKind::Component {
            return Err(Error::NotAComponent {
                file: self.file_name.clone(),
            });
        }
        let path = format!("/{}", self.file_name.trim_start_matches('/'));
        let (layer, config, os) = match self.format {
            Format::Artifact => {
                let wasi = match kind {
                    WasmKind::Module => "wasip1",
                    WasmKind::Component => "wasip2",
                };
                let layer = Blob::new(WASM_LAYER, self.wasm.clone());
                let config = json!({
                    "created": created(),
                    "architecture": "wasm",
                    "os": wasi,
                    "layerDigests": [layer.digest],
                });
                (layer, Blob::new(WASM_CONFIG, to_json(&config)), wasi)
            }
            Format::Image => {
                let layer = Blob::new(TAR_LAYER, tar_layer(&path, &self.wasm)?);
                let config = self.image_config(&path, &[layer.digest.as_str()]);
                (layer, config, "wasi")
            }
            Format::ComponentLayer | Format::ContentLayer => {
                let media_type = if self.format == Format::ComponentLayer {
                    COMPONENT_LAYER
                } else {
                    CONTENT_LAYER
                };
                let layer = Blob::new(media_type, self.wasm.clone());
                // No diff_ids: containerd's unpacker takes only tar layers
                // (`images.IsLayerType`) and requires the config to list exactly those, so the
                // Wasm layer stays in the content store and the container gets an empty rootfs.
                (layer, self.image_config(&path, &[]), "wasi")
            }
        };
        let mut layer_desc = layer.descriptor();
        if self.format != Format::Image {
            layer_desc["annotations"] = json!({ TITLE: self.file_name });
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": [layer_desc],
        });
        Ok(Layout {
            reference: self.reference.clone(),
            target: Blob::new(MANIFEST, to_json(&manifest)),
            platform: Some(Platform::wasm(os)),
            manifests: vec![],
            blobs: vec![layer, config],
        })
    }

    /// An OCI image config for `wasi/wasm` that runs `entrypoint`.
    fn image_config(&self, entrypoint: &str, diff_ids: &[&str]) -> Blob {
        let config = json!({
            "architecture": "wasm",
            "os": "wasi",
            "config": {
                "Entrypoint": [entrypoint],
                "Cmd": self.args,
                "Env": self.env,
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        Blob::new(IMAGE_CONFIG, to_json(&config))
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest;

    pub(crate) fn hello() -> Vec<u8> {
        wat::parse_str(r#"(module (func (export "_start")))"#).unwrap()
    }

    pub(crate) fn component() -> Vec<u8> {
        wat::parse_str("(component)").unwrap()
    }

    pub(crate) fn package(format: Format, wasm: Vec<u8>) -> Package {
        Package {
            reference: "localhost:5000/app:1.0".into(),
            file_name: "app.wasm".into(),
            wasm,
            format,
            args: vec![],
            env: vec![],
        }
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The manifest and config of a single-manifest layout.
    fn parts(l: &Layout) -> (serde_json::Value, serde_json::Value) {
        let m = json(&l.target.bytes);
        let config = l.blob(m["config"]["digest"].as_str().unwrap()).unwrap();
        assert_eq!(m["config"]["mediaType"], config.media_type);
        (m, json(&config.bytes))
    }

    #[test]
    fn the_same_input_gives_the_same_digests() {
        let formats = [
            (Format::Image, hello()),
            (Format::Artifact, hello()),
            (Format::ComponentLayer, component()),
            (Format::ContentLayer, hello()),
        ];
        for (format, wasm) in formats {
            let a = package(format, wasm.clone()).build().unwrap();
            let b = package(format, wasm).build().unwrap();
            assert_eq!(a.target.digest, b.target.digest, "{format:?}");
            let d = tempfile::tempdir().unwrap();
            a.write_archive(&d.path().join("a.tar")).unwrap();
            b.write_archive(&d.path().join("b.tar")).unwrap();
            assert_eq!(
                std::fs::read(d.path().join("a.tar")).unwrap(),
                std::fs::read(d.path().join("b.tar")).unwrap(),
                "{format:?}"
            );
        }
    }

    #[test]
    fn the_artifact_follows_the_cncf_layout() {
        let l = package(Format::Artifact, hello()).build().unwrap();
        let (m, c) = parts(&l);
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], WASM_LAYER);
        assert_eq!(m["layers"][0]["digest"], digest(&hello()));
        assert_eq!(m["layers"][0]["annotations"][TITLE], "app.wasm");
        assert_eq!(
            (c["architecture"].as_str(), c["os"].as_str()),
            (Some("wasm"), Some("wasip1"))
        );
        assert_eq!(c["layerDigests"][0], digest(&hello()));
        assert_eq!(c["created"], "1970-01-01T00:00:00Z");
        assert_eq!(l.platform, Some(Platform::wasm("wasip1")));
    }

    #[test]
    fn layer_formats_hold_the_raw_module_under_an_image_config() {
        let cases = [
            (Format::ComponentLayer, COMPONENT_LAYER, component()),
            (Format::ContentLayer, CONTENT_LAYER, hello()),
        ];
        for (format, media_type, wasm) in cases {
            let mut p = package(format, wasm.clone());
            p.args = vec!["--serve".into()];
            let l = p.build().unwrap();
            let (m, c) = parts(&l);
            assert_eq!(m["mediaType"], MANIFEST);
            assert_eq!(m["config"]["mediaType"], IMAGE_CONFIG, "{format:?}");
            let layers = m["layers"].as_array().unwrap();
            assert_eq!(layers.len(), 1);
            assert_eq!(layers[0]["mediaType"], media_type);
            assert_eq!(layers[0]["digest"], digest(&wasm));
            assert_eq!(layers[0]["annotations"][TITLE], "app.wasm");
            assert_eq!(l.blob(&digest(&wasm)).unwrap().bytes, wasm);
            assert_eq!(
                (c["architecture"].as_str(), c["os"].as_str()),
                (Some("wasm"), Some("wasi"))
            );
            assert_eq!(c["config"]["Entrypoint"], json!(["/app.wasm"]));
            assert_eq!(c["config"]["Cmd"], json!(["--serve"]));
            assert_eq!(c["rootfs"], json!({ "type": "layers", "diff_ids": [] }));
            assert_eq!(l.platform, Some(Platform::wasm("wasi")));
        }
    }

    #[test]
    fn the_plain_image_lists_its_tar_layer_as_the_diff_id() {
        let l = package(Format::Image, hello()).build().unwrap();
        let (m, c) = parts(&l);
        assert_eq!(m["layers"][0]["mediaType"], TAR_LAYER);
        assert_eq!(c["rootfs"]["diff_ids"][0], m["layers"][0]["digest"]);
        assert!(m["layers"][0].get("annotations").is_none());
    }

    #[test]
    fn the_component_layer_refuses_a_core_module() {
        let err = package(Format::ComponentLayer, hello())
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("app.wasm is a core module"),
            "{err}"
        );
        package(Format::ContentLayer, component()).build().unwrap();
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
