//! Programs shipped as Wasm layers of the container's image, read from containerd's content
//! store over its gRPC API.
//!
//! Some formats keep the `.wasm` outside any filesystem: the CNCF Wasm OCI artifact (config
//! `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) and images whose layers
//! are raw Wasm ([`WASM_LAYER_TYPES`]). containerd unpacks nothing from them, so the root
//! filesystem is empty. When `process.args[0]` is not found in the root filesystem (or there are
//! no args), the guest asks containerd for the container's image and, if it has Wasm layers,
//! runs one of them:
//!
//! - with one Wasm layer, that layer, with `process.args` as the guest's argv unchanged (an
//!   empty list becomes the layer's title alone);
//! - with several, the layer whose `org.opencontainers.image.title` is the base name of
//!   `args[0]`.
//!
//! For an image index, the `wasi`/`wasm` manifests are tried first, then the others; a
//! manifest whose content containerd has not pulled is skipped (and named in the error if no
//! manifest has Wasm layers). The compile cache is keyed by the layer digest, so a start that
//! hits the cache reads only the manifests: never the layer.

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::{self, Code, Request, transport::Channel};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use wasmtime_shim_runtime::{Blob, Error};

/// Layer media types that hold a Wasm module or component as raw bytes.
pub const WASM_LAYER_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

const TITLE: &str = "org.opencontainers.image.title";
/// Manifests and configs larger than this are refused: they are JSON of a few KiB.
const MAX_JSON: i64 = 4 << 20;
/// A Wasm layer larger than this is refused before it is read.
const MAX_LAYER: i64 = 1 << 30;

/// Where the guest finds its container's image: containerd's gRPC socket, the namespace, the
/// container id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSource {
    pub address: String,
    pub namespace: String,
    pub container: String,
}

/// The program found in the image: the layer, and the argv to run it with.
pub struct WasmProgram {
    pub layer: Layer,
    pub argv: Vec<String>,
}

/// A Wasm layer in containerd's content store.
pub struct Layer {
    client: Client,
    digest: String,
    size: i64,
    name: String,
}

impl Blob for Layer {
    fn digest(&self) -> &str {
        &self.digest
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> Result<Vec<u8>, Error> {
        if !(0..=MAX_LAYER).contains(&self.size) {
            return Err(Error::Image(format!(
                "{}: size {} is over the limit of {MAX_LAYER} bytes",
                self.name, self.size
            )));
        }
        let bytes = self.client.read(&self.digest, self.size)?;
        let actual = sha256(&bytes);
        if actual != self.digest || bytes.len() as i64 != self.size {
            return Err(Error::Image(format!(
                "{}: the content containerd holds for {} does not match it (read {} bytes with \
                 digest {actual}, the manifest says {} bytes): the content store is corrupt; \
                 remove the image and pull it again",
                self.name,
                self.digest,
                bytes.len(),
                self.size
            )));
        }
        Ok(bytes)
    }
}

/// The Wasm program of the container's image, `None` when the image has no Wasm layer (or the
/// container has no image).
pub fn find(source: &ImageSource, args: &[String]) -> Result<Option<WasmProgram>, Error> {
    let client = Client::connect(source)?;
    let Some(image) = client.container_image(&source.container)? else {
        return Ok(None);
    };
    let Some(target) = client.image_target(&image)? else {
        tracing::debug!(image, "the container's image is gone from containerd");
        return Ok(None);
    };
    let mut missing = Vec::new();
    let Some(layers) = client.wasm_layers(&target, &mut missing)? else {
        if !missing.is_empty() {
            return Err(Error::Image(format!(
                "{image} has no Wasm layer in what containerd pulled; its {} manifest was not \
                 pulled (containerd pulls the node's platform only): pull it with `--platform \
                 wasi/wasm` (ctr) or set the runtime's platform in containerd's CRI config",
                missing.join(", ")
            )));
        }
        return Ok(None);
    };
    let (layer, argv) = select(&image, &layers, args)?;
    tracing::debug!(
        image,
        digest = layer.digest,
        "running the image's Wasm layer"
    );
    Ok(Some(WasmProgram {
        layer: Layer {
            client,
            digest: layer.digest.clone(),
            size: layer.size,
            name: format!("layer {} of {image} ({})", layer.title, layer.digest),
        },
        argv,
    }))
}

/// A Wasm layer as the manifest describes it.
#[derive(Debug, Clone, PartialEq)]
struct LayerDesc {
    digest: String,
    size: i64,
    title: String,
}

/// Picks the layer `args` names and the guest's argv (see the module comment).
fn select<'a>(
    image: &str,
    layers: &'a [LayerDesc],
    args: &[String],
) -> Result<(&'a LayerDesc, Vec<String>), Error> {
    let arg0 = args.first().map(String::as_str).unwrap_or("");
    let base = arg0.rsplit('/').next().unwrap_or(arg0);
    let layer = match layers {
        [only] => only,
        _ => layers
            .iter()
            .find(|l| !base.is_empty() && l.title == base)
            .ok_or_else(|| {
                let titles: Vec<&str> = layers.iter().map(|l| l.title.as_str()).collect();
                Error::Image(format!(
                    "{image} has {} Wasm layers ({}); the command must name one of them",
                    layers.len(),
                    titles.join(", ")
                ))
            })?,
    };
    let argv = if arg0.is_empty() {
        std::iter::once(layer.title.clone())
            .chain(args.iter().skip(1).cloned())
            .collect()
    } else {
        args.to_vec()
    };
    Ok((layer, argv))
}

