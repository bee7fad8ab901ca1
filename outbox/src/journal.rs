//! The outcome journal: one durable append per delivery outcome instead of four fsyncs.
//!
//! Recording an outcome the plain way ([`Outbox::finish_sent`]) rewrites `state.json` and
//! renames the message directory, and makes both durable: an fsync of the new `state.json`,
//! of the message directory, and of the two folders. The journal makes the same change
//! durable with one `fdatasync` of an append to `<outbox>/journal`, then applies it to the
//! folders without any fsync (`state.json` replaced, the directory renamed). What the
//! folders show is always the latest state (the page cache); only crash safety comes from
//! the journal:
//!
//! - at start-up, [`Outbox::open_journal`] replays the records into the folders, makes the
//!   folders durable (`syncfs`) and empties the journal;
//! - every [`CHECKPOINT_EVERY`] records the same checkpoint runs, so the journal stays small;
//! - a record is applied only over an older state ([`MessageState::revision`]), so that a
//!   change made meanwhile by other means (a `retry`, which writes durably and bumps the
//!   revision, or a `remove`) is never undone by a replay.
//!
//! Each record is a line `\n{"to":"sent","state":{...}}`; the newline comes first so that a
//! record torn by a crash (its append never returned) cannot glue itself to the next one. A
//! line that does not parse is skipped. Only one process writes a journal: opening it takes
//! an exclusive `flock`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::error::OutboxError;
use crate::fsutil::{FILE_MODE, open_dir, overwrite_unsynced, rename_noreplace};
use crate::id::validate_id;
use crate::limits::{JOURNAL_CHECKPOINT_BYTES, JOURNAL_MAX};
use crate::outbox::{Outbox, STATE, state_json};
use crate::state::{Folder, MessageState};

/// The journal's file name in the outbox root.
const JOURNAL: &str = "journal";
/// Where a journal too large to replay is set aside.
const JOURNAL_OVERSIZED: &str = "journal.oversized";

/// After this many records the journal is checkpointed (folders synced, journal emptied).
pub const CHECKPOINT_EVERY: usize = 4096;

/// One record: the state a message reached and the folder it belongs in from then on.
#[derive(Serialize, Deserialize)]
struct Record {
    to: Folder,
    state: MessageState,
}

/// The open outcome journal of one outbox; see the module documentation. Holding it means
/// holding the journal's lock: one writer per outbox.
#[derive(Debug)]
pub struct Journal {
    outbox: Outbox,
    /// Open (and locked) while records are written; closed by [`Journal::release`] between
    /// them, so that an idle user holds no descriptor.
    file: Option<File>,
    /// Records appended since the last checkpoint.
    pending: usize,
    /// Bytes appended since the last checkpoint.
    appended: u64,
    line: Vec<u8>,
}

/// What [`Outbox::open_journal`] found to replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Records read (the last one per message counts).
    pub records: usize,
    /// Messages whose state or folder the replay changed (their change had not reached the
    /// disk before the crash).
    pub applied: usize,
    /// Lines that did not parse (a record torn by a crash).
    pub torn: usize,
    /// The size of a journal too large to replay (more than [`JOURNAL_MAX`]), which was set
    /// aside as `journal.oversized` and replaced by an empty one. Its records are lost: a
    /// message whose delivery it held may be sent again.
    pub set_aside: Option<u64>,
}

