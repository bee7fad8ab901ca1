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
//! behind. A drain holds it only for a moment: it makes an empty `.spool.taken`, swaps the
//! two names (`RENAME_EXCHANGE`: there is always a spool to append to) and keeps the lock of
//! what it took. Submitters go on at once with the new, empty spool (one that waited for the
//! lock finds its file renamed away, and opens the spool again); the drain builds
//! `queue/<id>/` for every record it took without syncing, `syncfs`es once, and only then
//! removes `.spool.taken`. The `syncfs` (tens of ms on a busy disk) so never holds up a
//! submitter: the listener's sessions wait for their own `fdatasync` only. A crash (or a
//! round that cannot finish, a full disk) leaves `.spool.taken`: the next drain takes it
//! first, skipping records whose ids are queued already. Drains take turns on the lock of
//! `.spool.taken`. Listings read both files without a lock and skip what does not check out
//! (a record being written).
//!
//! Bytes that are no record (a writer killed in the middle of its append) go to `failed/` with
//! the reason, like any unusable input, and the drain goes on at the next record header.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};

use crate::error::OutboxError;
use crate::fsutil::FILE_MODE;
use crate::id::validate_id;
use crate::outbox::{INCOMING, Outbox};

/// The spool's name in `incoming/`. Its leading dot keeps it from being taken for a message
/// file (ids start with a letter or digit).
pub(crate) const SPOOL: &str = ".spool";

/// What a drain took from the spool, until the records are durable in the queue.
pub(crate) const TAKEN: &str = ".spool.taken";

/// The start of every record's header line.
const HEADER: &[u8] = b"linkrelay-spool 1 ";

/// The longest header line read (id, length and CRC fit well within it).
const HEADER_MAX: usize = 256;

/// What a spool holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A complete record.
    Record {
        /// The message's id, chosen by the submitter.
        id: String,
        /// The envelope line and the message.
        payload: Vec<u8>,
    },
    /// Bytes that are no complete record, up to the next record header (or the end).
    Garbage {
        /// The first [`GARBAGE_SAMPLE`] bytes of them, kept in `failed/` for a look.
        sample: Vec<u8>,
        /// How many bytes they are.
        len: u64,
        /// Why they are not a record.
        reason: String,
    },
}

/// How much of a run of garbage is kept: enough to see what it was.
pub(crate) const GARBAGE_SAMPLE: usize = 64 * 1024;

/// Bytes looked at at once while searching for the next record header.
const SCAN_CHUNK: usize = 64 * 1024;

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

/// Random access to a spool's bytes: the spool file, or (in tests) a slice.
pub(crate) trait Bytes {
    /// How many bytes there are.
    fn size(&self) -> u64;
    /// Reads at `offset` into `buf` until it is full or the bytes end; how many were read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The first offset at or after `offset` that is not in a hole (a sparse file's
    /// unwritten range reads as zeros, which hold no record header): `size()` when none is.
    fn data_from(&self, offset: u64) -> u64 {
        offset
    }
}

impl Bytes for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// The spool file, with the size it had when opened: what is appended later is the next
/// round's (a drain swapped it away and holds its lock, so nothing is).
pub(crate) struct SpoolFile {
    file: File,
    size: u64,
}

impl SpoolFile {
    fn new(file: File) -> io::Result<SpoolFile> {
        let size = file.metadata()?.len();
        Ok(SpoolFile { file, size })
    }
}

impl Bytes for SpoolFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn data_from(&self, offset: u64) -> u64 {
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => at.max(offset),
            // ENXIO: only a hole from here to the end.
            Err(rustix::io::Errno::NXIO) => self.size,
            // A file system without SEEK_DATA: look at every byte.
            Err(_) => offset,
        }
    }
}

/// What is at a position of a spool: a record (its id, its payload and its whole length), or
/// why there is none.
type Found = Result<(String, Vec<u8>, u64), String>;

/// The records and garbage of a spool, one at a time: at most one record (of at most
/// `max_record` bytes) or one garbage sample is in memory, whatever the spool's size.
pub(crate) struct Items<'a, B: Bytes + ?Sized> {
    bytes: &'a B,
    pos: u64,
    max_record: u64,
    failed: bool,
}

/// Walks the records and garbage of `bytes`; a record claiming more than `max_record` bytes
/// is garbage.
pub(crate) fn items<B: Bytes + ?Sized>(bytes: &B, max_record: u64) -> Items<'_, B> {
    Items {
        bytes,
        pos: 0,
        max_record,
        failed: false,
    }
}

impl<B: Bytes + ?Sized> Iterator for Items<'_, B> {
    type Item = io::Result<Item>;

    fn next(&mut self) -> Option<io::Result<Item>> {
        if self.failed || self.pos >= self.bytes.size() {
            return None;
        }
        let item = self.item_at_pos();
        self.failed = item.is_err();
        Some(item)
    }
}

