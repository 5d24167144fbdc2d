//! Waiting for systemd: the job that starts a guest's transient scope (cgroups-rs starts it over
//! D-Bus and returns without waiting, so the guest could still be outside its scope), watched as
//! runc watches it, through the manager's `JobRemoved` signal.

use crate::error::{Error, Result};
use std::sync::mpsc;
use std::time::Duration;
use zbus::blocking::{Connection, MessageIterator};
use zbus::message::Type;
use zbus::zvariant::OwnedObjectPath;

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long a job may take; systemd's own default job timeout for a scope is infinite, so this
/// is only a bound for a hung systemd (generous: emulated nodes are slow).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// A subscription to systemd's job completions, taken before starting a job so its end cannot be
/// missed.
pub struct Jobs {
    connection: Connection,
    removed: MessageIterator,
}

impl Jobs {
    pub fn watch() -> Result<Jobs> {
        let bus = |e: zbus::Error| Error::Internal(format!("systemd over D-Bus: {e}"));
        let connection = Connection::system().map_err(bus)?;
        let rule = zbus::MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(DESTINATION)
            .and_then(|b| b.interface(MANAGER))
            .and_then(|b| b.member("JobRemoved"))
            .map_err(bus)?
            .build();
        let removed = MessageIterator::for_match_rule(rule, &connection, Some(256)).map_err(bus)?;
        // systemd sends its signals only to clients that subscribed.
        connection
            .call_method(Some(DESTINATION), PATH, Some(MANAGER), "Subscribe", &())
            .map_err(bus)?;
        Ok(Jobs {
            connection,
            removed,
        })
    }

    /// Whether systemd has `unit` loaded.
    pub fn loaded(&self, unit: &str) -> bool {
        self.connection
            .call_method(Some(DESTINATION), PATH, Some(MANAGER), "GetUnit", &(unit,))
            .is_ok()
    }

    /// Waits until a job of `unit` ends (within [`JOB_TIMEOUT`]); an error unless it is `done`.
    /// `what` names the job in the error.
    pub fn wait(self, unit: &str, what: &str) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        let Jobs {
            connection,
            mut removed,
        } = self;
        let wanted = unit.to_string();
        // The iterator blocks without a timeout: it waits on a thread of its own, which ends with
        // the next signal after the wait was given up.
        let waiter = std::thread::Builder::new()
            .name("systemd-job".into())
            .spawn(move || {
                let _connection = connection;
                for message in removed.by_ref() {
                    let Ok(message) = message else { return };
                    let body = message.body();
                    let Ok((_, _, unit, result)) =
                        body.deserialize::<(u32, OwnedObjectPath, String, String)>()
                    else {
                        continue;
                    };
                    if unit == wanted {
                        let _ = tx.send(result);
                        return;
                    }
                    if tx.send(String::new()).is_err() {
                        return;
                    }
                }
            })
            .map_err(Error::io("start a thread to wait for systemd"))?;
        let deadline = std::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                // Another unit's job.
                Ok(result) if result.is_empty() => continue,
                Ok(result) if result == "done" => {
                    let _ = waiter.join();
                    return Ok(());
                }
                Ok(result) => {
                    return Err(Error::Internal(format!(
                        "systemd could not {what} unit {unit}: the job ended with {result:?}"
                    )));
                }
                Err(_) => {
                    return Err(Error::Internal(format!(
                        "systemd did not {what} unit {unit} within {} s",
                        JOB_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
}
