//! Packages WebAssembly for OCI registries, in four forms:
//!
//! - `image`: a plain image: the module in the image's filesystem, the entrypoint set, platform
//!   `wasi/wasm`, one uncompressed tar layer. The shim runs it today.
//! - `artifact`: the CNCF Wasm OCI artifact: config `application/vnd.wasm.config.v0+json`, one
//!   `application/wasm` layer holding the module as is.
//! - `component-layer` and `content-layer`: an ordinary OCI image config (`wasi/wasm`, the
//!   entrypoint set) with one layer holding the module as is, typed
//!   `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` resp.
//!   `application/vnd.wasm.content.layer.v1+wasm`. Its `rootfs.diff_ids` is empty: containerd
//!   unpacks only tar layers and checks that the config lists exactly those, so an empty list
//!   is what lets a pull (and the container's empty snapshot) through.
//!
//! With a native image (`--native`), the output is an image index that holds the native
//! manifests and the Wasm manifest, so one tag serves runc and the shim.
//!
//! Output is reproducible: no timestamps (or `SOURCE_DATE_EPOCH`'s), sorted JSON keys, fixed tar
//! headers, so the same input gives the same digests. The module is validated first with the
//! shim's own engine settings, so what the shim would refuse is refused here.
//!
//! [`push()`] sends a layout to a registry through the OCI distribution API.

mod archive;
mod layout;
mod package;
mod push;

pub use layout::{Layout, Platform};
pub use package::{Format, Package};
pub use push::{CHUNKED_ABOVE, Observer, Progress, PushOptions, RegistryError, push};

use serde_json::json;
use sha2::{Digest, Sha256};

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
pub const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
pub const CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's manifest and manifest list, accepted in native archives.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The layer annotation that names the module's file.
pub const TITLE: &str = "org.opencontainers.image.title";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wasm(#[from] wasmtime_shim_runtime::Error),
    #[error("invalid reference {0:?}: expected [registry/]repository[:tag]")]
    Reference(String),
    #[error(
        "{file} is a core module; the component-layer format holds a component \
         (use content-layer or image for a module)"
    )]
    NotAComponent { file: String },
    #[error("{path}: {what}")]
    Archive { path: String, what: String },
    #[error("{path} names no image: give one with -t registry/repository:tag")]
    NoReference { path: String },
    #[error("push {reference}: {what}")]
    Registry {
        reference: String,
        what: String,
        #[source]
        source: RegistryError,
    },
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: impl Into<String>, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.into(),
            digest: digest(&bytes),
            bytes,
        }
    }

    /// `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }

    /// An image index or a manifest list (else an image manifest).
    pub fn is_index(&self) -> bool {
        is_index(&self.media_type)
    }
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == INDEX || media_type == DOCKER_LIST
}

pub(crate) fn is_manifest(media_type: &str) -> bool {
    media_type == MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `sha256:` and the first 12 hex digits, for messages.
pub fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 1) + 12;
    digest.get(..end).unwrap_or(digest)
}

/// JSON bytes; serializing a `Value` built here cannot fail.
pub(crate) fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
