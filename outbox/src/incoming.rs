//! `incoming/`: the fast way in while an agent runs.
//!
//! [`Outbox::enqueue`] builds a message directory (message.eml and state.json) and makes it
//! durable: three file system commits (the two files, the directory, `queue/`). A sendmail
//! process that waits for that pays for it on every message. [`Outbox::submit`] instead
//! appends the message to `incoming/.spool` with one `fdatasync` (see the spool module), or,
//! when the running agent made no spool (an older one), writes one file, `incoming/<id>`, with
//! two syncs (the file, then `incoming/`): the message is as safe, sooner. The agent, which
//! watches `incoming/`, then moves both kinds into the queue with [`Outbox::ingest_incoming`]:
//! it builds `queue/<id>/` without syncing, makes every message of the round durable with one
//! `syncfs`, and only then removes their files and what it took of the spool. A crash in between
//! leaves a message whose id is already queued (or sent): the next round sees the id and only
//! removes it, so nothing is queued twice. This is the shape of Postfix's maildrop and pickup.
//!
//! Message format (a file, or a spool record's payload): the line
//! `linkrelay-envelope 1 {"from":...,"recipients":[...]}\n`, then the message bytes exactly
//! as `enqueue` would store them.

use std::fs;
use std::io;

use crate::error::OutboxError;
use crate::fsutil::{create_file, fsync_dir, open_dir, read_file, rename_noreplace};
use crate::id::{new_id, now_secs, validate_id};
use crate::outbox::{Content, INCOMING, Ingested, Outbox, check_envelope, too_large_reason};
use crate::spool::{Drain, Item, SPOOL};
use crate::state::{Envelope, Folder, MessageState};

/// The start of the first line of an `incoming/` file.
const MAGIC: &[u8] = b"linkrelay-envelope 1 ";

impl Outbox {
    /// Queues a message through `incoming/` for a running agent to pick up, and returns its id.
    ///
    /// When this returns `Ok`, the message is on disk and synced (appended to the spool, or,
    /// when the agent made none, in its own file `incoming/<id>` whose directory entry is
    /// synced too): the message is safe. Use it only while an agent holds the outbox
    /// ([`Outbox::agent_holds_it`]); without one, [`Outbox::enqueue`] puts the message where
    /// every tool sees it at once. On error nothing is left behind.
    pub fn submit(&self, env: &Envelope, message: &[u8]) -> Result<String, OutboxError> {
        let mut results = self.submit_batch(&[(env, message)]);
        results
            .pop()
            .unwrap_or_else(|| Err(OutboxError::BadEnvelope("no message".into())))
    }

