//! The per-user outbox on disk.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::AtFlags;

use crate::error::OutboxError;
use crate::fsutil::{
    DIR_MODE, create_file, fsync_dir, mkdir_private, open_dir, open_file_in, read_file,
    read_file_in, rename_noreplace, replace_file_in,
};
use crate::id::{new_id, now_secs, validate_id};
use crate::sendmail::{address_problem, envelope_from_headers};
use crate::state::{Counts, Envelope, Folder, MessageState, RecipientStatus};

/// The message bytes in a message directory.
const MESSAGE: &str = "message.eml";
/// The delivery state in a message directory.
pub(crate) const STATE: &str = "state.json";
/// Where `list` keeps a `state.json` it could not read when it moves the message to `failed/`.
const STATE_CORRUPT: &str = "state.json.corrupt";
/// Work area.
const TMP: &str = "tmp";
/// Maildir-style drop for mail clients.
const NEW: &str = "new";
/// Where `submit` puts messages for a running agent to queue (one file each).
pub(crate) const INCOMING: &str = "incoming";
/// Every subdirectory `open` creates.
const SUBDIRS: [&str; 6] = [TMP, NEW, INCOMING, "queue", "sent", "failed"];
/// How old a `tmp/` leftover must be before `recover` removes it.
const TMP_MAX_AGE: Duration = Duration::from_secs(60);

/// What [`Outbox::ingest_new`] did with one file of `new/`.
#[derive(Debug)]
pub enum Ingested {
    /// The file was queued and removed from `new/`.
    Queued {
        /// The file name in `new/`.
        file: String,
        /// The id of the queued message.
        id: String,
    },
    /// The file is not a usable message; it was moved to `failed/<id>/` with the reason in its
    /// `state.json`, and removed from `new/`.
    Failed {
        /// The file name in `new/`.
        file: String,
        /// The id it got in `failed/`.
        id: String,
        /// Why it could not be queued.
        reason: String,
    },
    /// The file could not be handled now (an I/O error such as a full disk); it stays in
    /// `new/` and is tried again on the next call.
    Deferred {
        /// The file name in `new/`; empty when `new/` itself could not be read.
        file: String,
        /// What went wrong.
        error: OutboxError,
    },
}

/// One user's outbox: `tmp/ new/ queue/ sent/ failed/` under a private root directory.
///
/// Every directory is 0700 and every file 0600 whatever the umask; symbolic links inside the
/// outbox are never followed. The agent is the only writer of `queue/`, `sent/` and
/// `failed/` apart from [`Outbox::enqueue`], whose rename into `queue/` is atomic.
#[derive(Debug, Clone)]
pub struct Outbox {
    root: PathBuf,
}

impl Outbox {
    /// Opens (creating as needed) the outbox at `root` (`<data_dir>/<user>`): creates missing
    /// parents, `root` and `tmp/ new/ queue/ sent/ failed/` with mode 0700, and resets the mode
    /// of existing ones to 0700.
    ///
    /// Fails with [`OutboxError::Unsafe`] when `root` or a subdirectory is a symbolic link, not
    /// a directory, or owned by another uid than the effective one.
    pub fn open(root: &Path) -> Result<Outbox, OutboxError> {
        let euid = rustix::process::geteuid().as_raw();
        if let Some(parent) = root.parent() {
            create_parents(parent)?;
        }
        ensure_private_dir(root, euid)?;
        for sub in SUBDIRS {
            ensure_private_dir(&root.join(sub), euid)?;
        }
        Ok(Outbox {
            root: root.to_path_buf(),
        })
    }

    /// The root directory of this outbox.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Queues a message and returns its id.
    ///
    /// When this returns `Ok`, `queue/<id>/message.eml` and `state.json` are on disk and
    /// fsync'd, and so is the directory entry in `queue/`. On error nothing is left behind (a
    /// full disk gives an error for which [`OutboxError::is_no_space`] is true).
    pub fn enqueue(&self, env: &Envelope, message: &[u8]) -> Result<String, OutboxError> {
        check_envelope(env)?;
        let now = now_secs();
        let size = message.len() as u64;
        self.commit_new(Folder::Queue, message, |id| {
            MessageState::new(id, env, size, now)
        })
    }