/// The Wasm layers of `manifest` (a manifest's JSON), `None` if it has none.
fn layers_of(manifest: &Value) -> Option<Vec<LayerDesc>> {
    let layers: Vec<LayerDesc> = manifest
        .get("layers")?
        .as_array()?
        .iter()
        .filter(|l| {
            l.get("mediaType")
                .and_then(Value::as_str)
                .is_some_and(|t| WASM_LAYER_TYPES.contains(&t))
        })
        .filter_map(|l| {
            let digest = l.get("digest")?.as_str()?.to_string();
            let title = l
                .pointer(&format!("/annotations/{}", TITLE.replace('/', "~1")))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}.wasm", short(&digest)));
            Some(LayerDesc {
                size: l.get("size")?.as_i64()?,
                digest,
                title,
            })
        })
        .collect();
    (!layers.is_empty()).then_some(layers)
}

/// The manifests of an index, `wasi`/`wasm` platforms first: (digest, size, platform).
fn index_manifests(index: &Value) -> Vec<(String, i64, String)> {
    let mut manifests: Vec<(bool, String, i64, String)> = index
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let os = m
                .pointer("/platform/os")
                .and_then(Value::as_str)
                .unwrap_or("");
            let arch = m
                .pointer("/platform/architecture")
                .and_then(Value::as_str)
                .unwrap_or("");
            let wasm = arch == "wasm" || os.starts_with("wasi");
            Some((
                !wasm,
                m.get("digest")?.as_str()?.to_string(),
                m.get("size")?.as_i64()?,
                format!("{os}/{arch}"),
            ))
        })
        .collect();
    // Stable: the index's own order within each group.
    manifests.sort_by_key(|m| m.0);
    manifests
        .into_iter()
        .map(|(_, d, s, p)| (d, s, p))
        .collect()
}

