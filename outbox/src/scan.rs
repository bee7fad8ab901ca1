//! Walking a folder one message at a time, for callers that must not hold a whole folder of
//! states at once (a queue of 100,000 messages is about 40 MB of [`MessageState`]s).
//!
//! [`Outbox::message_ids`] reads only the directory; [`Outbox::entry`] then reads one entry the way
//! [`Outbox::list`] treats it, so `message_ids` + `entry` per id gives what `list` gives, in the same
//! order, with one state in memory at a time. Keep the two in step when `list` changes.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::error::OutboxError;
use crate::fsutil::open_dir;
use crate::id::validate_id;
use crate::limits::STATE_MAX;
use crate::outbox::Outbox;
use crate::state::{Envelope, Folder, MessageState};

/// The message bytes in a message directory (as in `outbox.rs`).
const MESSAGE: &str = "message.eml";
/// The delivery state in a message directory.
const STATE: &str = "state.json";
/// Where an unreadable `state.json` of a queued message is kept.
const STATE_CORRUPT: &str = "state.json.corrupt";

impl Outbox {
    /// The ids of the messages of a folder, sorted (that is, in enqueue order): the names of
    /// its entries that are ids and directories (not links). No state file is read.
    pub fn message_ids(&self, folder: Folder) -> Result<Vec<String>, OutboxError> {
        let path = self.root().join(folder.as_str());
        let entries = fs::read_dir(&path)
            .map_err(|e| OutboxError::io(format!("reading {}", path.display()), e))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| OutboxError::io(format!("reading {}", path.display()), e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_id(&name).is_err() {
                continue;
            }
            // file_type() does not follow links: a link to a directory is not a message.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                ids.push(name);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// One entry of a folder as [`Outbox::list`] would return it: its state; `None` when it
    /// is gone meanwhile or (in `queue/`) cannot be read now. A `queue/` entry whose
    /// `state.json` is missing, corrupt or a link is moved to `failed/` (the bad file kept as
    /// `state.json.corrupt`, a new one giving the reason) and `None` is returned; in `sent/`
    /// and `failed/` such an entry comes back as a stand-in state with no recipients and the
    /// reason in `failure`.
    pub fn entry(&self, folder: Folder, id: &str) -> Option<MessageState> {
        match self.state(folder, id) {
            Ok(state) => Some(state),
            Err(OutboxError::NotFound(_)) => None,
            Err(e @ (OutboxError::Corrupt { .. } | OutboxError::Unsafe { .. })) => {
                let reason = format!("unusable state.json: {e}");
                if folder == Folder::Queue {
                    // Best effort: if even this fails the entry stays where it is and the
                    // rest of the queue goes on.
                    let _ = self.set_aside(id, &reason);
                    None
                } else {
                    Some(self.stand_in_for(folder, id, reason))
                }
            }
            // A transient error (EIO, EMFILE, ...): skip the entry this time.
            Err(OutboxError::Io { .. }) if folder == Folder::Queue => None,
            Err(e) => Some(self.stand_in_for(folder, id, e.to_string())),
        }
    }

    /// Opens a folder to read many of its entries ([`FolderReader::entry`]) with fewer
    /// system calls than [`Outbox::entry`] makes for each.
    pub fn reader(&self, folder: Folder) -> Result<FolderReader<'_>, OutboxError> {
        let path = self.root().join(folder.as_str());
        let dir = open_dir(&path)
            .map_err(|e| OutboxError::io(format!("opening {}", path.display()), e))?;
        Ok(FolderReader {
            outbox: self,
            folder,
            dir,
        })
    }

    /// Moves a queue entry whose state cannot be read to `failed/` (what `list` does).
    fn set_aside(&self, id: &str, reason: &str) -> Result<(), OutboxError> {
        let path = self.root().join(Folder::Queue.as_str()).join(id);
        let dir = open_dir(&path)
            .map_err(|e| OutboxError::io(format!("opening {}", path.display()), e))?;
        match rustix::fs::renameat(&dir, STATE, &dir, STATE_CORRUPT) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(OutboxError::io(
                    format!("renaming {}/{STATE}", path.display()),
                    e,
                ));
            }
        }
        drop(dir);
        let state = self.stand_in_for(Folder::Queue, id, reason.to_owned());
        self.finish_failed(&state)
    }

    /// A state standing in for one that cannot be read.
    fn stand_in_for(&self, folder: Folder, id: &str, reason: String) -> MessageState {
        let dir = self.root().join(folder.as_str()).join(id);
        let size = message_size(&dir);
        // The id starts with the enqueue time.
        let queued_at = id
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(crate::id::now_secs);
        let mut state = MessageState::new(id, &Envelope::default(), size, queued_at);
        state.failure = Some(reason);
        state
    }
}

/// The size of `message.eml` in a message directory, 0 when it cannot be seen.
fn message_size(dir: &Path) -> u64 {
    let Ok(fd) = open_dir(dir) else {
        return 0;
    };
    rustix::fs::statat(&fd, MESSAGE, AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| u64::try_from(st.st_size).unwrap_or(0))
        .unwrap_or(0)
}

/// A folder opened for reading many entries: [`FolderReader::entry`] opens
/// `<id>/state.json` relative to the folder in one `openat2` that follows no link
/// (`RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`), then reads it at its known size: four system
/// calls and a short path walk instead of seven and the whole path twice. Anything unusual
/// (an error, a state about another id, a kernel without `openat2`) goes through
/// [`Outbox::entry`], which says exactly what is wrong and acts on it.
pub struct FolderReader<'a> {
    outbox: &'a Outbox,
    folder: Folder,
    dir: OwnedFd,
}

impl FolderReader<'_> {
    /// What [`Outbox::entry`] gives for `id`, except that a reader never changes the outbox:
    /// a `queue/` entry it cannot use is skipped (`None`), not moved to `failed/`. Listings
    /// run at any time (the notifier's walk comes 500 ms after every change), and an entry
    /// that cannot be read may be one a writer is still filling in; the flusher, which owns
    /// the queue, is the one that sets unusable messages aside.
    pub fn entry(&self, id: &str) -> Option<MessageState> {
        if validate_id(id).is_ok()
            && let Some(state) = self.quick(id)
            && state.id == id
        {
            return Some(state);
        }
        match self.folder {
            Folder::Queue => self.outbox.state(Folder::Queue, id).ok(),
            folder => self.outbox.entry(folder, id),
        }
    }

    fn quick(&self, id: &str) -> Option<MessageState> {
        let path = format!("{id}/{STATE}");
        let fd = rustix::fs::openat2(
            &self.dir,
            path.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return None;
        }
        // Never by a claimed size above the cap: Outbox::entry says what is wrong then.
        let len = u64::try_from(st.st_size).ok().filter(|l| *l <= STATE_MAX)?;
        let len = usize::try_from(len).ok()?;
        let mut bytes = vec![0; len];
        let mut file = File::from(fd);
        // state.json is replaced by rename, never changed in place: its size holds.
        file.read_exact(&mut bytes).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}
