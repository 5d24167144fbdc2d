//! Guest exits, from the shim crate's reaper to whoever waits for them.
//!
//! The reaper reaps every child and reports `(pid, status)`. A guest may exit before the shim
//! has recorded its pid, so unclaimed exits are kept until that pid is watched.

use crate::state::Exit;
use containerd_shim::monitor::{Subject, Topic, monitor_subscribe};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

#[derive(Default)]
pub struct Exits {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    watched: HashMap<i32, watch::Sender<Option<Exit>>>,
    unclaimed: HashMap<i32, Exit>,
}

impl Exits {
    /// Subscribes to the reaper; call before any guest is spawned.
    pub async fn start() -> Result<Arc<Exits>, containerd_shim::Error> {
        let exits = Arc::new(Exits::default());
        let mut subscription = monitor_subscribe(Topic::Pid).await?;
        let weak = Arc::downgrade(&exits);
        tokio::spawn(async move {
            while let Some(event) = subscription.rx.recv().await {
                let Subject::Pid(pid) = event.subject else {
                    continue;
                };
                let Some(exits) = weak.upgrade() else { break };
                exits.notify(pid, event.exit_code);
            }
        });
        Ok(exits)
    }

    /// A receiver that turns `Some` once `pid` has exited.
    pub fn watch(&self, pid: i32) -> watch::Receiver<Option<Exit>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let early = inner.unclaimed.remove(&pid);
        let (tx, rx) = watch::channel(early);
        if early.is_none() {
            inner.watched.insert(pid, tx);
        }
        rx
    }

    pub fn notify(&self, pid: i32, status: i32) {
        let exit = Exit {
            status: status as u32,
            at: SystemTime::now(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.watched.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(Some(exit));
            }
            None => {
                inner.unclaimed.insert(pid, exit);
            }
        }
    }
}

/// Waits until the exit is known.
pub async fn wait(mut rx: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    rx.wait_for(Option::is_some).await.ok().and_then(|v| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exits_before_and_after_watching() {
        let exits = Exits::default();
        exits.notify(10, 3);
        assert_eq!(wait(exits.watch(10)).await.map(|e| e.status), Some(3));
        let rx = exits.watch(11);
        assert!(rx.borrow().is_none());
        exits.notify(11, 137);
        assert_eq!(wait(rx).await.map(|e| e.status), Some(137));
    }
}
