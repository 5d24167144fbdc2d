//! containerd's event stream as `ctr events` prints it, collected while a step runs.

use crate::containerd::{Containerd, wait_for};
use anyhow::{Context, Result};
use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `ctr events`, subscribed (see [`Events::watch`]) until [`Events::stop`] returns what it
/// printed.
pub struct Events {
    child: Child,
    seen: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Events {
    /// Starts `ctr events` and returns once it receives events: after it printed the
    /// `/images/create` of a probe tag of `image` made for the purpose.
    pub fn watch(c: &Containerd, image: &str) -> Result<Events> {
        let mut child = c
            .ctr_command(&["events"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("run ctr events")?;
        let seen = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().context("ctr events' stdout")?;
        let sink = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let events = Events {
            child,
            seen,
            reader: Some(reader),
        };
        let probe = format!("localhost/soak/probe:{}", std::process::id());
        let subscribed = wait_for(Duration::from_secs(10), || {
            let _ = c.ctr(&["images", "rm", &probe]);
            let _ = c.ctr(&["images", "tag", image, &probe]);
            let seen = events.seen.lock().map(|s| s.clone()).unwrap_or_default();
            seen.contains(&probe).then_some(())
        });
        let _ = c.ctr(&["images", "rm", &probe]);
        subscribed.context("ctr events received nothing within 10 s")?;
        Ok(events)
    }

    pub fn so_far(&self) -> String {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stop(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// TaskExit lines of `seen` for container `id`.
pub fn exits<'a>(seen: &'a str, id: &str) -> Vec<&'a str> {
    seen.lines()
        .filter(|l| l.contains("/tasks/exit") && l.contains(&format!("\"container_id\":\"{id}\"")))
        .collect()
}
