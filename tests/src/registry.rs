//! A real OCI registry on loopback: Debian's `docker-registry` with its own config, storage in a
//! temp dir, optionally behind htpasswd basic auth. Stopped and removed on drop.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// A registry anyone may push to.
    pub fn start() -> Result<Registry> {
        Self::start_with(None)
    }

    /// A registry that takes pushes and pulls only from `user` with `password` (basic auth).
    pub fn start_with_auth(user: &str, password: &str) -> Result<Registry> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("wasmtime-shim-registry.")
            .tempdir()?;
        // A free port: bound, read and released just before the registry binds it.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let host = format!("127.0.0.1:{port}");
        let mut auth_section = String::new();
        if let Some((user, password)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, password])
                .output()
                .context("run htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            }
            auth_section = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {host}\n{auth_section}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start docker-registry")?;
        let mut registry = Registry { host, dir, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = registry.child.try_wait()? {
                bail!("docker-registry exited ({status}): {}", registry.log());
            }
            if let Ok(code) = registry.get_status("/v2/")
                && (code == 200 || code == 401)
            {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not answer: {}", registry.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `host/repository:tag`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.host)
    }

    /// Where the registry keeps the bytes of blob `digest` (`sha256:<hex>`), for tests that
    /// corrupt it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Writes containerd's `hosts.toml` for this registry (plain HTTP) under `certs_d`
    /// (a registry `config_path`).
    pub fn write_hosts_toml(&self, certs_d: &Path) -> Result<()> {
        let dir = certs_d.join(&self.host);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{h}\"\n\n[host.\"http://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                h = self.host
            ),
        )?;
        Ok(())
    }

    /// The HTTP status of `GET path`.
    fn get_status(&self, path: &str) -> Result<u16> {
        let mut stream = TcpStream::connect(&self.host)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        Ok(code)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
