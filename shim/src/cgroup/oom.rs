//! OOM kills seen while the guest runs: `memory.events` of a v2 cgroup watched with inotify, as
//! containerd watches its runc containers. Reading it only after the guest exited misses them
//! with the systemd driver: systemd removes an emptied scope's cgroup at once.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The OOM kill count of one cgroup, and the inotify watch on it.
pub struct OomWatch {
    inotify: AsyncFd<OwnedFd>,
    events: PathBuf,
    seen: u64,
}

impl OomWatch {
    /// Watches `memory.events` in the v2 cgroup directory `dir`, the container's own: kills
    /// counted before this call are reported too.
    pub fn new(dir: &Path) -> std::io::Result<OomWatch> {
        use rustix::fs::inotify;
        let events = dir.join("memory.events");
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(&fd, &events, inotify::WatchFlags::MODIFY)?;
        // SAFETY: `fd` is the inotify instance just created; the AsyncFd owns it and nothing
        // closes or replaces it while registered.
        let inotify = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(OomWatch {
            inotify,
            events,
            seen: 0,
        })
    }

    /// Waits until the cgroup's OOM kill count grows, and returns it; `None` once the cgroup is
    /// gone (or cannot be watched any more).
    pub async fn next(&mut self) -> Option<u64> {
        loop {
            if let Some(kills) = self.grew() {
                return Some(kills);
            }
            if !self.events.exists() {
                return None;
            }
            let mut ready = self.inotify.readable().await.ok()?;
            // Drain the queued events: only the count matters.
            let mut buf = [0u8; 1024];
            loop {
                match rustix::io::read(ready.get_inner(), &mut buf) {
                    Ok(n) if n > 0 => continue,
                    Err(rustix::io::Errno::AGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    _ => return None,
                }
            }
        }
    }

    /// Reads the count once more, without waiting: the new count if it grew.
    pub fn grew(&mut self) -> Option<u64> {
        let kills = oom_kills(&self.events)?;
        (kills > self.seen).then(|| {
            self.seen = kills;
            kills
        })
    }
}

/// The `oom_kill` count of a `memory.events` file.
fn oom_kills(events: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(events).ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(1));
        assert_eq!(parse_oom_kills("oom 3\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }

    /// The watch wakes for a write to the watched file and reports only an increase.
    #[tokio::test]
    async fn reports_increases_of_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let mut watch = OomWatch::new(dir.path()).unwrap();
        assert_eq!(watch.grew(), None);
        std::fs::write(&events, "oom 1\noom_kill 2\n").unwrap();
        assert_eq!(watch.grew(), Some(2), "kills before the first wait count");
        let writer = tokio::spawn({
            let events = events.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                std::fs::write(&events, "oom 1\noom_kill 2\n").unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                std::fs::write(&events, "oom 2\noom_kill 3\n").unwrap();
            }
        });
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next());
        assert_eq!(next.await.unwrap(), Some(3));
        writer.await.unwrap();
        std::fs::remove_file(&events).unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next());
        assert_eq!(next.await.unwrap(), None, "a removed cgroup ends the watch");
    }
}
