//! A tagged image ready to write or push; read back from an OCI archive; or joined with a native
//! image under one index, so one tag serves runc and the shim.

use crate::archive::{self, Archive, Collected};
use crate::{Blob, Error, INDEX, to_json};
use serde_json::{Value, json};
use std::fmt;
use std::path::Path;

/// containerd's image name in an archive's `index.json`.
const IMAGE_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An image platform, as an index entry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    pub fn wasm(os: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: "wasm".into(),
        }
    }

    fn json(&self) -> Value {
        json!({ "architecture": self.architecture, "os": self.os })
    }

    fn of(value: &Value) -> Option<Platform> {
        Some(Platform {
            os: value["os"].as_str()?.into(),
            architecture: value["architecture"].as_str()?.into(),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// An image under one tag: what the tag names, and every blob it reaches.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `registry/repository:tag`; empty when read from an archive that names none.
    pub reference: String,
    /// What the tag names: the Wasm manifest, or an index.
    pub target: Blob,
    /// The target's platform when it is a manifest.
    pub platform: Option<Platform>,
    /// Under an index target: its manifests, each before any index that lists it. They are
    /// pushed by digest before the target.
    pub manifests: Vec<Blob>,
    /// Configs and layers, each once.
    pub blobs: Vec<Blob>,
}

impl Layout {
    /// Any blob of the layout by digest: a layer, a config, a manifest or the target.
    pub fn blob(&self, digest: &str) -> Option<&Blob> {
        self.blobs
            .iter()
            .chain(&self.manifests)
            .chain([&self.target])
            .find(|b| b.digest == digest)
    }

    /// The OCI image layout as a tar archive (`ctr images import` reads it), with the
    /// reference as containerd's image name.
    pub fn write_archive(&self, out: &Path) -> Result<(), Error> {
        let tag = self
            .reference
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or("latest", |(_, t)| t);
        let mut entry = self.target.descriptor();
        if let Some(platform) = &self.platform {
            entry["platform"] = platform.json();
        }
        entry["annotations"] = json!({ IMAGE_NAME: self.reference, REF_NAME: tag });
        let blobs: Vec<&Blob> = self
            .blobs
            .iter()
            .chain(&self.manifests)
            .chain([&self.target])
            .collect();
        archive::write(out, entry, &blobs)
    }

    /// Reads an OCI archive of one image (`index.json` lists one manifest or index), checking
    /// every blob against its digest.
    pub fn read_archive(path: &Path) -> Result<Layout, Error> {
        let archive = Archive::open(path)?;
        let entry = archive.entry()?;
        let mut out = Collected::default();
        let target = archive.collect(&entry, &mut out)?;
        let annotations = &entry["annotations"];
        let reference = annotations[IMAGE_NAME]
            .as_str()
            .or_else(|| annotations[REF_NAME].as_str().filter(|r| r.contains('/')))
            .unwrap_or_default()
            .to_string();
        Ok(Layout {
            reference,
            platform: entry.get("platform").and_then(Platform::of),
            target,
            manifests: out.manifests,
            blobs: out.blobs,
        })
    }

    /// This Wasm image and the native image(s) of the OCI archive at `native` under one index:
    /// the native manifests first (with their platforms, from their configs where the archive
    /// gives none), then the Wasm manifest with its platform. Their blobs are copied in.
    pub fn with_native(self, native: &Path) -> Result<Layout, Error> {
        let wasm_platform = match (&self.platform, self.target.is_index()) {
            (Some(platform), false) => platform.clone(),
            _ => {
                return Err(Error::Archive {
                    path: native.display().to_string(),
                    what: "only a single Wasm manifest joins a native image".into(),
                });
            }
        };
        let archive = Archive::open(native)?;
        let mut descriptors = Vec::new();
        archive.image_manifests(&archive.entry()?, &mut descriptors)?;
        if descriptors.is_empty() {
            return Err(archive.invalid("it holds no image manifest"));
        }
        let mut out = Collected::default();
        let mut entries = Vec::new();
        for mut desc in descriptors {
            let manifest = archive.collect(&desc, &mut out)?;
            out.add_manifest(manifest);
            if desc.get("platform").is_none() {
                desc["platform"] = archive.platform_of(&desc)?;
            }
            if Platform::of(&desc["platform"]).as_ref() == Some(&wasm_platform) {
                return Err(archive.invalid(format!(
                    "the native image already has a {wasm_platform} manifest"
                )));
            }
            // The names of the archive's own image are not the index's to carry.
            let emptied = match desc.get_mut("annotations").and_then(Value::as_object_mut) {
                Some(annotations) => {
                    annotations.remove(IMAGE_NAME);
                    annotations.remove(REF_NAME);
                    annotations.is_empty()
                }
                None => false,
            };
            if let Some(fields) = desc.as_object_mut().filter(|_| emptied) {
                fields.remove("annotations");
            }
            entries.push(desc);
        }
        let mut wasm = self.target.descriptor();
        wasm["platform"] = wasm_platform.json();
        entries.push(wasm);
        let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": entries });
        let mut manifests = out.manifests;
        manifests.push(self.target);
        let mut blobs = out.blobs;
        for blob in self.blobs {
            if !blobs.iter().any(|b| b.digest == blob.digest) {
                blobs.push(blob);
            }
        }
        Ok(Layout {
            reference: self.reference,
            target: Blob::new(INDEX, to_json(&index)),
            platform: None,
            manifests,
            blobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::tests::{component, hello, package};
    use crate::{DOCKER_MANIFEST, Format, MANIFEST};
    use std::path::PathBuf;

    /// A native image for each `(os, arch, variant)`: a config and a (fake) layer each, in an
    /// archive whose `index.json` names a manifest (one platform) or an index. Index entries
    /// leave out the platform of every second manifest, so it comes from the config.
    /// `missing` platforms are listed in the index without their manifest in the archive.
    fn native(dir: &Path, platforms: &[(&str, &str, &str)], missing: &[(&str, &str)]) -> PathBuf {
        let mut blobs = Vec::new();
        let mut entries = Vec::new();
        for (i, (os, arch, variant)) in platforms.iter().enumerate() {
            let layer = Blob::new(crate::TAR_LAYER, format!("{os}-{arch} files").into_bytes());
            let mut config = json!({
                "architecture": arch, "os": os,
                "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
            });
            if !variant.is_empty() {
                config["variant"] = json!(variant);
            }
            let config = Blob::new(crate::IMAGE_CONFIG, to_json(&config));
            let manifest = json!({
                "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": config.descriptor(), "layers": [layer.descriptor()],
            });
            let manifest = Blob::new(DOCKER_MANIFEST, to_json(&manifest));
            let mut entry = manifest.descriptor();
            if i % 2 == 0 {
                entry["platform"] = json!({ "os": os, "architecture": arch });
            }
            entries.push(entry);
            blobs.extend([layer, config, manifest]);
        }
        for (os, arch) in missing {
            let absent = Blob::new(MANIFEST, format!("{os}/{arch}").into_bytes());
            let mut entry = absent.descriptor();
            entry["platform"] = json!({ "os": os, "architecture": arch });
            entries.push(entry);
        }
        let mut top = if entries.len() == 1 {
            entries.remove(0)
        } else {
            let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": entries });
            let index = Blob::new(INDEX, to_json(&index));
            let desc = index.descriptor();
            blobs.push(index);
            desc
        };
        top["annotations"] = json!({ IMAGE_NAME: "docker.io/library/native:1", REF_NAME: "1" });
        let path = dir.join("native.tar");
        archive::write(&path, top, &blobs.iter().collect::<Vec<_>>()).unwrap();
        path
    }

    fn platforms(index: &Blob) -> Vec<String> {
        let index: Value = serde_json::from_slice(&index.bytes).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        entries
            .iter()
            .map(|e| {
                let p = &e["platform"];
                let variant = p["variant"].as_str().map(|v| format!("/{v}"));
                format!(
                    "{}/{}{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap(),
                    variant.unwrap_or_default()
                )
            })
            .collect()
    }

    /// Every blob every manifest of `l` names is in `l`.
    fn assert_complete(l: &Layout) {
        for manifest in l.manifests.iter().chain([&l.target]) {
            let m: Value = serde_json::from_slice(&manifest.bytes).unwrap();
            let children = m["manifests"].as_array().into_iter().flatten();
            let parts = m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(m.get("config"));
            for desc in children.chain(parts) {
                let digest = desc["digest"].as_str().unwrap();
                assert!(
                    l.blob(digest).is_some(),
                    "{digest} missing from {}",
                    manifest.digest
                );
            }
        }
    }

    #[test]
    fn an_archive_reads_back_as_written() {
        let d = tempfile::tempdir().unwrap();
        let l = package(Format::ContentLayer, hello()).build().unwrap();
        l.write_archive(&d.path().join("app.tar")).unwrap();
        let back = Layout::read_archive(&d.path().join("app.tar")).unwrap();
        assert_eq!(back.reference, "localhost:5000/app:1.0");
        assert_eq!(back.target, l.target);
        assert_eq!(back.platform, Some(Platform::wasm("wasi")));
        assert_eq!(back.blobs, l.blobs);
        assert!(back.manifests.is_empty());
        // Written again, it is the same archive.
        back.write_archive(&d.path().join("again.tar")).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("app.tar")).unwrap(),
            std::fs::read(d.path().join("again.tar")).unwrap()
        );
    }

    #[test]
    fn the_index_holds_the_native_and_the_wasm_platforms() {
        let d = tempfile::tempdir().unwrap();
        let native = native(d.path(), &[("linux", "amd64", "")], &[]);
        let cases = [
            (Format::Image, hello(), "wasi/wasm"),
            (Format::Artifact, component(), "wasip2/wasm"),
            (Format::ComponentLayer, component(), "wasi/wasm"),
            (Format::ContentLayer, hello(), "wasi/wasm"),
        ];
        for (format, wasm, wasm_platform) in cases {
            let build = || package(format, wasm.clone()).build().unwrap();
            let l = build().with_native(&native).unwrap();
            assert_eq!(l.target.media_type, INDEX);
            assert_eq!(
                platforms(&l.target),
                ["linux/amd64", wasm_platform],
                "{format:?}"
            );
            assert_eq!(l.manifests.len(), 2);
            assert_eq!(l.manifests[1], build().target);
            // The native archive's own names stay out of the index.
            let index = String::from_utf8_lossy(&l.target.bytes).into_owned();
            assert!(
                !index.contains(IMAGE_NAME) && !index.contains(REF_NAME),
                "{index}"
            );
            assert_complete(&l);
            // The index, written and read back, is the same; so is a second build's.
            let out = d.path().join("both.tar");
            l.write_archive(&out).unwrap();
            let back = Layout::read_archive(&out).unwrap();
            assert_eq!(back.target, l.target);
            assert_eq!(back.reference, "localhost:5000/app:1.0");
            assert_eq!(back.platform, None);
            assert_complete(&back);
            let again = build().with_native(&native).unwrap();
            assert_eq!(again.target.digest, l.target.digest);
        }
    }

    #[test]
    fn a_multi_platform_native_image_keeps_every_platform_it_has() {
        let d = tempfile::tempdir().unwrap();
        let native = native(
            d.path(),
            &[("linux", "amd64", ""), ("linux", "arm64", "v8")],
            &[("linux", "s390x")],
        );
        let l = package(Format::ContentLayer, hello()).build().unwrap();
        let l = l.with_native(&native).unwrap();
        // arm64 had no platform in the index: it comes from its config, variant included;
        // s390x is listed but not exported, so it is left out.
        assert_eq!(
            platforms(&l.target),
            ["linux/amd64", "linux/arm64/v8", "wasi/wasm"]
        );
        assert_eq!(l.manifests.len(), 3);
        assert_complete(&l);
    }

    #[test]
    fn a_native_image_that_has_the_wasm_platform_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let native = native(d.path(), &[("wasi", "wasm", "")], &[]);
        let err = package(Format::Image, hello())
            .build()
            .unwrap()
            .with_native(&native)
            .unwrap_err();
        assert!(
            err.to_string().contains("already has a wasi/wasm manifest"),
            "{err}"
        );
    }

    #[test]
    fn damaged_archives_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let l = package(Format::ContentLayer, hello()).build().unwrap();
        let entry = l.target.descriptor();
        let write = |name: &str, blobs: &[&Blob]| {
            let path = d.path().join(name);
            archive::write(&path, entry.clone(), blobs).unwrap();
            Layout::read_archive(&path).unwrap_err().to_string()
        };
        // The layer is left out.
        let err = write("missing.tar", &[&l.blobs[1], &l.target][..]);
        assert!(
            err.contains(&format!("blob {} ", l.blobs[0].digest)),
            "{err}"
        );
        assert!(err.contains("is not in the archive"), "{err}");
        // The layer's content is not what its digest says.
        let mut wrong = l.blobs[0].clone();
        wrong.bytes.push(0);
        let err = write("corrupt.tar", &[&wrong, &l.blobs[1], &l.target][..]);
        assert!(err.contains("does not match its digest"), "{err}");
        // Not an OCI archive at all.
        let path = d.path().join("plain.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        b.append_data(&mut h, "manifest.json", &b"[]"[..]).unwrap();
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        let err = Layout::read_archive(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("not an OCI archive: it has no index.json"),
            "{err}"
        );
    }
}
