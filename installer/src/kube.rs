//! Labelling the node through the Kubernetes API when the installer runs in a pod: the
//! RuntimeClass schedules Wasm pods only onto nodes with the label.

use crate::Error;
use std::path::Path;

/// The label the installer sets, and RuntimeClass.yaml's `scheduling.nodeSelector` uses.
pub const LABEL: &str = "wasmtime-shim/installed";

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server from inside a pod.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `https://host:port`.
    pub server: String,
    pub token: String,
    /// PEM of the cluster CA; `None` only for a plain `http://` server.
    pub ca_pem: Option<Vec<u8>>,
    pub node: String,
}

impl Cluster {
    /// The in-cluster configuration (service account token and CA, `KUBERNETES_SERVICE_*`,
    /// and `NODE_NAME` from the downward API). `None` outside a cluster.
    pub fn in_cluster() -> Result<Option<Cluster>, Error> {
        let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return Ok(None);
        };
        let node = std::env::var("NODE_NAME").map_err(|_| {
            Error::Kubernetes(
                "running in a cluster, but NODE_NAME is not set (give it from the downward API: \
                 fieldRef spec.nodeName)"
                    .into(),
            )
        })?;
        let read = |name: &str| {
            let p = Path::new(SERVICE_ACCOUNT).join(name);
            std::fs::read(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Some(Cluster {
            server: format!("https://{host}:{port}"),
            token: String::from_utf8_lossy(&read("token")?).trim().to_string(),
            ca_pem: Some(read("ca.crt")?),
            node,
        }))
    }

    fn agent(&self) -> Result<ureq::Agent, Error> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)));
        if let Some(pem) = &self.ca_pem {
            let cert = ureq::tls::Certificate::from_pem(pem)
                .map_err(|e| Error::Kubernetes(format!("the cluster CA certificate: {e}")))?;
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                    .build(),
            );
        }
        Ok(ureq::Agent::new_with_config(config.build()))
    }

    /// Sets (`Some`) or removes (`None`) the label on this node, with a JSON merge patch.
    pub fn label(&self, value: Option<&str>) -> Result<(), Error> {
        let url = format!("{}/api/v1/nodes/{}", self.server, self.node);
        let body = label_patch(value);
        let mut resp = self
            .agent()?
            .patch(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/merge-patch+json")
            .header("Accept", "application/json")
            .send(body.as_bytes())
            .map_err(|e| Error::Kubernetes(format!("PATCH {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Error::Kubernetes(format!(
                "PATCH {url}: {status}: {}",
                text.chars().take(500).collect::<String>()
            )));
        }
        Ok(())
    }
}

/// The merge patch that sets or removes the label.
pub fn label_patch(value: Option<&str>) -> String {
    serde_json::json!({ "metadata": { "labels": { LABEL: value } } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A one-request HTTP server standing in for the API server (none can run here): returns
    /// the request line, headers and body it received.
    fn serve_once(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let reply =
                format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}");
            s.write_all(reply.as_bytes()).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (format!("http://{addr}"), handle)
    }

    fn cluster(server: String) -> Cluster {
        Cluster {
            server,
            token: "t0ken".into(),
            ca_pem: None,
            node: "node-1".into(),
        }
    }

    #[test]
    fn label_is_a_merge_patch_on_the_node() {
        let (server, h) = serve_once("200 OK");
        cluster(server).label(Some("true")).unwrap();
        let req = h.join().unwrap();
        assert!(
            req.starts_with("PATCH /api/v1/nodes/node-1 HTTP/1.1\r\n"),
            "{req}"
        );
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer t0ken\r\n"), "{req}");
        assert!(
            lower.contains("content-type: application/merge-patch+json\r\n"),
            "{req}"
        );
        assert!(
            req.ends_with(r#"{"metadata":{"labels":{"wasmtime-shim/installed":"true"}}}"#),
            "{req}"
        );
    }

    #[test]
    fn removing_the_label_patches_null_and_errors_are_reported() {
        assert_eq!(
            label_patch(None),
            r#"{"metadata":{"labels":{"wasmtime-shim/installed":null}}}"#
        );
        let (server, h) = serve_once("403 Forbidden");
        let err = cluster(server).label(None).unwrap_err().to_string();
        h.join().unwrap();
        assert!(err.contains("403"), "{err}");
    }
}
