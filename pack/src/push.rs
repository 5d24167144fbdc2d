//! Pushes a [`Layout`] through the OCI distribution API (oci-client): every config and layer the
//! registry lacks (those above [`CHUNKED_ABOVE`] in chunks, with progress), then the manifests
//! under an index by digest, then the target under the tag.

use crate::{Blob, Error, Layout, short};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::fmt;
use std::sync::Arc;

/// Blobs larger than this go up in chunks, with progress after each.
pub const CHUNKED_ABOVE: usize = 1 << 20;
/// oci-client sends at most 4 MiB per PATCH.
const MAX_CHUNK: usize = 4 << 20;

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Plain HTTP to the registry of the reference (a local test registry).
    pub plain_http: bool,
    /// Accept any TLS certificate from the registry.
    pub insecure: bool,
    /// User name and password; anonymous when `None`. A bearer challenge is answered with them.
    pub credentials: Option<(String, String)>,
}

/// What a push reports while it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The registry has the blob already: not sent.
    Exists { digest: String, size: u64 },
    /// `sent` of `size` bytes are uploaded; blobs above [`CHUNKED_ABOVE`] report after each
    /// chunk, every blob once at `sent == size`.
    Sent {
        digest: String,
        sent: u64,
        size: u64,
    },
    /// A manifest or index is stored, under `reference` (a tag or a digest).
    Manifest { digest: String, reference: String },
}

pub type Observer = Arc<dyn Fn(Progress) + Send + Sync>;

/// Pushes `layout` as `reference` (`registry/repository[:tag]`); returns the digest the tag
/// now names.
pub async fn push(
    layout: &Layout,
    reference: &str,
    options: &PushOptions,
    observe: Observer,
) -> Result<String, Error> {
    let target: Reference = reference
        .parse()
        .map_err(|_| Error::Reference(reference.to_string()))?;
    if target.digest().is_some() {
        return Err(Error::Reference(reference.to_string()));
    }
    let auth = match &options.credentials {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let session = Session {
        client: client(&target, options, false).map_err(failed(reference, "set up the client"))?,
        target,
        auth,
        options,
        observe,
    };
    if let Err(e) = session.authenticate(&session.client).await {
        let what = match &e {
            OciDistributionError::AuthenticationFailure(_) => "authentication failed",
            _ => "could not reach the registry",
        };
        return Err(failed(reference, what)(e));
    }
    for blob in &layout.blobs {
        session
            .blob(blob)
            .await
            .map_err(|(what, e)| failed(reference, &what)(e))?;
    }
    for manifest in &layout.manifests {
        let by_digest = session.target.clone_with_digest(manifest.digest.clone());
        let what = format!("registry refused the manifest {}", short(&manifest.digest));
        session
            .manifest(&by_digest, manifest)
            .await
            .map_err(failed(reference, &what))?;
    }
    let what = if layout.target.is_index() {
        "registry refused the index"
    } else {
        "registry refused the manifest"
    };
    session
        .manifest(&session.target, &layout.target)
        .await
        .map_err(failed(reference, what))?;
    Ok(layout.target.digest.clone())
}

fn failed(reference: &str, what: &str) -> impl FnOnce(OciDistributionError) -> Error {
    let (reference, what) = (reference.to_string(), what.to_string());
    move |source| Error::Registry {
        reference,
        what,
        source: RegistryError(source),
    }
}

/// `monolithic`: every blob in one PUT instead of PATCHed chunks.
fn client(
    target: &Reference,
    options: &PushOptions,
    monolithic: bool,
) -> Result<Client, OciDistributionError> {
    // reqwest is built without a crypto provider of its own: ring, once per process (an
    // error only says one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if options.plain_http {
        ClientProtocol::HttpsExcept(vec![target.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::try_from(ClientConfig {
        protocol,
        accept_invalid_certificates: options.insecure,
        use_monolithic_push: monolithic,
        ..ClientConfig::default()
    })
}

/// A registry that takes no chunked uploads, or no chunks this small, says so with a spec
/// violation or a 4xx other than 401/403: the blob then goes up in one request.
fn chunks_refused(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::SpecViolationError(_) => true,
        OciDistributionError::ServerError { code, .. } => {
            (400..500).contains(code) && !matches!(*code, 401 | 403)
        }
        _ => false,
    }
}

struct Session<'a> {
    client: Client,
    target: Reference,
    auth: RegistryAuth,
    options: &'a PushOptions,
    observe: Observer,
}

impl Session<'_> {
    /// Stores the credentials in `client` and answers a bearer challenge with them.
    async fn authenticate(&self, client: &Client) -> Result<(), OciDistributionError> {
        client
            .auth(&self.target, &self.auth, RegistryOperation::Push)
            .await
            .map(drop)
    }

    async fn manifest(
        &self,
        reference: &Reference,
        manifest: &Blob,
    ) -> Result<(), OciDistributionError> {
        let content_type = http::HeaderValue::from_str(&manifest.media_type).map_err(|_| {
            OciDistributionError::GenericError(Some(format!(
                "invalid media type {:?}",
                manifest.media_type
            )))
        })?;
        self.client
            .push_manifest_raw(reference, manifest.bytes.clone(), content_type)
            .await?;
        (self.observe)(Progress::Manifest {
            digest: manifest.digest.clone(),
            reference: reference
                .digest()
                .or(reference.tag())
                .unwrap_or("latest")
                .to_string(),
        });
        Ok(())
    }

    /// One blob, unless the registry has it. Errors say what was being done.
    async fn blob(&self, blob: &Blob) -> Result<(), (String, OciDistributionError)> {
        let size = blob.bytes.len() as u64;
        let kind = if blob.media_type.contains("config") {
            "config"
        } else {
            "layer"
        };
        let exists = self
            .client
            .blob_exists(&self.target, &blob.digest)
            .await
            .map_err(|e| {
                let what = format!("could not ask for {kind} {}", short(&blob.digest));
                (what, e)
            })?;
        if exists {
            (self.observe)(Progress::Exists {
                digest: blob.digest.clone(),
                size,
            });
            return Ok(());
        }
        let data = bytes::Bytes::from(blob.bytes.clone());
        let sent = if blob.bytes.len() <= CHUNKED_ABOVE {
            self.client
                .push_blob(&self.target, data.clone(), &blob.digest)
                .await
                .map(drop)
        } else {
            self.chunks(blob, data.clone()).await
        };
        let sent = match sent {
            Err(e) if chunks_refused(&e) => self.whole(blob, data).await,
            other => other,
        };
        sent.map_err(|e| {
            let what = format!("upload of {kind} {} failed", short(&blob.digest));
            (what, e)
        })?;
        (self.observe)(Progress::Sent {
            digest: blob.digest.clone(),
            sent: size,
            size,
        });
        Ok(())
    }

    /// `data` in chunks of 1 to 4 MiB (a twentieth of it), reporting progress before each.
    async fn chunks(&self, blob: &Blob, data: bytes::Bytes) -> Result<(), OciDistributionError> {
        let size = data.len() as u64;
        let chunk = (data.len() / 20).clamp(CHUNKED_ABOVE, MAX_CHUNK);
        let chunks: Vec<bytes::Bytes> = (0..data.len())
            .step_by(chunk)
            .map(|start| data.slice(start..data.len().min(start + chunk)))
            .collect();
        let (digest, report) = (blob.digest.clone(), Arc::clone(&self.observe));
        let mut sent = 0u64;
        // The client asks for the next chunk once the last one is stored: report then.
        let stream = futures_util::stream::iter(chunks).map(move |chunk| {
            report(Progress::Sent {
                digest: digest.clone(),
                sent,
                size,
            });
            sent += chunk.len() as u64;
            Ok::<_, OciDistributionError>(chunk)
        });
        self.client
            .push_blob_stream(&self.target, stream, &blob.digest, Some(size))
            .await
            .map(drop)
    }

    /// `data` in one PUT, through a client of its own that pushes so.
    async fn whole(&self, blob: &Blob, data: bytes::Bytes) -> Result<(), OciDistributionError> {
        let client = client(&self.target, self.options, true)?;
        self.authenticate(&client).await?;
        client
            .push_blob(&self.target, data, &blob.digest)
            .await
            .map(drop)
    }
}

