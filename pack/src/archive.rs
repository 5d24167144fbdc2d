//! OCI archives: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) in a tar,
//! as `ctr images import/export`, `docker save` (25+) and buildx's `type=oci` read and write.

use crate::{Blob, Error, INDEX, MANIFEST, is_index, is_manifest, to_json};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// An archive read into memory.
pub(crate) struct Archive {
    path: String,
    files: HashMap<String, Vec<u8>>,
}

/// What one descriptor reaches: manifests (children before the indexes that list them) and the
/// configs and layers, each once.
#[derive(Default)]
pub(crate) struct Collected {
    pub(crate) manifests: Vec<Blob>,
    pub(crate) blobs: Vec<Blob>,
    seen: HashSet<String>,
}

impl Collected {
    pub(crate) fn add_manifest(&mut self, blob: Blob) {
        if self.seen.insert(blob.digest.clone()) {
            self.manifests.push(blob);
        }
    }

    fn add_blob(&mut self, blob: Blob) {
        if self.seen.insert(blob.digest.clone()) {
            self.blobs.push(blob);
        }
    }
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

impl Archive {
    pub(crate) fn open(path: &Path) -> Result<Archive, Error> {
        let name = path.display().to_string();
        let io = |e| Error::Io {
            what: format!("read {name}"),
            source: e,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut tar = tar::Archive::new(std::io::BufReader::new(file));
        let mut files = HashMap::new();
        for entry in tar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let key = entry
                .path()
                .map_err(io)?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
            entry.read_to_end(&mut bytes).map_err(io)?;
            files.insert(key, bytes);
        }
        let archive = Archive { path: name, files };
        if !archive.files.contains_key("index.json") {
            return Err(archive.invalid("not an OCI archive: it has no index.json"));
        }
        Ok(archive)
    }

    pub(crate) fn invalid(&self, what: impl Into<String>) -> Error {
        Error::Archive {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn json(&self, blob: &Blob) -> Result<Value, Error> {
        serde_json::from_slice(&blob.bytes)
            .map_err(|e| self.invalid(format!("{} is not JSON: {e}", blob.digest)))
    }

    /// The descriptor of the one image `index.json` lists.
    pub(crate) fn entry(&self) -> Result<Value, Error> {
        let index = Blob::new(
            INDEX,
            self.files.get("index.json").cloned().unwrap_or_default(),
        );
        let index = self.json(&index)?;
        match index["manifests"].as_array().map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            Some(many) if many.len() > 1 => Err(self.invalid(format!(
                "index.json lists {} images; give an archive of one image (one tag)",
                many.len()
            ))),
            _ => Err(self.invalid("index.json lists no image")),
        }
    }

    fn has(&self, desc: &Value) -> bool {
        desc["digest"]
            .as_str()
            .is_some_and(|d| self.files.contains_key(&blob_path(d)))
    }

    /// The blob `desc` names, checked against its digest.
    pub(crate) fn blob(&self, desc: &Value) -> Result<Blob, Error> {
        let digest = desc["digest"]
            .as_str()
            .ok_or_else(|| self.invalid(format!("a descriptor without a digest: {desc}")))?;
        let media_type = desc["mediaType"].as_str().unwrap_or_default();
        if !digest.starts_with("sha256:") {
            return Err(self.invalid(format!("{digest}: only sha256 digests are supported")));
        }
        let bytes = self.files.get(&blob_path(digest)).ok_or_else(|| {
            self.invalid(format!(
                "blob {digest} ({media_type}) is not in the archive"
            ))
        })?;
        let blob = Blob::new(media_type, bytes.clone());
        if blob.digest != digest {
            return Err(self.invalid(format!(
                "blob {digest} does not match its digest (its content is {})",
                blob.digest
            )));
        }
        Ok(blob)
    }

    /// Reads the manifest or index `desc` names, and everything under it, into `out`; returns
    /// it (not added to `out`: the caller knows whether it is the tagged one).
    pub(crate) fn collect(&self, desc: &Value, out: &mut Collected) -> Result<Blob, Error> {
        let mut blob = self.blob(desc)?;
        let json = self.json(&blob)?;
        if blob.media_type.is_empty() {
            let sniffed = if json.get("manifests").is_some() {
                INDEX
            } else {
                MANIFEST
            };
            blob.media_type = json["mediaType"].as_str().unwrap_or(sniffed).to_string();
        }
        if blob.is_index() {
            for child in json["manifests"].as_array().into_iter().flatten() {
                let child = self.collect(child, out)?;
                out.add_manifest(child);
            }
        } else if is_manifest(&blob.media_type) {
            // Layers, then the config: the order a build writes them in.
            let layers = json["layers"].as_array().into_iter().flatten();
            for desc in layers.chain([&json["config"]]) {
                // A foreign layer (`urls`) may be left out: pullers fetch it from there.
                if desc.get("urls").is_some() && !self.has(desc) {
                    continue;
                }
                out.add_blob(self.blob(desc)?);
            }
        } else {
            return Err(self.invalid(format!(
                "{} is a {:?}, not an image manifest or index",
                blob.digest, blob.media_type
            )));
        }
        Ok(blob)
    }

    /// The image manifests under `desc`, indexes flattened. A manifest an index lists but the
    /// archive lacks is left out: a one-platform export of a multi-platform image has only its own.
    pub(crate) fn image_manifests(&self, desc: &Value, out: &mut Vec<Value>) -> Result<(), Error> {
        if !is_index(desc["mediaType"].as_str().unwrap_or_default()) {
            out.push(desc.clone());
            return Ok(());
        }
        let index = self.json(&self.blob(desc)?)?;
        for child in index["manifests"].as_array().into_iter().flatten() {
            if is_index(child["mediaType"].as_str().unwrap_or_default()) {
                self.image_manifests(child, out)?;
            } else if self.has(child) {
                out.push(child.clone());
            }
        }
        Ok(())
    }

    /// The platform of the manifest `desc` names, from its config (`os`, `architecture`,
    /// `variant`, `os.version`, `os.features`).
    pub(crate) fn platform_of(&self, desc: &Value) -> Result<Value, Error> {
        let manifest = self.json(&self.blob(desc)?)?;
        let config = self.json(&self.blob(&manifest["config"])?)?;
        let mut platform = serde_json::Map::new();
        for key in ["architecture", "os", "os.version", "os.features", "variant"] {
            if let Some(value) = config.get(key) {
                platform.insert(key.into(), value.clone());
            }
        }
        if !platform.contains_key("os") || !platform.contains_key("architecture") {
            let digest = desc["digest"].as_str().unwrap_or_default();
            return Err(self.invalid(format!(
                "manifest {digest} names no platform, and its config has no os/architecture"
            )));
        }
        Ok(Value::Object(platform))
    }
}

/// Writes an OCI archive whose `index.json` lists `entry`, holding `blobs` in that order. Fixed
/// headers (mode 0644, mtime 0, root) keep it reproducible.
pub(crate) fn write(out: &Path, entry: Value, blobs: &[&Blob]) -> Result<(), Error> {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
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
    let mut written = HashSet::new();
    for blob in blobs {
        if written.insert(&blob.digest) {
            add(&blob_path(&blob.digest), &blob.bytes).map_err(io)?;
        }
    }
    add("index.json", &to_json(&index)).map_err(io)?;
    let bytes = b.into_inner().map_err(io)?;
    std::fs::write(out, bytes).map_err(io)
}