impl<B: Bytes + ?Sized> Items<'_, B> {
    fn item_at_pos(&mut self) -> io::Result<Item> {
        let reason = match self.record_at(self.pos)? {
            Ok((id, payload, len)) => {
                self.pos += len;
                return Ok(Item::Record { id, payload });
            }
            Err(reason) => reason,
        };
        let start = self.pos;
        let next = self.next_header(start + 1)?;
        let len = next - start;
        let mut sample = vec![
            0;
            usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(GARBAGE_SAMPLE)
        ];
        let n = self.bytes.read_at(&mut sample, start)?;
        sample.truncate(n);
        self.pos = next;
        Ok(Item::Garbage {
            sample,
            len,
            reason,
        })
    }

    /// The record at `pos`: its id, its payload and its whole length; `Err` (the inner one)
    /// says why there is none.
    fn record_at(&self, pos: u64) -> io::Result<Found> {
        let mut head = [0; HEADER.len() + HEADER_MAX];
        let n = self.bytes.read_at(&mut head, pos)?;
        let (id, len, crc, start) = match parse_header(&head[..n]) {
            Ok(h) => h,
            Err(reason) => return Ok(Err(reason)),
        };
        if len > self.max_record {
            return Ok(Err(format!(
                "record {id} claims {len} bytes, more than the {} a submitted message may have",
                self.max_record
            )));
        }
        // Checked before anything is allocated: a torn record may claim more than is there.
        if pos + start + len > self.bytes.size() {
            return Ok(Err(format!(
                "record {id} is cut short (a writer stopped in the middle)"
            )));
        }
        let mut payload = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        let got = self.bytes.read_at(&mut payload, pos + start)?;
        if got as u64 != len {
            return Ok(Err(format!(
                "record {id} is cut short (a writer stopped in the middle)"
            )));
        }
        if crc32fast::hash(&payload) != crc {
            return Ok(Err(format!("record {id} does not match its checksum")));
        }
        Ok(Ok((id, payload, start + len)))
    }

    /// The offset of the next record header at or after `from`, or the end. Holes are
    /// skipped without reading them.
    fn next_header(&self, from: u64) -> io::Result<u64> {
        let size = self.bytes.size();
        let mut chunk = vec![0; SCAN_CHUNK];
        let mut at = from;
        while at < size {
            at = self.bytes.data_from(at);
            if at >= size {
                break;
            }
            let n = self.bytes.read_at(&mut chunk, at)?;
            if n == 0 {
                break;
            }
            if let Some(i) = find(&chunk[..n], HEADER) {
                return Ok(at + i as u64);
            }
            // A header may straddle the chunk's end: look at its last bytes again.
            let step = n.saturating_sub(HEADER.len() - 1).max(1);
            at += step as u64;
        }
        Ok(size)
    }
}

