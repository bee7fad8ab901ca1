//! `incoming/.spool`: the way in while an agent runs, one append and one `fdatasync` per
//! message.
//!
//! A `linkrelay sendmail` process pays for the durability of each message it hands over, and
//! it runs once per message. One file per message (`incoming/<id>`, the way before) costs a new
//! inode, two syncs (the file, then the directory after the rename) and a removal by the agent.
//! An append to a file that already exists costs one `fdatasync` and no inode: the shape of a
//! log, where the file-per-message way is the shape of Maildir. nullmailer-inject and Postfix's
//! sendmail both write a new file per message; this is why ours is faster than both.
//!
//! The agent creates the spool when it takes the outbox ([`Outbox::open_journal`]); a
//! submitter that finds none (an older agent) writes `incoming/<id>` as before, and the agent
//! takes in both.
//!
//! Record: a header line `linkrelay-spool 1 <id> <length> <crc32>\n`, then `length` bytes: an
//! envelope line and the message, exactly what an `incoming/<id>` file holds. The CRC-32 (of
//! those bytes, hex) tells a complete record from one a killed writer left torn.
//!
//! Locking (`flock` on the spool): a submitter holds it exclusively while it appends and
//! `fdatasync`s, so that on any error it can cut its own record off again and leave nothing
//! behind. The agent holds it while it drains: it builds `queue/<id>/` for every record
//! without syncing, `syncfs`es once, and only then empties the spool (a crash in between
//! leaves records whose ids are queued already: the next drain skips them). Listings read the
//! spool without the lock and skip what does not check out (a record being written).
//!
//! Bytes that are no record (a writer killed in the middle of its append) go to `failed/` with
//! the reason, like any unusable input, and the drain goes on at the next record header.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};

use crate::error::OutboxError;
use crate::fsutil::{FILE_MODE, read_file};
use crate::id::validate_id;
use crate::outbox::{INCOMING, Outbox};

/// The spool's name in `incoming/`. Its leading dot keeps it from being taken for a message
/// file (ids start with a letter or digit).
pub(crate) const SPOOL: &str = ".spool";

/// The start of every record's header line.
const HEADER: &[u8] = b"linkrelay-spool 1 ";

/// The longest header line read (id, length and CRC fit well within it).
const HEADER_MAX: usize = 256;

/// What a spool's bytes hold, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// A complete record.
    Record {
        /// The message's id, chosen by the submitter.
        id: &'a str,
        /// The envelope line and the message.
        payload: &'a [u8],
    },
    /// Bytes that are no complete record, up to the next record header (or the end).
    Garbage {
        /// The bytes.
        bytes: &'a [u8],
        /// Why they are not a record.
        reason: String,
    },
}

/// The bytes of one record for message `id`.
pub(crate) fn encode(id: &str, payload: &[u8]) -> Vec<u8> {
    let header = format!(
        "{} {} {:08x}\n",
        id,
        payload.len(),
        crc32fast::hash(payload)
    );
    let mut out = Vec::with_capacity(HEADER.len() + header.len() + payload.len());
    out.extend_from_slice(HEADER);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a spool's bytes into records and garbage.
pub(crate) fn items(bytes: &[u8]) -> Vec<Item<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match record_at(&bytes[pos..]) {
            Ok((id, payload, len)) => {
                out.push(Item::Record { id, payload });
                pos += len;
            }
            Err(reason) => {
                let next = find(&bytes[pos + 1..], HEADER).map_or(bytes.len(), |i| pos + 1 + i);
                out.push(Item::Garbage {
                    bytes: &bytes[pos..next],
                    reason,
                });
                pos = next;
            }
        }
    }
    out
}

