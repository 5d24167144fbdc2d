//! The lifecycle of one container, as a pure state machine.

use std::time::SystemTime;

/// How a guest ended: its exit status and when the shim saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Where a container is in its life. `Created`: the guest process exists, its program is
/// compiled and linked, and it waits for Start. `Running`: the program runs. `Paused`: its cgroup
/// is frozen. `Stopped`: the guest process has exited and been reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped(Exit),
}

impl Status {
    pub fn can_start(&self) -> bool {
        matches!(self, Status::Created)
    }

    /// A signal can only reach a guest process that still exists.
    pub fn can_kill(&self) -> bool {
        !matches!(self, Status::Stopped(_))
    }

    /// A running (or paused) guest must be killed before the task is deleted; a created one is
    /// killed by the delete itself, as runc does.
    pub fn can_delete(&self) -> bool {
        !matches!(self, Status::Running | Status::Paused)
    }

    pub fn can_pause(&self) -> bool {
        matches!(self, Status::Running)
    }

    pub fn can_resume(&self) -> bool {
        matches!(self, Status::Paused)
    }

    pub fn exit(&self) -> Option<Exit> {
        match self {
            Status::Stopped(exit) => Some(*exit),
            _ => None,
        }
    }

    /// The state after the guest exited. The first exit wins.
    pub fn stopped(self, exit: Exit) -> Status {
        match self {
            Status::Stopped(first) => Status::Stopped(first),
            _ => Status::Stopped(exit),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped(_) => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let exit = Exit {
            status: 3,
            at: SystemTime::UNIX_EPOCH,
        };
        let later = Exit {
            status: 9,
            at: SystemTime::now(),
        };
        let table = [
            // status, can_start, can_kill, can_delete
            (Status::Created, true, true, true),
            (Status::Running, false, true, false),
            (Status::Paused, false, true, false),
            (Status::Stopped(exit), false, false, true),
        ];
        for (status, start, kill, delete) in table {
            assert_eq!(status.can_start(), start, "{status:?}");
            assert_eq!(status.can_kill(), kill, "{status:?}");
            assert_eq!(status.can_delete(), delete, "{status:?}");
        }
        assert_eq!(Status::Running.stopped(exit).exit(), Some(exit));
        assert_eq!(Status::Stopped(exit).stopped(later).exit(), Some(exit));
        assert_eq!(Status::Created.exit(), None);
        assert!(Status::Running.can_pause() && !Status::Paused.can_pause());
        assert!(Status::Paused.can_resume() && !Status::Running.can_resume());
        assert_eq!(Status::Paused.stopped(exit).exit(), Some(exit));
    }
}