impl Outbox {
    /// Opens this outbox's outcome journal for writing: takes its lock, replays what an
    /// earlier run left in it, syncs the folders and empties it. Call it before anything
    /// reads the queue (a replay can change states and move messages).
    ///
    /// Fails with an I/O error (`EWOULDBLOCK`) when another process holds the journal. A
    /// journal larger than [`JOURNAL_MAX`] is not read: it is set aside (renamed
    /// `journal.oversized`, see [`Replayed::set_aside`]) and an empty one takes its place.
    pub fn open_journal(&self) -> Result<(Journal, Replayed), OutboxError> {
        let path = self.root().join(JOURNAL);
        let ctx = |what: &str| format!("{what} {}", path.display());
        let root =
            open_dir(self.root()).map_err(|e| OutboxError::io(ctx("opening the folder of"), e))?;
        let mut file = lock_journal(&root, &path)?;
        let size = file
            .metadata()
            .map_err(|e| OutboxError::io(ctx("reading"), e))?
            .len();
        let mut set_aside = None;
        if size > JOURNAL_MAX {
            rustix::fs::renameat(&root, JOURNAL, &root, JOURNAL_OVERSIZED)
                .map_err(|e| OutboxError::io(ctx("setting aside"), e))?;
            drop(file);
            file = lock_journal(&root, &path)?;
            set_aside = Some(size);
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| OutboxError::io(ctx("reading"), e))?;
        drop(root);
        let mut journal = Journal {
            outbox: self.clone(),
            file: Some(file),
            pending: 0,
            appended: 0,
            line: Vec::new(),
        };
        let mut replayed = journal.replay(&bytes)?;
        replayed.set_aside = set_aside;
        // Holding the outbox, the agent takes in what sendmail appends to the spool.
        self.create_spool()?;
        if !bytes.is_empty() {
            journal.checkpoint()?;
        }
        journal.release();
        Ok((journal, replayed))
    }
}

/// Opens (creating it, mode 0600) and locks the journal `path` in the outbox root `root`.
fn lock_journal(root: &OwnedFd, path: &std::path::Path) -> Result<File, OutboxError> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let fd = rustix::fs::openat(
        root,
        JOURNAL,
        OFlags::RDWR | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(FILE_MODE),
    )
    .map_err(|e| OutboxError::io(ctx("opening"), e))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))
        .map_err(|e| OutboxError::io(ctx("setting the mode of"), e))?;
    rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| OutboxError::io(ctx("locking (is another linkrelayd using it?)"), e))?;
    Ok(File::from(fd))
}

impl Outbox {
    /// True when a running agent holds this outbox: the lock of its data directory (the
    /// outbox root's parent, see [`crate::AgentLock`]) or, for an agent from before that
    /// lock, its journal. Such an agent watches `queue/` and `incoming/` and sends what
    /// arrives there without being told.
    pub fn agent_holds_it(&self) -> bool {
        let data_dir = self.root().parent();
        data_dir.is_some_and(|d| crate::holder(d).is_some()) || self.journal_held()
    }

    /// True when a process holds this outbox's journal.
    fn journal_held(&self) -> bool {
        let Ok(fd) = rustix::fs::open(
            self.root().join(JOURNAL),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return false;
        };
        matches!(
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared),
            Err(rustix::io::Errno::WOULDBLOCK)
        )
    }
}

impl Journal {
    /// Records that message `state.id` reached `state` and belongs in `to` from now on:
    /// bumps its revision, appends the record and `fdatasync`s it, then moves the message
    /// (replaces `queue/<id>/state.json`, renames the directory into `to/` unless `to` is the
    /// queue) without further syncs.
    ///
    /// On `Ok` the change is durable. On `Err` it may or may not be (a crash replays it if the
    /// append made it); the caller keeps the state and records it again later.
    pub fn record(&mut self, state: &mut MessageState, to: Folder) -> Result<(), OutboxError> {
        self.record_then(state, to, || ())
    }

    /// [`Journal::record`], calling `durable` as soon as the record is durable (appended and
    /// `fdatasync`ed), before the folders are changed: a caller that only waits for
    /// durability (the flusher, before it hands over the next message) need not wait for the
    /// move. Not called when the append fails.
    pub fn record_then(
        &mut self,
        state: &mut MessageState,
        to: Folder,
        durable: impl FnOnce(),
    ) -> Result<(), OutboxError> {
        validate_id(&state.id)?;
        state.revision += 1;
        self.line.clear();
        self.line.push(b'\n');
        serde_json::to_writer(
            &mut self.line,
            &Record {
                to,
                state: state.clone(),
            },
        )
        .map_err(|e| OutboxError::io("encoding a journal record", std::io::Error::other(e)))?;
        let path = self.outbox.root().join(JOURNAL);
        let line = std::mem::take(&mut self.line);
        let written = self
            .open()?
            .write_all(&line)
            .and_then(|()| self.open_file()?.sync_data());
        self.line = line;
        written.map_err(|e| OutboxError::io(format!("appending to {}", path.display()), e))?;
        self.pending += 1;
        self.appended += self.line.len() as u64;
        durable();
        self.apply(state, Folder::Queue, to)?;
        if self.pending >= CHECKPOINT_EVERY || self.appended >= JOURNAL_CHECKPOINT_BYTES {
            // The record is durable whatever happens here; a failed checkpoint is retried at
            // the next record.
            let _ = self.checkpoint();
        }
        Ok(())
    }