/// The record at the start of `bytes`: its id, its payload, and its whole length.
fn record_at(bytes: &[u8]) -> Result<(&str, &[u8], usize), String> {
    let rest = bytes
        .strip_prefix(HEADER)
        .ok_or("no record header where one should start")?;
    let end = rest
        .iter()
        .take(HEADER_MAX)
        .position(|b| *b == b'\n')
        .ok_or("a record header that does not end")?;
    let line = std::str::from_utf8(&rest[..end]).map_err(|_| "a record header that is not text")?;
    let mut fields = line.split(' ');
    let (Some(id), Some(len), Some(crc), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("a malformed record header {line:?}"));
    };
    validate_id(id).map_err(|e| format!("a record header with a bad id: {e}"))?;
    let len: usize = len
        .parse()
        .map_err(|_| format!("a record header with a bad length {len:?}"))?;
    let crc = u32::from_str_radix(crc, 16)
        .map_err(|_| format!("a record header with a bad checksum {crc:?}"))?;
    let start = HEADER.len() + end + 1;
    let payload = bytes
        .get(start..)
        .and_then(|b| b.get(..len))
        .ok_or_else(|| format!("record {id} is cut short (a writer stopped in the middle)"))?;
    if crc32fast::hash(payload) != crc {
        return Err(format!("record {id} does not match its checksum"));
    }
    Ok((id, payload, start + len))
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens the spool (never following a link, never blocking on a FIFO) and checks that it is a
/// regular file. `None` when there is no spool.
fn open(outbox: &Outbox, flags: OFlags) -> Result<Option<File>, OutboxError> {
    let path = outbox.spool_path();
    let fd: OwnedFd = match rustix::fs::open(
        &path,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(OutboxError::io(format!("opening {}", path.display()), e)),
    };
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| OutboxError::io(format!("reading {}", path.display()), e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(OutboxError::io(
            format!("opening {}", path.display()),
            io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    Ok(Some(File::from(fd)))
}

/// Takes the spool's lock, waiting for it.
fn lock(outbox: &Outbox, file: &File) -> Result<(), OutboxError> {
    rustix::fs::flock(file, FlockOperation::LockExclusive)
        .map_err(|e| OutboxError::io(format!("locking {}", outbox.spool_path().display()), e))
}

/// The spool's size; 0 when there is none.
fn size(outbox: &Outbox) -> u64 {
    std::fs::symlink_metadata(outbox.spool_path()).map_or(0, |m| m.len())
}

/// A drained spool, still locked: emptied by [`Drain::finish`] once what was taken from it
/// is durable.
pub(crate) struct Drain {
    outbox: Outbox,
    /// Open for reading only: closing a file opened for writing is what wakes the agent's
    /// watch (`IN_CLOSE_WRITE`), and a round that cannot take everything in (a full disk)
    /// would then wake itself again at once, for as long as the disk stays full.
    file: File,
    bytes: Vec<u8>,
}

impl Drain {
    /// The records and garbage drained.
    pub(crate) fn items(&self) -> Vec<Item<'_>> {
        items(&self.bytes)
    }

    /// Empties the spool (no sync needed: a record that comes back after a crash has its id
    /// queued already) and lets submitters in again. Truncates through a second descriptor,
    /// opened for writing only now, after checking that it is the file locked.
    pub(crate) fn finish(self) -> Result<(), OutboxError> {
        let ctx = |e| {
            OutboxError::io(
                format!("emptying {}", self.outbox.spool_path().display()),
                e,
            )
        };
        let Some(writable) = open(&self.outbox, OFlags::WRONLY)? else {
            return Ok(());
        };
        let (a, b) = (
            rustix::fs::fstat(&self.file).map_err(|e| ctx(e.into()))?,
            rustix::fs::fstat(&writable).map_err(|e| ctx(e.into()))?,
        );
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
            return Err(ctx(io::Error::other(
                "the spool was replaced while it was drained",
            )));
        }
        writable.set_len(0).map_err(ctx)
    }
}

impl Outbox {
    /// `incoming/.spool`.
    fn spool_path(&self) -> PathBuf {
        self.root().join(INCOMING).join(SPOOL)
    }

    /// Creates the spool if there is none (mode 0600). The agent calls it when it takes the
    /// outbox: from then on submitters append to it.
    pub(crate) fn create_spool(&self) -> Result<(), OutboxError> {
        let path = self.spool_path();
        let fd = rustix::fs::open(
            &path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| OutboxError::io(format!("creating {}", path.display()), e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))
            .map_err(|e| OutboxError::io(format!("setting the mode of {}", path.display()), e))
    }

    /// Appends the records `(id, payload)` to the spool and makes them durable with one
    /// `fdatasync`; `Ok(false)` when there is no spool. On error every record is cut off
    /// again: nothing is left behind.
    pub(crate) fn append_to_spool(
        &self,
        records: &[(String, Vec<u8>)],
    ) -> Result<bool, OutboxError> {
        let Some(mut file) = open(self, OFlags::WRONLY | OFlags::APPEND)? else {
            return Ok(false);
        };
        lock(self, &file)?;
        let ctx = || format!("appending to {}", self.spool_path().display());
        let before = file
            .metadata()
            .map_err(|e| OutboxError::io(ctx(), e))?
            .len();
        let mut bytes = Vec::with_capacity(records.iter().map(|(_, p)| p.len() + 96).sum());
        for (id, payload) in records {
            bytes.extend_from_slice(&encode(id, payload));
        }
        let written = file
            .write_all(&bytes)
            .and_then(|()| rustix::fs::fdatasync(&file).map_err(io::Error::from));
        if let Err(e) = written {
            // We hold the lock: nobody appended after us, and the agent has not drained.
            let _ = file.set_len(before);
            return Err(OutboxError::io(ctx(), e));
        }
        Ok(true)
    }

    /// Locks and reads the spool for draining; `None` when it is missing or empty (checked
    /// first with a `stat`: the agent asks after every arrival, and it is mostly empty).
    pub(crate) fn drain_spool(&self) -> Result<Option<Drain>, OutboxError> {
        if size(self) == 0 {
            return Ok(None);
        }
        let Some(mut file) = open(self, OFlags::RDONLY)? else {
            return Ok(None);
        };
        lock(self, &file)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| OutboxError::io(format!("reading {}", self.spool_path().display()), e))?;
        Ok(Some(Drain {
            outbox: self.clone(),
            file,
            bytes,
        }))
    }

    /// The spool's bytes as they are now, read without the lock (for listings: a record
    /// being written does not check out and is skipped). Empty when there is no spool.
    pub(crate) fn peek_spool(&self) -> Vec<u8> {
        if size(self) == 0 {
            return Vec::new();
        }
        read_file(&self.spool_path()).unwrap_or_default()
    }
}