/// A registry's answer, said briefly: its OCI error codes and messages when it sent them.
#[derive(Debug)]
pub struct RegistryError(pub OciDistributionError);

const CREDENTIALS: &str = "credentials: --username with --password or --password-stdin, \
                           or WASM_OCI_USERNAME and WASM_OCI_PASSWORD";

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            OciDistributionError::ServerError { code, message, .. } => {
                let said = errors(message).unwrap_or_else(|| clip(message.trim(), 300));
                if said.is_empty() {
                    write!(f, "HTTP {code}")?;
                } else {
                    write!(f, "HTTP {code}: {said}")?;
                }
                if matches!(*code, 401 | 403) {
                    write!(f, " (give {CREDENTIALS})")?;
                }
                Ok(())
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let said = serde_json::to_string(envelope)
                    .ok()
                    .and_then(|s| errors(&s));
                write!(f, "{}", said.unwrap_or_else(|| envelope.to_string()))
            }
            OciDistributionError::UnauthorizedError { .. } => {
                write!(f, "not authorized (give {CREDENTIALS})")
            }
            other => write!(f, "{other}"),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// `CODE: message (detail)` for each error of an OCI error body.
fn errors(body: &str) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    let said: Vec<String> = body["errors"]
        .as_array()?
        .iter()
        .map(|e| {
            let code = e["code"].as_str().unwrap_or("UNKNOWN");
            let message = e["message"].as_str().unwrap_or_default();
            match &e["detail"] {
                serde_json::Value::Null => format!("{code}: {message}"),
                detail => format!("{code}: {message} ({})", clip(&detail.to_string(), 200)),
            }
        })
        .collect();
    (!said.is_empty()).then(|| said.join("; "))
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod fake;

#[cfg(test)]
mod tests;