fn is_index(media_type: &str, json: &Value) -> bool {
    media_type.ends_with("image.index.v1+json")
        || media_type.ends_with("manifest.list.v2+json")
        || json.get("manifests").is_some()
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A blocking containerd client for one guest: its own single-threaded runtime.
struct Client {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    namespace: String,
}

impl Client {
    fn connect(source: &ImageSource) -> Result<Client, Error> {
        let socket = source
            .address
            .strip_prefix("unix://")
            .unwrap_or(&source.address)
            .to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| io_error("start a runtime for containerd's API", e))?;
        let channel = runtime
            .block_on(containerd_client::connect(&socket))
            .map_err(|e| io_error(format!("connect to containerd at {socket}"), e))?;
        Ok(Client {
            runtime,
            channel,
            namespace: source.namespace.clone(),
        })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, Error> {
        let mut request = Request::new(message);
        let namespace = self.namespace.parse().map_err(|_| {
            Error::InvalidSpec(format!(
                "namespace {:?} is not a valid name",
                self.namespace
            ))
        })?;
        request
            .metadata_mut()
            .insert("containerd-namespace", namespace);
        Ok(request)
    }

    /// The image name of `container`, `None` if it has none.
    fn container_image(&self, container: &str) -> Result<Option<String>, Error> {
        let request = self.request(GetContainerRequest {
            id: container.to_string(),
        })?;
        let mut client = ContainersClient::new(self.channel.clone());
        let response = self
            .runtime
            .block_on(client.get(request))
            .map_err(|s| api_error(&format!("get container {container}"), s))?;
        Ok(response
            .into_inner()
            .container
            .map(|c| c.image)
            .filter(|i| !i.is_empty()))
    }

    /// The descriptor image `name` points at, `None` if there is no such image.
    fn image_target(&self, name: &str) -> Result<Option<(String, String, i64)>, Error> {
        let request = self.request(GetImageRequest {
            name: name.to_string(),
        })?;
        let mut client = ImagesClient::new(self.channel.clone());
        match self.runtime.block_on(client.get(request)) {
            Ok(response) => Ok(response
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(|t| (t.media_type, t.digest, t.size))),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(api_error(&format!("get image {name}"), status)),
        }
    }

    /// The Wasm layers of the manifest `target` names, or of the first manifest of an index
    /// that has some. Manifests containerd does not hold are added to `missing`.
    fn wasm_layers(
        &self,
        (media_type, digest, size): &(String, String, i64),
        missing: &mut Vec<String>,
    ) -> Result<Option<Vec<LayerDesc>>, Error> {
        let Some(json) = self.read_json(digest, *size)? else {
            missing.push(digest.clone());
            return Ok(None);
        };
        if !is_index(media_type, &json) {
            return Ok(layers_of(&json));
        }
        for (digest, size, platform) in index_manifests(&json) {
            match self.read_json(&digest, size)? {
                Some(manifest) => {
                    if let Some(layers) = layers_of(&manifest) {
                        return Ok(Some(layers));
                    }
                }
                None if platform.starts_with("wasi") || platform.ends_with("/wasm") => {
                    missing.push(platform)
                }
                None => {}
            }
        }
        Ok(None)
    }

    /// A manifest or index, checked against its digest; `None` if containerd does not hold it.
    fn read_json(&self, digest: &str, size: i64) -> Result<Option<Value>, Error> {
        if !(0..=MAX_JSON).contains(&size) {
            return Err(Error::Image(format!(
                "manifest {digest} of {size} bytes is over the limit of {MAX_JSON}"
            )));
        }
        let bytes = match self.read(digest, size) {
            Ok(bytes) => bytes,
            Err(Error::Image(message)) if message.starts_with(NOT_FOUND) => return Ok(None),
            Err(err) => return Err(err),
        };
        if sha256(&bytes) != digest {
            return Err(Error::Image(format!(
                "manifest {digest} in containerd's content store does not match its digest: \
                 the content store is corrupt; remove the image and pull it again"
            )));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Image(format!("manifest {digest} is not valid JSON: {e}")))
    }

    /// The blob `digest`, at most `size` bytes (more is an error: the blob does not match).
    fn read(&self, digest: &str, size: i64) -> Result<Vec<u8>, Error> {
        let request = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })?;
        let mut client = ContentClient::new(self.channel.clone());
        self.runtime.block_on(async {
            let mut stream = client
                .read(request)
                .await
                .map_err(|s| read_error(digest, s))?
                .into_inner();
            let mut bytes = Vec::with_capacity(size as usize);
            while let Some(chunk) = stream.message().await.map_err(|s| read_error(digest, s))? {
                if (bytes.len() + chunk.data.len()) as i64 > size {
                    return Err(Error::Image(format!(
                        "the content containerd holds for {digest} is larger than the {size} \
                         bytes its descriptor says: the content store is corrupt; remove the \
                         image and pull it again"
                    )));
                }
                bytes.extend_from_slice(&chunk.data);
            }
            Ok(bytes)
        })
    }
}

const NOT_FOUND: &str = "not in containerd's content store: ";

fn read_error(digest: &str, status: tonic::Status) -> Error {
    if status.code() == Code::NotFound {
        return Error::Image(format!("{NOT_FOUND}{digest}"));
    }
    api_error(&format!("read {digest} from the content store"), status)
}

fn api_error(what: &str, status: tonic::Status) -> Error {
    Error::Image(format!("containerd: {what}: {}", status.message()))
}

fn io_error(
    context: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Io {
        context: context.into(),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests;
