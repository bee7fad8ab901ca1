//! One agent per data directory: `<data_dir>/.agent.lock`.
//!
//! Two agents on one set of outboxes (a desktop session and an ssh `dbus-run-session`, each
//! with its session bus and D-Bus activation) flushed the same queue and sent most mail twice.
//! The agent takes an exclusive `flock` on `.agent.lock` before it opens any outbox and holds
//! it while it runs; the file says who holds it ([`Owner`]: pid, bus, bus address), so that a
//! second agent can say whom it gives way to and the CLI can reach the one that runs.
//!
//! Others only look ([`holder`]): they take a shared lock for an instant, which fails while
//! an agent holds the exclusive one. An agent starting at that instant would fail its
//! exclusive try without an agent in the way: it tells the two apart by trying a shared lock
//! itself (refused only by an exclusive holder) and tries again.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::error::OutboxError;
use crate::fsutil::FILE_MODE;

/// The lock file's name in the data directory.
pub const AGENT_LOCK: &str = ".agent.lock";

/// The most of the lock file read: a pid and a bus address.
const MAX_RECORD: u64 = 4096;

/// How long a starting agent tries while only lookers hold the lock.
const TRY_FOR: Duration = Duration::from_secs(2);

/// Who holds the lock: what `.agent.lock` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The agent's process id.
    pub pid: u32,
    /// `"session"` or `"system"`: the bus it serves `org.linkrelay.Agent` on.
    pub bus: String,
    /// That bus's address (`unix:path=...`), where the CLI reaches it.
    pub address: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {}, serving org.linkrelay.Agent on the {} bus at {}",
            self.pid, self.bus, self.address
        )
    }
}

/// The data directory's lock, held: dropping it lets another agent in.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another agent holds it; what it wrote, when it could be read.
    #[error("another linkrelayd ({}) holds {}", .owner.as_ref().map_or("whose record cannot be read".to_owned(), |o| o.to_string()), .dir.display())]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// Its record.
        owner: Option<Owner>,
    },
    /// The lock file cannot be made or locked.
    #[error("{0}")]
    Outbox(#[from] OutboxError),
}

impl AgentLock {
    /// Takes the lock of `data_dir` (creating the directory, mode 0700, and the lock file,
    /// mode 0600) and writes `owner` into it, if the disk takes it.
    pub fn take(data_dir: &Path, owner: &Owner) -> Result<AgentLock, LockError> {
        crate::outbox::create_parents(data_dir)?;
        let path = data_dir.join(AGENT_LOCK);
        let io = |what: &str, e: std::io::Error| {
            OutboxError::io(format!("{what} {}", path.display()), e)
        };
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| io("opening", e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))
            .map_err(|e| io("setting the mode of", e.into()))?;
        let deadline = Instant::now() + TRY_FOR;
        loop {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => return Err(io("locking", e.into()).into()),
            }
            // Refused: an agent (exclusive), or only lookers (shared)?
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(LockError::Held {
                        dir: data_dir.to_path_buf(),
                        owner: read_owner(&File::from(fd)),
                    });
                }
                Ok(()) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(()) | Err(_) => {
                    return Err(io(
                        "locking",
                        std::io::Error::other("others kept looking at it for 2 s"),
                    )
                    .into());
                }
            }
        }
        let mut file = File::from(fd);
        // The record only says who: on a full disk it may stay empty, and the lock still
        // keeps others out ([`holder`] then gives `Some(None)`).
        if let Ok(record) = serde_json::to_vec(owner) {
            let _ = file
                .set_len(0)
                .and_then(|()| file.write_all_at(&record, 0))
                .and_then(|()| file.flush());
        }
        Ok(AgentLock { _file: file })
    }
}

/// The agent that holds the lock of `data_dir`, if one does (`Some(None)` when its record
/// cannot be read, as for a moment after it took the lock).
pub fn holder(data_dir: &Path) -> Option<Option<Owner>> {
    let fd = rustix::fs::open(
        data_dir.join(AGENT_LOCK),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
        Err(rustix::io::Errno::WOULDBLOCK) => Some(read_owner(&File::from(fd))),
        _ => None,
    }
}

fn read_owner(file: &File) -> Option<Owner> {
    let mut bytes = Vec::new();
    file.take(MAX_RECORD).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            bus: "session".into(),
            address: format!("unix:path=/run/user/1000/bus{pid}"),
        }
    }

    #[test]
    fn the_second_agent_is_told_who_holds_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("share/linkrelay");
        assert_eq!(holder(&data), None);
        let first = AgentLock::take(&data, &owner(11)).unwrap();
        assert_eq!(holder(&data), Some(Some(owner(11))));
        match AgentLock::take(&data, &owner(22)) {
            Err(e @ LockError::Held { .. }) => {
                let text = e.to_string();
                assert!(text.contains("pid 11"), "{text}");
                assert!(
                    text.contains("on the session bus at unix:path=/run/user/1000/bus11"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let mode = std::fs::metadata(data.join(AGENT_LOCK))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(first);
        assert_eq!(holder(&data), None);
        let _second = AgentLock::take(&data, &owner(22)).unwrap();
        assert_eq!(holder(&data), Some(Some(owner(22))));
    }

    #[test]
    fn a_look_at_the_lock_at_the_moment_an_agent_starts_does_not_keep_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        drop(AgentLock::take(&data, &owner(1)).unwrap());
        // A looker (sendmail) holds the shared lock while the agent starts.
        let fd = rustix::fs::open(
            data.join(AGENT_LOCK),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared).unwrap();
        let looker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(fd);
        });
        let lock = AgentLock::take(&data, &owner(2));
        looker.join().unwrap();
        assert!(lock.is_ok(), "{lock:?}");
    }
}