    /// Queues several messages through `incoming/` at once, as [`Outbox::submit`] does one,
    /// with one durable write for them all (group commit: the submission listener batches
    /// the messages of its sessions this way). Returns each message's id, or why it was not
    /// queued, in order: a bad envelope fails its own message only; an I/O error fails every
    /// message of the batch that was not queued, and leaves nothing of them behind.
    pub fn submit_batch(
        &self,
        messages: &[(&Envelope, &[u8])],
    ) -> Vec<Result<String, OutboxError>> {
        let mut results: Vec<Result<String, OutboxError>> = Vec::with_capacity(messages.len());
        let mut records = Vec::with_capacity(messages.len());
        for (env, message) in messages {
            match check_envelope(env).and_then(|()| payload(env, message)) {
                Ok(data) => {
                    let id = new_id();
                    records.push((id.clone(), data));
                    results.push(Ok(id));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if records.is_empty() {
            return results;
        }
        let stored = match self.append_to_spool(&records) {
            Ok(true) => Ok(()),
            // No spool: a file each (an agent that made none, or a test without one).
            Ok(false) => records
                .iter()
                .try_for_each(|(id, data)| self.submit_file(id, data)),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(e.for_each_of_a_batch());
            }
        }
        results
    }

    /// Writes `incoming/<id>` (through `tmp/`) and syncs it and its directory entry.
    fn submit_file(&self, id: &str, data: &[u8]) -> Result<(), OutboxError> {
        let tmp = self.root().join("tmp");
        let name = format!("{id}.submit");
        let tmp_path = tmp.join(&name);
        let dest_dir = self.root().join(INCOMING);
        let dest = dest_dir.join(id);
        let result = (|| -> Result<(), OutboxError> {
            let dir = open_dir(&tmp)
                .map_err(|e| OutboxError::io(format!("opening {}", tmp.display()), e))?;
            create_file(&dir, &name, data)
                .and_then(|f| f.sync_all())
                .map_err(|e| OutboxError::io(format!("writing {}", tmp_path.display()), e))?;
            rename_noreplace(&tmp_path, &dest).map_err(|e| {
                OutboxError::io(
                    format!("moving {} to {}", tmp_path.display(), dest.display()),
                    e,
                )
            })?;
            if let Err(e) = fsync_dir(&dest_dir) {
                let _ = fs::remove_file(&dest);
                return Err(OutboxError::io(
                    format!("syncing {}", dest_dir.display()),
                    e,
                ));
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result
    }

    /// Moves the messages of `incoming/` (its files and the spool) into the queue (see the
    /// module documentation): one `syncfs` for the whole round, then their files are removed
    /// and what was taken of the spool (`.spool.taken`) too. A message that cannot be parsed
    /// goes to `failed/` with the reason (bytes of the spool that are no record, only by a
    /// round that takes everything in: a round that leaves them would store them again); an
    /// I/O error leaves it for the next round. Returns what happened to each: the files, then the spool's records,
    /// then its garbage, each in order.
    pub fn ingest_incoming(&self) -> Vec<Ingested> {
        let dir = self.root().join(INCOMING);
        let mut out = Vec::new();
        let names = self.incoming_ids();
        let drain = self.drain_spool().unwrap_or_else(|error| {
            out.push(Ingested::Deferred {
                file: SPOOL.to_owned(),
                error,
            });
            None
        });
        if names.is_empty() && drain.is_none() {
            return out;
        }
        // Files whose message is now in a folder: removed once the folders are durable.
        let mut done = Vec::new();
        for name in names {
            match self.ingest_one(&name) {
                Ok(Some(ingested)) => {
                    done.push(name);
                    out.push(ingested);
                }
                // Queued in an earlier round that did not get to remove the file.
                Ok(None) => done.push(name),
                Err(error) => out.push(Ingested::Deferred { file: name, error }),
            }
        }
        // What was taken is removed only when every record in it is in a folder now.
        let mut spool_taken = true;
        if let Some(drain) = &drain {
            let (ingested, errors) = self.ingest_spool(drain);
            out.extend(ingested);
            spool_taken = errors.is_empty();
            out.extend(errors.into_iter().map(|error| Ingested::Deferred {
                file: SPOOL.to_owned(),
                error,
            }));
        }
        let root = match open_dir(self.root()) {
            Ok(root) => root,
            Err(e) => {
                out.push(Ingested::Deferred {
                    file: String::new(),
                    error: OutboxError::io(format!("opening {}", self.root().display()), e),
                });
                return out;
            }
        };
        if let Err(e) = rustix::fs::syncfs(&root) {
            // The files and the spool stay; the next round finds their ids queued and only
            // removes them.
            out.push(Ingested::Deferred {
                file: String::new(),
                error: OutboxError::io(format!("syncing {}", self.root().display()), e),
            });
            return out;
        }
        for name in done {
            let _ = fs::remove_file(dir.join(&name));
        }
        if let Some(drain) = drain
            && spool_taken
            && let Err(error) = drain.finish()
        {
            out.push(Ingested::Deferred {
                file: SPOOL.to_owned(),
                error,
            });
        }
        out
    }

    /// Queues the records of a locked spool, one at a time, and (only when all of them are
    /// in a folder: a round that leaves the spool would store them again) keeps its garbage
    /// in `failed/`. Returns what happened and the errors that leave the spool as it is.
    fn ingest_spool(&self, drain: &Drain) -> (Vec<Ingested>, Vec<OutboxError>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut garbage = Garbage::default();
        for item in drain.items() {
            match item {
                Ok(Item::Record { id, payload }) => match self.ingest_payload(SPOOL, &id, &payload)
                {
                    Ok(ingested) => out.extend(ingested),
                    Err(error) => errors.push(error),
                },
                Ok(Item::Garbage {
                    sample,
                    len,
                    reason,
                }) => garbage.add(sample, len, reason),
                Err(e) => {
                    let path = self.root().join(INCOMING).join(SPOOL);
                    errors.push(OutboxError::io(format!("reading {}", path.display()), e));
                    break;
                }
            }
        }
        if !errors.is_empty() {
            return (out, errors);
        }
        for (sample, reason) in garbage.into_failures() {
            match self.store_failed(&sample, &reason) {
                Ok(id) => out.push(Ingested::Failed {
                    file: SPOOL.to_owned(),
                    id,
                    reason,
                }),
                Err(error) => errors.push(error),
            }
        }
        (out, errors)
    }

    /// The ids of the files in `incoming/`, sorted.
    pub(crate) fn incoming_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(self.root().join(INCOMING))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| validate_id(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Fresh states for the usable messages of `incoming/` (its files and the spool's
    /// records: what the agent has not taken in yet), sorted by id.
    pub fn incoming_states(&self) -> Vec<MessageState> {
        let dir = self.root().join(INCOMING);
        let max = self.limits().max_submission();
        let fresh = |id: &str, bytes: &[u8]| {
            let (env, message) = parse(bytes).ok()?;
            let queued_at = id.split('.').next()?.parse().ok()?;
            Some(MessageState::new(id, &env, message.len() as u64, queued_at))
        };
        let mut states: Vec<MessageState> = self
            .incoming_ids()
            .into_iter()
            .filter_map(|id| fresh(&id, &read_file(&dir.join(&id), max).ok()?))
            .collect();
        self.peek_spool(|id, payload| states.extend(fresh(id, payload)));
        states.sort_by(|a, b| a.id.cmp(&b.id));
        states
    }

    /// How many messages wait in `incoming/` (files and spool records).
    pub(crate) fn incoming_count(&self) -> usize {
        let mut records = 0;
        self.peek_spool(|_, _| records += 1);
        self.incoming_ids().len() + records
    }

    /// Queues `incoming/<id>` under the same id, without syncing. `None` when a message with
    /// this id is already in a folder (or the file went away).
    fn ingest_one(&self, id: &str) -> Result<Option<Ingested>, OutboxError> {
        let path = self.root().join(INCOMING).join(id);
        let max = self.limits().max_submission();
        let bytes = match read_file(&path, max) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                let size = fs::symlink_metadata(&path).map_or(0, |m| m.len());
                let reason = format!(
                    "{} (the file from incoming/: an envelope line, then the message)",
                    too_large_reason(size, self.limits().max_message_size)
                );
                let failed = self.fail_by_move(&path, size, &reason)?;
                return Ok(Some(Ingested::Failed {
                    file: id.to_owned(),
                    id: failed,
                    reason,
                }));
            }
            Err(e) => return Err(OutboxError::io(format!("reading {}", path.display()), e)),
        };
        self.ingest_payload(id, id, &bytes)
    }

    /// Queues message `id` (an envelope line and the message, from `file`) under that id,
    /// without syncing; what cannot be parsed goes to `failed/`. `None` when a message with
    /// this id is already in a folder.
    fn ingest_payload(
        &self,
        file: &str,
        id: &str,
        bytes: &[u8],
    ) -> Result<Option<Ingested>, OutboxError> {
        if self.locate(id)?.is_some() {
            return Ok(None);
        }
        let file = file.to_owned();
        let parsed = parse(bytes).and_then(|(env, message)| {
            check_envelope(&env).map_err(|e| e.to_string())?;
            Ok((env, message))
        });
        let (env, message) = match parsed {
            Ok(v) => v,
            Err(reason) => {
                let reason = format!("unusable message in incoming/: {reason}");
                let failed_id = self.store_failed(bytes, &reason)?;
                return Ok(Some(Ingested::Failed {
                    file,
                    id: failed_id,
                    reason,
                }));
            }
        };
        let now = now_secs();
        let made = self.build_and_move(
            Some(id),
            Folder::Queue,
            Content::Bytes(message),
            |id, size| MessageState::new(id, &env, size, now),
            false,
        );
        match made {
            Ok(id) => Ok(Some(Ingested::Queued { file, id })),
            Err(OutboxError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// What an `incoming/` file (or a spool record) holds for a message: the envelope line, then
/// the message.
fn payload(env: &Envelope, message: &[u8]) -> Result<Vec<u8>, OutboxError> {
    let mut data = Vec::with_capacity(MAGIC.len() + 256 + message.len());
    data.extend_from_slice(MAGIC);
    serde_json::to_writer(&mut data, env)
        .map_err(|e| OutboxError::io("encoding the envelope", io::Error::other(e)))?;
    data.push(b'\n');
    data.extend_from_slice(message);
    Ok(data)
}

/// Splits an `incoming/` file into its envelope and message.
fn parse(bytes: &[u8]) -> Result<(Envelope, &[u8]), String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("it does not start with a linkrelay envelope line")?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("its envelope line does not end")?;
    let env: Envelope =
        serde_json::from_slice(&rest[..end]).map_err(|e| format!("bad envelope line: {e}"))?;
    Ok((env, &rest[end + 1..]))
}

/// How many runs of garbage one round keeps in `failed/`; the rest are counted in the last.
const GARBAGE_KEPT: usize = 16;

/// The garbage of one drain: samples of the first runs, and a count of the others (a spool
/// can hold millions of runs, each cut short at the next bytes that look like a header).
#[derive(Default)]
struct Garbage {
    kept: Vec<(Vec<u8>, String)>,
    more_runs: u64,
    more_bytes: u64,
}

impl Garbage {
    fn add(&mut self, sample: Vec<u8>, len: u64, reason: String) {
        if self.kept.len() < GARBAGE_KEPT {
            let kept = sample.len() as u64;
            let mut reason = format!("unusable bytes in incoming/{SPOOL}: {reason}");
            if kept < len {
                reason.push_str(&format!(" ({len} bytes; the first {kept} are kept here)"));
            }
            self.kept.push((sample, reason));
        } else {
            self.more_runs += 1;
            self.more_bytes += len;
        }
    }

    /// What to store in `failed/`: a sample and the reason for each run kept.
    fn into_failures(mut self) -> Vec<(Vec<u8>, String)> {
        if self.more_runs > 0
            && let Some((_, reason)) = self.kept.last_mut()
        {
            reason.push_str(&format!(
                "; and {} more runs of unusable bytes ({} bytes), dropped",
                self.more_runs, self.more_bytes
            ));
        }
        self.kept
    }
}
