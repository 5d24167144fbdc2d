//! Guest exits, from the shim crate's reaper to whoever waits for them.
//!
//! The reaper reaps every child of the shim (guests, but also the zygote) and reports
//! `(pid, status)`. A guest may exit before the shim has recorded its pid, so an exit nobody
//! watches is kept, but only while a spawn is in flight: [`Exits::begin_spawn`] hands out a
//! ticket before the guest is forked, and [`Exits::watch`] with that ticket claims only an exit
//! recorded after the ticket was taken. An exit recorded while no spawn is pending (the
//! zygote's, say) is dropped, and the table is pruned as tickets end, so it does not grow, and an
//! old exit of a pid is not handed to a later guest that got the same pid.
//!
//! Residual race: the reaper frees a pid when it reaps it, before its exit reaches
//! [`Exits::notify`]. If, in that gap, the kernel gives the same pid to a guest being spawned
//! (the pid space must wrap around within that gap), the old exit is taken for the guest's.
//! Only a pidfd taken before the reap could tell the two apart.

use crate::state::Exit;
use containerd_shim::monitor::{Subject, Topic, monitor_subscribe};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::watch;

#[derive(Default)]
pub struct Exits {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    watched: HashMap<i32, watch::Sender<Option<Exit>>>,
    /// Exits nobody watched yet, with the sequence number current when each was recorded.
    unclaimed: HashMap<i32, (u64, Exit)>,
    /// The last sequence number handed out; a ticket takes the next one.
    sequence: u64,
    /// Pending spawn tickets by sequence number (a count, in case of equal numbers).
    pending: BTreeMap<u64, usize>,
}

/// A spawn in flight. While it lives, exits nobody watches are kept for it; drop it once the
/// guest's pid is watched (or the spawn failed).
pub struct SpawnTicket<'a> {
    exits: &'a Exits,
    sequence: u64,
}

impl Drop for SpawnTicket<'_> {
    fn drop(&mut self) {
        let mut inner = self.exits.lock();
        if let Some(count) = inner.pending.get_mut(&self.sequence) {
            *count -= 1;
            if *count == 0 {
                inner.pending.remove(&self.sequence);
            }
        }
        inner.prune();
    }
}

impl Inner {
    /// Drops the exits no pending ticket can claim: those recorded before the oldest one.
    fn prune(&mut self) {
        match self.pending.keys().next().copied() {
            Some(oldest) => self.unclaimed.retain(|_, (seen, _)| *seen >= oldest),
            None => self.unclaimed.clear(),
        }
    }
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the start of a spawn; take it before the guest is forked.
    pub fn begin_spawn(&self) -> SpawnTicket<'_> {
        let mut inner = self.lock();
        inner.sequence += 1;
        let sequence = inner.sequence;
        *inner.pending.entry(sequence).or_default() += 1;
        SpawnTicket {
            exits: self,
            sequence,
        }
    }

    /// A receiver that turns `Some` once `pid`, spawned under `ticket`, has exited.
    pub fn watch(&self, ticket: &SpawnTicket<'_>, pid: i32) -> watch::Receiver<Option<Exit>> {
        let mut inner = self.lock();
        let early = inner
            .unclaimed
            .remove(&pid)
            .filter(|(seen, _)| *seen >= ticket.sequence)
            .map(|(_, exit)| exit);
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
        let mut inner = self.lock();
        if let Some(tx) = inner.watched.remove(&pid) {
            let _ = tx.send(Some(exit));
        } else if !inner.pending.is_empty() {
            let seen = inner.sequence;
            inner.unclaimed.insert(pid, (seen, exit));
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

    fn status(rx: &watch::Receiver<Option<Exit>>) -> Option<u32> {
        rx.borrow().map(|e| e.status)
    }

    #[tokio::test]
    async fn exits_before_and_after_watching() {
        let exits = Exits::default();
        let ticket = exits.begin_spawn();
        exits.notify(10, 3);
        assert_eq!(
            wait(exits.watch(&ticket, 10)).await.map(|e| e.status),
            Some(3)
        );
        let rx = exits.watch(&ticket, 11);
        drop(ticket);
        assert!(rx.borrow().is_none());
        exits.notify(11, 137);
        assert_eq!(wait(rx).await.map(|e| e.status), Some(137));
    }

    /// The zygote and other children nobody watches leave nothing behind.
    #[test]
    fn unwatched_exits_are_not_kept() {
        let exits = Exits::default();
        for pid in 100..1100 {
            exits.notify(pid, 0);
        }
        assert_eq!(exits.lock().unclaimed.len(), 0);
        let ticket = exits.begin_spawn();
        exits.notify(5000, 0);
        assert_eq!(exits.lock().unclaimed.len(), 1);
        drop(ticket);
        assert_eq!(exits.lock().unclaimed.len(), 0);
    }

    /// An exit of pid P from before a spawn is not the exit of that spawn's guest, even if
    /// the guest got pid P again.
    #[test]
    fn an_old_exit_is_not_handed_to_a_recycled_pid() {
        let exits = Exits::default();
        // No spawn pending: dropped.
        exits.notify(42, 9);
        let ticket = exits.begin_spawn();
        assert_eq!(status(&exits.watch(&ticket, 42)), None);
        drop(ticket);

        // Recorded for an older spawn still in flight: not this one's.
        let older = exits.begin_spawn();
        exits.notify(43, 9);
        let newer = exits.begin_spawn();
        let rx = exits.watch(&newer, 43);
        assert_eq!(status(&rx), None);
        exits.notify(43, 0);
        assert_eq!(status(&rx), Some(0));
        drop((older, newer));
    }

    /// Entries the oldest pending spawn cannot claim are pruned when older tickets end.
    #[test]
    fn stale_entries_are_pruned_while_a_spawn_is_pending() {
        let exits = Exits::default();
        let first = exits.begin_spawn();
        exits.notify(7, 1);
        let second = exits.begin_spawn();
        exits.notify(8, 1);
        drop(first);
        let kept: Vec<i32> = exits.lock().unclaimed.keys().copied().collect();
        assert_eq!(kept, vec![8]);
        assert_eq!(status(&exits.watch(&second, 8)), Some(1));
    }
}