/// Parses the record header at the start of `bytes`: id, payload length, CRC and where the
/// payload starts.
fn parse_header(bytes: &[u8]) -> Result<(String, u64, u32, u64), String> {
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
    let len: u64 = len
        .parse()
        .map_err(|_| format!("a record header with a bad length {len:?}"))?;
    let crc = u32::from_str_radix(crc, 16)
        .map_err(|_| format!("a record header with a bad checksum {crc:?}"))?;
    Ok((id.to_owned(), len, crc, (HEADER.len() + end + 1) as u64))
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens the spool (never following a link, never blocking on a FIFO) and checks that it is a
/// regular file. `None` when there is no spool.
fn open(outbox: &Outbox, flags: OFlags) -> Result<Option<File>, OutboxError> {
    open_at(&outbox.spool_path(), flags)
}

/// [`open`] for the file at `path` (the spool, or what a drain took).
fn open_at(path: &Path, flags: OFlags) -> Result<Option<File>, OutboxError> {
    let fd: OwnedFd = match rustix::fs::open(
        path,
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

/// Whether `file` is still the one named `path` (a drain renames the spool away).
fn still_named(file: &File, path: &Path) -> bool {
    let (Ok(a), Ok(b)) = (
        rustix::fs::fstat(file),
        rustix::fs::statat(rustix::fs::CWD, path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
    ) else {
        return false;
    };
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

/// Takes the lock of `file` (named `path`), waiting for it.
fn lock(path: &Path, file: &File) -> Result<(), OutboxError> {
    rustix::fs::flock(file, FlockOperation::LockExclusive)
        .map_err(|e| OutboxError::io(format!("locking {}", path.display()), e))
}

/// The spool's size; 0 when there is none.
fn size(outbox: &Outbox) -> u64 {
    std::fs::symlink_metadata(outbox.spool_path()).map_or(0, |m| m.len())
}

/// What a drain took from the spool (renamed `.spool.taken`, still locked): removed by
/// [`Drain::finish`] once what was taken from it is durable.
pub(crate) struct Drain {
    outbox: Outbox,
    /// Open for reading only: closing a file opened for writing is what wakes the agent's
    /// watch (`IN_CLOSE_WRITE`), and a round that cannot take everything in (a full disk)
    /// would then wake itself again at once, for as long as the disk stays full.
    spool: SpoolFile,
}

impl Drain {
    /// The records and garbage to drain, one at a time.
    pub(crate) fn items(&self) -> Items<'_, SpoolFile> {
        items(&self.spool, self.outbox.limits().max_submission())
    }

    /// Removes `.spool.taken` (no sync needed: a record that comes back after a crash has
    /// its id queued already), after checking that it is the file locked.
    pub(crate) fn finish(self) -> Result<(), OutboxError> {
        let taken = self.outbox.taken_path();
        if !still_named(&self.spool.file, &taken) {
            return Err(OutboxError::io(
                format!("removing {}", taken.display()),
                io::Error::other("it was replaced while it was drained"),
            ));
        }
        std::fs::remove_file(&taken)
            .map_err(|e| OutboxError::io(format!("removing {}", taken.display()), e))
    }
}

impl Outbox {
    /// `incoming/.spool`.
    fn spool_path(&self) -> PathBuf {
        self.root().join(INCOMING).join(SPOOL)
    }

    /// `incoming/.spool.taken`.
    fn taken_path(&self) -> PathBuf {
        self.root().join(INCOMING).join(TAKEN)
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
        let path = self.spool_path();
        let mut file = loop {
            let Some(file) = open(self, OFlags::WRONLY | OFlags::APPEND)? else {
                return Ok(false);
            };
            lock(&path, &file)?;
            // A drain swapped it away while we waited for the lock: append to the new one.
            if still_named(&file, &path) {
                break file;
            }
        };
        let ctx = || format!("appending to {}", path.display());
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
            // We hold the lock: nobody appended after us, and no drain took it.
            let _ = file.set_len(before);
            return Err(OutboxError::io(ctx(), e));
        }
        Ok(true)
    }

    /// Takes what waits in the spool for draining: what an earlier drain took and did not
    /// finish (`.spool.taken`), else the spool's records, swapped out as `.spool.taken` (see
    /// the module documentation). `None` when there is nothing (checked first with a `stat`:
    /// the agent asks after every arrival, and the spool is mostly empty).
    pub(crate) fn drain_spool(&self) -> Result<Option<Drain>, OutboxError> {
        let taken = self.taken_path();
        if let Some(file) = open_at(&taken, OFlags::RDONLY)? {
            lock(&taken, &file)?;
            // Another drain may have finished it while we waited.
            if still_named(&file, &taken) {
                return self.drain_of(file, &taken).map(Some);
            }
        }
        if size(self) == 0 {
            return Ok(None);
        }
        let path = self.spool_path();
        let Some(file) = open(self, OFlags::RDONLY)? else {
            return Ok(None);
        };
        lock(&path, &file)?;
        if !still_named(&file, &path) {
            // Another drain took it while we waited.
            return Ok(None);
        }
        // The empty spool to come, made read-only so that closing it wakes no watch.
        match rustix::fs::open(
            &taken,
            OFlags::RDONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        ) {
            Ok(fd) => {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))
                    .map_err(|e| OutboxError::io(format!("creating {}", taken.display()), e))?;
            }
            // Another drain swapped it just now: its turn.
            Err(rustix::io::Errno::EXIST) => return Ok(None),
            Err(e) => return Err(OutboxError::io(format!("creating {}", taken.display()), e)),
        }
        let swapped = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &path,
            rustix::fs::CWD,
            &taken,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        if let Err(e) = swapped {
            // A file system without the swap: a moment without a spool, when a submitter
            // writes a file of its own instead.
            let fallback = std::fs::rename(&path, &taken).and_then(|()| {
                rustix::fs::open(
                    &path,
                    OFlags::RDONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(FILE_MODE),
                )
                .map(drop)
                .map_err(io::Error::from)
            });
            if let Err(e2) = fallback {
                let _ = std::fs::remove_file(&taken);
                return Err(OutboxError::io(
                    format!("taking {}", path.display()),
                    io::Error::other(format!("{e}; then {e2}")),
                ));
            }
        }
        // Still locked: we hold the file that is now `.spool.taken`.
        self.drain_of(file, &taken).map(Some)
    }

    fn drain_of(&self, file: File, path: &Path) -> Result<Drain, OutboxError> {
        let spool = SpoolFile::new(file)
            .map_err(|e| OutboxError::io(format!("reading {}", path.display()), e))?;
        Ok(Drain {
            outbox: self.clone(),
            spool,
        })
    }

    /// The records waiting in the spool as it is now (what a drain took, then the spool),
    /// read without the lock (for listings: a record being written does not check out and is
    /// skipped), one at a time, each given to `f`. Nothing for a file that is missing or
    /// cannot be read.
    pub(crate) fn peek_spool(&self, mut f: impl FnMut(&str, &[u8])) {
        for path in [self.taken_path(), self.spool_path()] {
            if std::fs::symlink_metadata(&path).map_or(0, |m| m.len()) == 0 {
                continue;
            }
            let Ok(Some(file)) = open_at(&path, OFlags::RDONLY) else {
                continue;
            };
            let Ok(spool) = SpoolFile::new(file) else {
                continue;
            };
            for item in items(&spool, self.limits().max_submission()) {
                match item {
                    Ok(Item::Record { id, payload }) => f(&id, &payload),
                    Ok(Item::Garbage { .. }) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