    /// Makes everything applied so far durable (`syncfs` of the outbox's file system) and
    /// empties the journal.
    pub fn checkpoint(&mut self) -> Result<(), OutboxError> {
        let path = self.outbox.root().join(JOURNAL);
        let file = self.open()?;
        rustix::fs::syncfs(&*file).map_err(|e| {
            OutboxError::io(format!("syncing the file system of {}", path.display()), e)
        })?;
        file.set_len(0)
            .and_then(|()| file.sync_all())
            .map_err(|e| OutboxError::io(format!("emptying {}", path.display()), e))?;
        self.pending = 0;
        self.appended = 0;
        Ok(())
    }

    /// Closes the journal's file (and lets go of its lock) until the next record: what is
    /// recorded is durable, and a user with nothing to send holds no descriptor. The next
    /// record opens it again.
    pub fn release(&mut self) {
        self.file = None;
    }

    /// The journal's file, opened and locked if it is not.
    fn open(&mut self) -> Result<&mut File, OutboxError> {
        if self.file.is_none() {
            let path = self.outbox.root().join(JOURNAL);
            let root = open_dir(self.outbox.root()).map_err(|e| {
                OutboxError::io(format!("opening the folder of {}", path.display()), e)
            })?;
            self.file = Some(lock_journal(&root, &path)?);
        }
        self.open_file()
            .map_err(|e| OutboxError::io("opening the journal", e))
    }

    /// The journal's file when it is open.
    fn open_file(&mut self) -> std::io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the journal is not open"))
    }

    /// Records appended since the last checkpoint.
    pub fn pending(&self) -> usize {
        self.pending
    }

    fn replay(&mut self, bytes: &[u8]) -> Result<Replayed, OutboxError> {
        let mut out = Replayed::default();
        // The last record of each message is its latest state.
        let mut last: BTreeMap<String, Record> = BTreeMap::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Record>(line) {
                Ok(r) if validate_id(&r.state.id).is_ok() => {
                    out.records += 1;
                    last.insert(r.state.id.clone(), r);
                }
                _ => out.torn += 1,
            }
        }
        for (id, r) in last {
            let Some(folder) = self.outbox.locate(&id)? else {
                continue; // removed since
            };
            let on_disk = self.outbox.state(folder, &id).ok().map(|s| s.revision);
            let newer = on_disk.is_none_or(|rev| rev < r.state.revision);
            let same_but_unmoved = on_disk == Some(r.state.revision) && folder != r.to;
            if newer || same_but_unmoved {
                self.apply(&r.state, folder, r.to)?;
                out.applied += 1;
            }
        }
        Ok(out)
    }

    /// Writes `state` into `<from>/<id>/state.json` and renames the directory into `to/`,
    /// without syncing.
    fn apply(&self, state: &MessageState, from: Folder, to: Folder) -> Result<(), OutboxError> {
        let outbox = &self.outbox;
        let dir = outbox.open_msg_dir(from, &state.id)?;
        let path = outbox.msg_path(from, &state.id).join(STATE);
        let json = state_json(state).map_err(|e| OutboxError::io("encoding a state", e))?;
        overwrite_unsynced(&dir, STATE, &json)
            .map_err(|e| OutboxError::io(format!("writing {}", path.display()), e))?;
        drop(dir);
        if from != to {
            let src = outbox.msg_path(from, &state.id);
            let dst = outbox.msg_path(to, &state.id);
            rename_noreplace(&src, &dst).map_err(|e| {
                OutboxError::io(format!("moving {} to {}", src.display(), dst.display()), e)
            })?;
        }
        Ok(())
    }
}