    /// Ingests the files of `new/` (in name order): each regular file whose name does not start
    /// with a dot is parsed like `sendmail -t` reads a message (recipients from To/Cc/Bcc,
    /// sender from Sender: or From:, Bcc removed), queued, and removed from `new/`. A file that
    /// is not a usable message goes to `failed/` with the reason; an I/O error leaves the file
    /// in `new/` for the next call. Symbolic links and other non-regular files are skipped.
    pub fn ingest_new(&self) -> Vec<Ingested> {
        let new_dir = self.root.join(NEW);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&new_dir) {
            Ok(entries) => entries,
            Err(e) => {
                out.push(Ingested::Deferred {
                    file: String::new(),
                    error: OutboxError::io(format!("reading {}", new_dir.display()), e),
                });
                return out;
            }
        };
        let mut names: Vec<OsString> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name())
            .collect();
        names.sort();
        out.extend(
            names
                .iter()
                .filter_map(|name| self.ingest_file(&new_dir, name)),
        );
        out
    }

    /// The messages of a folder, sorted by id (that is, in enqueue order). For the queue this
    /// includes what waits in `incoming/`, as fresh states.
    ///
    /// A `queue/` entry whose `state.json` is missing, unreadable or corrupt is moved to
    /// `failed/` (its bad `state.json` kept as `state.json.corrupt`, a new one giving the
    /// reason) and not returned. In `sent/` and `failed/` such an entry is returned as a
    /// stand-in state with no recipients and the reason in `failure`. Entries whose name is
    /// not an id, and anything that is not a directory, are ignored.
    pub fn list(&self, folder: Folder) -> Result<Vec<MessageState>, OutboxError> {
        // Read before the queue: a message the agent takes in meanwhile is then seen twice
        // (and counted once), never missed.
        let waiting = match folder {
            Folder::Queue => self.incoming_states(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for id in self.ids(folder)? {
            match self.state(folder, &id) {
                Ok(state) => out.push(state),
                // Moved or removed since the directory was read.
                Err(OutboxError::NotFound(_)) => {}
                Err(e @ (OutboxError::Corrupt { .. } | OutboxError::Unsafe { .. })) => {
                    let reason = format!("unusable state.json: {e}");
                    if folder == Folder::Queue {
                        // Best effort: if even this fails the entry stays where it is and the
                        // rest of the queue goes on.
                        let _ = self.quarantine(&id, &reason);
                    } else {
                        out.push(self.stand_in(folder, &id, reason));
                    }
                }
                // A transient error (EIO, EMFILE, ...): skip the entry this time.
                Err(OutboxError::Io { .. }) if folder == Folder::Queue => {}
                Err(e) => out.push(self.stand_in(folder, &id, e.to_string())),
            }
        }
        if !waiting.is_empty() {
            // Submitted and not yet taken in by the agent: queued all the same for the user.
            let known: std::collections::HashSet<String> =
                out.iter().map(|s| s.id.clone()).collect();
            let waiting: Vec<MessageState> = waiting
                .into_iter()
                .filter(|s| !known.contains(&s.id))
                .collect();
            if !waiting.is_empty() {
                out.extend(waiting);
                out.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
        Ok(out)
    }

    /// The state of message `id` in `folder`.
    ///
    /// [`OutboxError::NotFound`] if it is not there, [`OutboxError::Unsafe`] if its
    /// directory or `state.json` is a symbolic link, [`OutboxError::Corrupt`] if `state.json` is
    /// missing, unparseable or about another id.
    pub fn state(&self, folder: Folder, id: &str) -> Result<MessageState, OutboxError> {
        validate_id(id)?;
        let dir = self.open_msg_dir(folder, id)?;
        let path = self.msg_path(folder, id).join(STATE);
        let bytes = read_file_in(&dir, STATE).map_err(|e| file_error(&path, e))?;
        let state: MessageState =
            serde_json::from_slice(&bytes).map_err(|e| OutboxError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if state.id != id {
            return Err(OutboxError::Corrupt {
                path,
                reason: format!("it is about message {:?}", state.id),
            });
        }
        Ok(state)
    }

    /// Which folder holds message `id`, if any. Validates the id first
    /// ([`OutboxError::BadId`]); a message directory that is a symbolic link is
    /// [`OutboxError::Unsafe`].
    pub fn locate(&self, id: &str) -> Result<Option<Folder>, OutboxError> {
        validate_id(id)?;
        for folder in Folder::ALL {
            let path = self.msg_path(folder, id);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(OutboxError::Unsafe {
                        path,
                        reason: "is a symbolic link".into(),
                    });
                }
                Ok(meta) if meta.is_dir() => return Ok(Some(folder)),
                Ok(_) => {
                    return Err(OutboxError::Corrupt {
                        path,
                        reason: "not a directory".into(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(OutboxError::io(format!("looking at {}", path.display()), e));
                }
            }
        }
        Ok(None)
    }

    /// The bytes of message `id` in `folder` (as queued: CRLF line ends, Bcc removed).
    pub fn read_message(&self, folder: Folder, id: &str) -> Result<Vec<u8>, OutboxError> {
        validate_id(id)?;
        let dir = self.open_msg_dir(folder, id)?;
        read_file_in(&dir, MESSAGE)
            .map_err(|e| file_error(&self.msg_path(folder, id).join(MESSAGE), e))
    }

    /// Message `id` in `folder`, opened for reading (as [`Outbox::read_message`] checks it: a
    /// regular file, never through a link), for reading a piece at a time: sending a large
    /// message does not cost its size in memory.
    pub fn open_message(&self, folder: Folder, id: &str) -> Result<fs::File, OutboxError> {
        validate_id(id)?;
        let dir = self.open_msg_dir(folder, id)?;
        open_file_in(&dir, MESSAGE)
            .map_err(|e| file_error(&self.msg_path(folder, id).join(MESSAGE), e))
    }

    /// Replaces `queue/<id>/state.json` atomically and durably (write `state.json.tmp`, fsync,
    /// rename, fsync the directory). What is written has the revision of the state on disk
    /// plus one, so that a replay of the outcome journal never undoes it.
    pub fn update(&self, state: &MessageState) -> Result<(), OutboxError> {
        validate_id(&state.id)?;
        let dir = self.open_msg_dir(Folder::Queue, &state.id)?;
        let state = self.next_revision(Folder::Queue, state);
        self.write_state(&dir, Folder::Queue, &state)
    }

    /// Writes the final state of a queued message and moves it to `sent/` (rename, then fsync
    /// of both folders).
    pub fn finish_sent(&self, state: &MessageState) -> Result<(), OutboxError> {
        self.finish(state, Folder::Sent)
    }

    /// Writes the final state of a queued message (with its `failure`) and moves it to
    /// `failed/` (rename, then fsync of both folders).
    pub fn finish_failed(&self, state: &MessageState) -> Result<(), OutboxError> {
        self.finish(state, Folder::Failed)
    }

    /// Tries a message again.
    ///
    /// A failed message goes back to `queue/` with `failure` cleared, its failed recipients
    /// pending again, `next_attempt` 0 and `queued_at` set to now (so its lifetime starts
    /// again; `attempts` is kept). A queued message gets `next_attempt` 0 (attempts kept).
    /// Either way the backoff starts again from the shortest delay (`backoff_step` 0).
    /// A sent message is [`OutboxError::WrongFolder`]; a failed message without any
    /// recipient (a file of `new/` that could not be parsed) is
    /// [`OutboxError::BadEnvelope`].
    pub fn retry(&self, id: &str) -> Result<(), OutboxError> {
        match self.locate(id)? {
            None => Err(OutboxError::NotFound(id.to_owned())),
            Some(folder @ Folder::Sent) => Err(OutboxError::WrongFolder {
                id: id.to_owned(),
                folder,
                action: "retry",
            }),
            Some(Folder::Queue) => {
                let mut state = self.state(Folder::Queue, id)?;
                state.next_attempt = 0;
                state.backoff_step = 0;
                self.update(&state)
            }
            Some(Folder::Failed) => {
                let mut state = self.state(Folder::Failed, id)?;
                if state.recipients.is_empty() {
                    return Err(OutboxError::BadEnvelope(format!(
                        "message {id} has no recipients; nothing to retry"
                    )));
                }
                state.failure = None;
                state.next_attempt = 0;
                state.backoff_step = 0;
                state.queued_at = now_secs();
                state.revision += 1;
                for r in &mut state.recipients {
                    if r.status == RecipientStatus::Failed {
                        r.status = RecipientStatus::Pending;
                    }
                }
                let dir = self.open_msg_dir(Folder::Failed, id)?;
                self.write_state(&dir, Folder::Failed, &state)?;
                drop(dir);
                self.move_msg(id, Folder::Failed, Folder::Queue)
            }
        }
    }

    /// Deletes message `id` from `queue/` or `failed/` and returns where it was. Messages in
    /// `sent/` are not removed ([`OutboxError::WrongFolder`]).
    ///
    /// The directory is first renamed into `tmp/` (atomic), then deleted.
    pub fn remove(&self, id: &str) -> Result<Folder, OutboxError> {
        match self.locate(id)? {
            None => Err(OutboxError::NotFound(id.to_owned())),
            Some(folder @ Folder::Sent) => Err(OutboxError::WrongFolder {
                id: id.to_owned(),
                folder,
                action: "remove",
            }),
            Some(folder) => {
                self.delete(folder, id)?;
                Ok(folder)
            }
        }
    }

    /// How many messages each folder holds (directories whose name is an id; state files are
    /// not read). Messages waiting in `incoming/` count as queued.
    pub fn counts(&self) -> Result<Counts, OutboxError> {
        Ok(Counts {
            queued: self.ids(Folder::Queue)?.len() + self.incoming_count(),
            failed: self.ids(Folder::Failed)?.len(),
            sent: self.ids(Folder::Sent)?.len(),
        })
    }

    /// Cleans up after a crash, at agent start: removes what is in `tmp/` and has not changed
    /// for a minute (half-built messages, removals cut short). Nothing else is touched: a
    /// message is queued if and only if `queue/<id>/` exists.
    pub fn recover(&self) -> Result<(), OutboxError> {
        let tmp = self.root.join(TMP);
        let entries = fs::read_dir(&tmp)
            .map_err(|e| OutboxError::io(format!("reading {}", tmp.display()), e))?;
        let now = SystemTime::now();
        let mut first_error = None;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    first_error
                        .get_or_insert(OutboxError::io(format!("reading {}", tmp.display()), e));
                    continue;
                }
            };
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !older_than(&path, &meta, now, TMP_MAX_AGE) {
                continue;
            }
            let result = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error
                        .get_or_insert(OutboxError::io(format!("removing {}", path.display()), e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---- internals ----

    /// Ingests one file of `new/`; `None` if it is not ours to take (gone meanwhile, or swapped
    /// for a link or a non-regular file).
    fn ingest_file(&self, new_dir: &Path, name: &OsStr) -> Option<Ingested> {
        let path = new_dir.join(name);
        let file = name.to_string_lossy().into_owned();
        let deferred = |error| {
            Some(Ingested::Deferred {
                file: file.clone(),
                error,
            })
        };
        let bytes = match read_file(&path) {
            Ok(bytes) => bytes,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::InvalidInput
                    || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
            {
                return None;
            }
            Err(e) => return deferred(OutboxError::io(format!("reading {}", path.display()), e)),
        };
        let failed = |reason: String| {
            self.store_failed(&bytes, &reason)
                .map(|id| (id, Some(reason)))
        };
        let stored = match envelope_from_headers(&bytes) {
            Ok((env, message)) => match self.enqueue(&env, &message) {
                Ok(id) => Ok((id, None)),
                Err(OutboxError::BadEnvelope(reason)) => failed(reason),
                Err(e) => Err(e),
            },
            Err(e) => failed(e.to_string()),
        };
        let (id, failure) = match stored {
            Ok(stored) => stored,
            Err(error) => return deferred(error),
        };
        // The message is stored; now the file must go, or it would be ingested twice.
        if let Err(e) = fs::remove_file(&path) {
            // Undo the copy; the file stays in new/ and is tried again next time.
            let _ = self.remove_any(&id);
            return deferred(OutboxError::io(format!("removing {}", path.display()), e));
        }
        // If this fails the removal may not survive a crash: at worst the file is ingested
        // again (sent twice), never lost.
        let _ = fsync_dir(new_dir);
        Some(match failure {
            None => Ingested::Queued { file, id },
            Some(reason) => Ingested::Failed { file, id, reason },
        })
    }

    fn folder_path(&self, folder: Folder) -> PathBuf {
        self.root.join(folder.as_str())
    }

    pub(crate) fn msg_path(&self, folder: Folder, id: &str) -> PathBuf {
        self.folder_path(folder).join(id)
    }

    /// Opens `<folder>/<id>` as a directory, never following a link.
    pub(crate) fn open_msg_dir(&self, folder: Folder, id: &str) -> Result<OwnedFd, OutboxError> {
        let path = self.msg_path(folder, id);
        open_dir(&path).map_err(|e| match e.raw_os_error() {
            Some(c) if c == rustix::io::Errno::NOENT.raw_os_error() => {
                OutboxError::NotFound(id.to_owned())
            }
            Some(c) if c == rustix::io::Errno::LOOP.raw_os_error() => OutboxError::Unsafe {
                path,
                reason: "is a symbolic link".into(),
            },
            Some(c) if c == rustix::io::Errno::NOTDIR.raw_os_error() => {
                if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                    OutboxError::Unsafe {
                        path,
                        reason: "is a symbolic link".into(),
                    }
                } else {
                    OutboxError::Corrupt {
                        path,
                        reason: "not a directory".into(),
                    }
                }
            }
            _ => OutboxError::io(format!("opening {}", path.display()), e),
        })
    }

    /// The sorted names of the message directories of a folder.
    fn ids(&self, folder: Folder) -> Result<Vec<String>, OutboxError> {
        self.message_ids(folder)
    }

    fn write_state(
        &self,
        dir: &OwnedFd,
        folder: Folder,
        state: &MessageState,
    ) -> Result<(), OutboxError> {
        let path = self.msg_path(folder, &state.id).join(STATE);
        let json = state_json(state)
            .map_err(|e| OutboxError::io(format!("writing {}", path.display()), e))?;
        replace_file_in(dir, STATE, &json)
            .map_err(|e| OutboxError::io(format!("writing {}", path.display()), e))
    }

    /// `state` with a revision above both its own and the one on disk.
    fn next_revision(&self, folder: Folder, state: &MessageState) -> MessageState {
        let on_disk = self.state(folder, &state.id).map_or(0, |s| s.revision);
        let mut state = state.clone();
        state.revision = state.revision.max(on_disk) + 1;
        state
    }

    fn finish(&self, state: &MessageState, to: Folder) -> Result<(), OutboxError> {
        validate_id(&state.id)?;
        let dir = self.open_msg_dir(Folder::Queue, &state.id)?;
        let state = &self.next_revision(Folder::Queue, state);
        self.write_state(&dir, Folder::Queue, state)?;
        drop(dir);
        self.move_msg(&state.id, Folder::Queue, to)
    }

    /// Renames `<from>/<id>` to `<to>/<id>` and fsyncs both folders.
    fn move_msg(&self, id: &str, from: Folder, to: Folder) -> Result<(), OutboxError> {
        let src = self.msg_path(from, id);
        let dst = self.msg_path(to, id);
        rename_noreplace(&src, &dst).map_err(|e| {
            OutboxError::io(format!("moving {} to {}", src.display(), dst.display()), e)
        })?;
        for folder in [to, from] {
            let path = self.folder_path(folder);
            fsync_dir(&path)
                .map_err(|e| OutboxError::io(format!("syncing {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Builds `tmp/<id>/` with the message and the state made by `make_state`, then renames it
    /// into `<dest>/<id>` and fsyncs `<dest>/`. On error nothing is left behind.
    fn commit_new(
        &self,
        dest: Folder,
        message: &[u8],
        make_state: impl Fn(&str) -> MessageState,
    ) -> Result<String, OutboxError> {
        self.build_and_move(None, dest, message, make_state, true)
    }

    /// Builds `tmp/<id>/` (with the id given, or a new one) holding `message` and the state
    /// made by `make_state`, and renames it into `<dest>/<id>`, never replacing an entry that
    /// exists (`EEXIST` then). With `durable`, files and directories are fsync'd; without,
    /// the caller makes them durable some other way. On error nothing is left behind.
    pub(crate) fn build_and_move(
        &self,
        given_id: Option<&str>,
        dest: Folder,
        message: &[u8],
        make_state: impl Fn(&str) -> MessageState,
        durable: bool,
    ) -> Result<String, OutboxError> {
        let tmp_root = self.root.join(TMP);
        let mut tries = 0;
        let (id, tmp_dir) = loop {
            let id = given_id.map_or_else(new_id, str::to_owned);
            let tmp_dir = match given_id {
                // Unique, in case an earlier attempt left its build behind.
                Some(_) => tmp_root.join(format!("{id}.{:04x}", rand::random::<u16>())),
                None => tmp_root.join(&id),
            };
            match mkdir_private(&tmp_dir) {
                Ok(()) => break (id, tmp_dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => tries += 1,
                Err(e) => {
                    // mkdir may have worked and only the chmod failed (never remove a
                    // directory that was there before us).
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        return Err(OutboxError::io(
                            format!("creating {}", tmp_dir.display()),
                            e,
                        ));
                    }
                    let _ = fs::remove_dir(&tmp_dir);
                    return Err(OutboxError::io(
                        format!("creating {}", tmp_dir.display()),
                        e,
                    ));
                }
            }
        };
        let dest_dir = self.folder_path(dest);
        let final_dir = dest_dir.join(&id);
        let state = make_state(&id);
        let mut renamed = false;
        let result = (|| -> Result<(), OutboxError> {
            let ctx = |what: &str| format!("{what} {}", tmp_dir.display());
            let dir = open_dir(&tmp_dir).map_err(|e| OutboxError::io(ctx("opening"), e))?;
            let msg_file = create_file(&dir, MESSAGE, message).map_err(|e| {
                OutboxError::io(format!("writing {}/{MESSAGE}", tmp_dir.display()), e)
            })?;
            let json = state_json(&state).map_err(|e| {
                OutboxError::io(format!("writing {}/{STATE}", tmp_dir.display()), e)
            })?;
            let state_file = create_file(&dir, STATE, &json).map_err(|e| {
                OutboxError::io(format!("writing {}/{STATE}", tmp_dir.display()), e)
            })?;
            // Both files are written before either is synced: on a journaling file system the
            // first fsync's commit then carries both, and the next two syncs find little to do.
            if durable {
                for (file, name) in [(msg_file, MESSAGE), (state_file, STATE)] {
                    file.sync_all().map_err(|e| {
                        OutboxError::io(format!("syncing {}/{name}", tmp_dir.display()), e)
                    })?;
                }
                rustix::fs::fsync(&dir).map_err(|e| OutboxError::io(ctx("syncing"), e))?;
            }
            drop(dir);
            rename_noreplace(&tmp_dir, &final_dir).map_err(|e| {
                OutboxError::io(
                    format!("moving {} to {}", tmp_dir.display(), final_dir.display()),
                    e,
                )
            })?;
            renamed = true;
            if !durable {
                return Ok(());
            }
            fsync_dir(&dest_dir)
                .map_err(|e| OutboxError::io(format!("syncing {}", dest_dir.display()), e))
        })();
        match result {
            Ok(()) => Ok(id),
            Err(e) => {
                // Take it back out of the folder so that an error means "not stored".
                if renamed && rename_noreplace(&final_dir, &tmp_dir).is_err() {
                    return Err(e);
                }
                let _ = fs::remove_dir_all(&tmp_dir);
                Err(e)
            }
        }
    }

    /// Stores bytes that could not be queued in `failed/<id>/` with the reason.
    pub(crate) fn store_failed(&self, message: &[u8], reason: &str) -> Result<String, OutboxError> {
        let now = now_secs();
        let size = message.len() as u64;
        self.commit_new(Folder::Failed, message, |id| {
            let mut state = MessageState::new(id, &Envelope::default(), size, now);
            state.failure = Some(reason.to_owned());
            state
        })
    }

    /// Moves a queue entry whose state cannot be read to `failed/`, keeping the bad file as
    /// `state.json.corrupt` and writing a new `state.json` with the reason.
    fn quarantine(&self, id: &str, reason: &str) -> Result<(), OutboxError> {
        let dir = self.open_msg_dir(Folder::Queue, id)?;
        let path = self.msg_path(Folder::Queue, id);
        match rustix::fs::renameat(&dir, STATE, &dir, STATE_CORRUPT) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(OutboxError::io(
                    format!("renaming {}/{STATE}", path.display()),
                    e,
                ));
            }
        }
        let state = self.stand_in_with(&dir, id, reason.to_owned());
        self.write_state(&dir, Folder::Queue, &state)?;
        drop(dir);
        self.move_msg(id, Folder::Queue, Folder::Failed)
    }

    /// A state standing in for one that cannot be read.
    fn stand_in(&self, folder: Folder, id: &str, reason: String) -> MessageState {
        match self.open_msg_dir(folder, id) {
            Ok(dir) => self.stand_in_with(&dir, id, reason),
            Err(_) => stand_in_state(id, 0, reason),
        }
    }

    fn stand_in_with(&self, dir: &OwnedFd, id: &str, reason: String) -> MessageState {
        let size = rustix::fs::statat(dir, MESSAGE, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| u64::try_from(st.st_size).unwrap_or(0))
            .unwrap_or(0);
        stand_in_state(id, size, reason)
    }

    /// Removes a message from whatever folder holds it (used to undo an ingest).
    fn remove_any(&self, id: &str) -> Result<(), OutboxError> {
        match self.locate(id)? {
            Some(folder) => self.delete(folder, id),
            None => Ok(()),
        }
    }

    /// Renames `<folder>/<id>` into `tmp/` (the commit point of the removal), fsyncs the
    /// folder, then deletes it.
    fn delete(&self, folder: Folder, id: &str) -> Result<(), OutboxError> {
        let src = self.msg_path(folder, id);
        let tmp_root = self.root.join(TMP);
        let mut tries = 0;
        let dst = loop {
            let dst = tmp_root.join(format!("{id}.removed.{:04x}", rand::random::<u16>()));
            match rename_noreplace(&src, &dst) {
                Ok(()) => break dst,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => tries += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(OutboxError::NotFound(id.to_owned()));
                }
                Err(e) => {
                    return Err(OutboxError::io(format!("removing {}", src.display()), e));
                }
            }
        };
        let folder_path = self.folder_path(folder);
        fsync_dir(&folder_path)
            .map_err(|e| OutboxError::io(format!("syncing {}", folder_path.display()), e))?;
        // What is left in tmp/ is garbage that `recover` clears if this fails.
        let _ = fs::remove_dir_all(&dst);
        Ok(())
    }
}

/// Creates the missing directories of `path` (the parents of an outbox root) with mode
/// 0700, whatever the umask. Existing ones are left as they are (they may be shared, like
/// `~/.local/share`, or links the user made on purpose).
fn create_parents(path: &Path) -> Result<(), OutboxError> {
    let mut missing = Vec::new();
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() {
            break;
        }
        match fs::metadata(dir) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(dir),
            Err(e) => {
                return Err(OutboxError::io(format!("looking at {}", dir.display()), e));
            }
        }
    }
    for dir in missing.into_iter().rev() {
        match mkdir_private(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(OutboxError::io(format!("creating {}", dir.display()), e)),
        }
    }
    Ok(())
}

/// Makes sure `path` is a directory of ours with mode 0700, creating it if needed.
fn ensure_private_dir(path: &Path, euid: u32) -> Result<(), OutboxError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match mkdir_private(path) {
                Ok(()) => {}
                // Created by someone else meanwhile (the agent and sendmail at once): check it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(OutboxError::io(format!("creating {}", path.display()), e));
                }
            }
            fs::symlink_metadata(path)
                .map_err(|e| OutboxError::io(format!("looking at {}", path.display()), e))?
        }
        Err(e) => {
            return Err(OutboxError::io(format!("looking at {}", path.display()), e));
        }
    };
    let unsafe_path = |reason: String| OutboxError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_path("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_path("is not a directory".into()));
    }
    if meta.uid() != euid {
        return Err(unsafe_path(format!(
            "is owned by uid {}, not by uid {euid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| OutboxError::io(format!("setting the mode of {}", path.display()), e))?;
    }
    Ok(())
}

/// Checks the envelope before it is queued: at least one recipient, and addresses that can
/// go into an SMTP command.
pub(crate) fn check_envelope(env: &Envelope) -> Result<(), OutboxError> {
    if env.recipients.is_empty() {
        return Err(OutboxError::BadEnvelope("no recipients".into()));
    }
    if !env.from.is_empty()
        && let Some(problem) = address_problem(&env.from)
    {
        return Err(OutboxError::BadEnvelope(format!(
            "sender {:?}: {problem}",
            env.from
        )));
    }
    for rcpt in &env.recipients {
        if let Some(problem) = address_problem(rcpt) {
            return Err(OutboxError::BadEnvelope(format!(
                "recipient {rcpt:?}: {problem}"
            )));
        }
    }
    Ok(())
}

pub(crate) fn state_json(state: &MessageState) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    json.push(b'\n');
    Ok(json)
}

fn stand_in_state(id: &str, size: u64, reason: String) -> MessageState {
    // The id starts with the enqueue time.
    let queued_at = id
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_secs);
    let mut state = MessageState::new(id, &Envelope::default(), size, queued_at);
    state.failure = Some(reason);
    state
}

/// Maps an error reading a file of a message directory.
fn file_error(path: &Path, e: io::Error) -> OutboxError {
    let reason = match e.raw_os_error() {
        Some(c) if c == rustix::io::Errno::NOENT.raw_os_error() => "missing".to_owned(),
        Some(c) if c == rustix::io::Errno::LOOP.raw_os_error() => {
            return OutboxError::Unsafe {
                path: path.to_path_buf(),
                reason: "is a symbolic link".into(),
            };
        }
        Some(c)
            if c == rustix::io::Errno::ACCESS.raw_os_error()
                || c == rustix::io::Errno::ISDIR.raw_os_error() =>
        {
            format!("unreadable: {e}")
        }
        _ if e.kind() == io::ErrorKind::InvalidInput => "not a regular file".to_owned(),
        _ => return OutboxError::io(format!("reading {}", path.display()), e),
    };
    OutboxError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// True if neither `path` nor (for a directory) any entry directly in it changed within `age`.
fn older_than(path: &Path, meta: &fs::Metadata, now: SystemTime, age: Duration) -> bool {
    let old = |m: &fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d >= age)
    };
    if !old(meta) {
        return false;
    }
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for entry in entries.flatten() {
            if let Ok(m) = fs::symlink_metadata(entry.path())
                && !old(&m)
            {
                return false;
            }
        }
    }
    true
}
