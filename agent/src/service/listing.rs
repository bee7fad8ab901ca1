//! Listing the queue (`ListQueue`, `StreamQueue`, the notifier's scan) off the event loop.
//!
//! The event loop only takes a [`Listing`]: the outboxes to walk, each user's route and the
//! time (cheap, no file is read). The walk itself runs on a blocking thread, one message at a
//! time (`Outbox::message_ids`, then `Outbox::entry` per id), so a queue of 100,000 messages
//! neither stalls the loop (flush events, signals, other calls go on) nor sits in memory
//! whole. `StreamQueue` writes each message as a JSON line ([`QueueLine`]) into a pipe whose
//! read end is the reply; the pipe's capacity is the only buffer between the two sides.

use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrelay_config::UserName;
use linkrelay_dbus::agent::{AgentError, MessageInfo, QueueLine};
use linkrelay_outbox::{Folder, FolderReader, MessageState, Outbox, OutboxError, RecipientStatus};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, warn};

use crate::delivery::flusher::UserRoute;
use crate::delivery::memory::{RelayMemory, lock};
use crate::router::Route;

/// The status of mail handed to the agent that the disk had no room to queue yet.
const NO_SPACE: &str =
    "waiting for disk space: safe in incoming/, queued as soon as the disk has room";

/// Bytes of JSON lines handed to the pipe writer at once.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for the pipe: with [`CHUNK`], what a listing holds at most beyond the pipe.
const CHUNKS_AHEAD: usize = 2;
/// A reader that takes nothing for this long is gone: the listing stops.
const STALL: Duration = Duration::from_secs(60);
/// States read by one thread at a time in a listing.
const READ_CHUNK: usize = 256;
/// Pipe capacity asked for (the kernel may give less to an unprivileged user).
const PIPE_SIZE: usize = 1 << 20;

/// One user of a listing.
pub struct ListedUser {
    /// The user's name.
    pub name: UserName,
    /// The user's outbox.
    pub outbox: Outbox,
    /// The user's route now.
    pub route: UserRoute,
    /// The user's flusher could not move mail out of `incoming/` for lack of disk space in
    /// its last round: what waits there is listed as waiting for disk space.
    pub no_space: bool,
}

/// What a listing walks, taken by the event loop in one step.
pub struct Listing {
    /// The users, in user order.
    pub users: Vec<ListedUser>,
    /// Relay memory, for "refuses us" statuses.
    pub memory: Arc<Mutex<RelayMemory>>,
    /// Unix seconds the statuses are computed for.
    pub t: u64,
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("Listing")
            .field("users", &users)
            .field("t", &self.t)
            .finish_non_exhaustive()
    }
}

impl Listing {
    /// Calls `f` with each queued then failed message of each user, in order, until it says
    /// stop. Returns how many messages were passed. Blocking: run it off the event loop.
    pub fn for_each(
        &self,
        mut f: impl FnMut(MessageInfo) -> ControlFlow<()>,
    ) -> Result<u64, AgentError> {
        let mut count = 0;
        for user in &self.users {
            let (name, outbox, route) = (&user.name, &user.outbox, &user.route);
            for folder in [Folder::Queue, Folder::Failed] {
                // What `linkrelay sendmail` submitted and the flusher has not taken in yet is
                // queued for the user; read it first, so that a message taken in meanwhile
                // is listed once (from queue/), never missed.
                let mut waiting = match folder {
                    Folder::Queue => outbox.incoming_states(),
                    _ => Vec::new(),
                };
                let ids = outbox.message_ids(folder).map_err(map_outbox_err)?;
                waiting.retain(|m| ids.binary_search(&m.id).is_err());
                let reader = outbox.reader(folder).map_err(map_outbox_err)?;
                let mut one = |m: MessageState, waiting: bool| {
                    let status = if waiting && user.no_space {
                        NO_SPACE.to_owned()
                    } else {
                        message_status(&m, folder, route, self.t, &self.memory)
                    };
                    count += 1;
                    f(message_info(name, folder, m, status))
                };
                let mut flow = read_in_order(&reader, &ids, |m| one(m, false));
                for m in waiting {
                    if flow.is_break() {
                        break;
                    }
                    flow = one(m, true);
                }
                if flow.is_break() {
                    return Ok(count);
                }
            }
        }
        Ok(count)
    }

    /// The whole listing in memory (`ListQueue`). Blocking.
    pub fn collect(&self) -> Result<Vec<MessageInfo>, AgentError> {
        let mut out = Vec::new();
        self.for_each(|m| {
            out.push(m);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Starts streaming the listing as JSON lines into a pipe and returns its read end. The
    /// walk runs on a blocking thread, the writing on a task; both end when the reader closes
    /// its end or takes nothing for [`STALL`]. `permit` is held until then.
    pub fn stream(self, permit: OwnedSemaphorePermit) -> Result<OwnedFd, AgentError> {
        let (reader, writer) =
            std::io::pipe().map_err(|e| AgentError::Io(format!("cannot make a pipe: {e}")))?;
        let writer = OwnedFd::from(writer);
        // Fewer wake-ups of both sides; the default 64 KiB still works.
        let _ = rustix::pipe::fcntl_setpipe_size(&writer, PIPE_SIZE);
        let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(writer)
            .map_err(|e| AgentError::Io(format!("cannot use the pipe: {e}")))?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHUNKS_AHEAD);

        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(CHUNK + 4096);
            let mut gone = false;
            let result = self.for_each(|m| {
                push_line(&mut buf, &QueueLine::Message(m));
                if buf.len() >= CHUNK {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                    if tx.blocking_send(full).is_err() {
                        gone = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            });
            if gone {
                debug!("queue listing: the reader went away");
                return;
            }
            let last = match result {
                Ok(count) => QueueLine::End { count },
                Err(e) => {
                    warn!("queue listing stopped: {e:?}");
                    let (name, message) = error_parts(&e);
                    QueueLine::Error { name, message }
                }
            };
            push_line(&mut buf, &last);
            let _ = tx.blocking_send(buf);
        });

        tokio::spawn(async move {
            let _permit = permit;
            while let Some(chunk) = rx.recv().await {
                match tokio::time::timeout(STALL, pipe.write_all(&chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!("queue listing: {e}");
                        break;
                    }
                    Err(_) => {
                        warn!("queue listing: the reader took nothing for {STALL:?}; stopped");
                        break;
                    }
                }
            }
            // Dropping `rx` stops the walk at its next chunk; dropping `pipe` ends the stream.
        });
        Ok(OwnedFd::from(reader))
    }
}

/// Reads the states of `ids` and passes them to `f` in order. A second thread reads every
/// other chunk meanwhile: reading (open, read, parse) is most of a listing's work, and
/// this halves its wall time on two idle cores.
fn read_in_order(
    reader: &FolderReader<'_>,
    ids: &[String],
    mut f: impl FnMut(MessageState) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let chunks: Vec<&[String]> = ids.chunks(READ_CHUNK).collect();
    if chunks.len() < 2 {
        return ids
            .iter()
            .filter_map(|id| reader.entry(id))
            .try_for_each(&mut f);
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Option<MessageState>>>(2);
        let odd = &chunks;
        let helper = std::thread::Builder::new()
            .name("queue-listing".into())
            .spawn_scoped(scope, move || {
                for chunk in odd.iter().skip(1).step_by(2) {
                    let states = chunk.iter().map(|id| reader.entry(id)).collect();
                    if tx.send(states).is_err() {
                        return; // the listing stopped
                    }
                }
            });
        for (i, chunk) in chunks.iter().enumerate() {
            let states: Vec<Option<MessageState>> = match (i % 2, &helper) {
                (1, Ok(_)) => match rx.recv() {
                    Ok(states) => states,
                    Err(_) => chunk.iter().map(|id| reader.entry(id)).collect(),
                },
                _ => chunk.iter().map(|id| reader.entry(id)).collect(),
            };
            for m in states.into_iter().flatten() {
                f(m)?;
            }
        }
        ControlFlow::Continue(())
    })
}

fn push_line(buf: &mut Vec<u8>, line: &QueueLine) {
    // Serialising owned strings and numbers into a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, line).is_ok() {
        buf.push(b'\n');
    }
}

/// The D-Bus error name and message of an error, for the stream's error line.
fn error_parts(e: &AgentError) -> (String, String) {
    let (name, message) = match e {
        AgentError::ZBus(e) => ("ZBus", e.to_string()),
        AgentError::UnknownUser(m) => ("UnknownUser", m.clone()),
        AgentError::UnknownId(m) => ("UnknownId", m.clone()),
        AgentError::UnknownLink(m) => ("UnknownLink", m.clone()),
        AgentError::UnknownRelay(m) => ("UnknownRelay", m.clone()),
        AgentError::InvalidArgument(m) => ("InvalidArgument", m.clone()),
        AgentError::AccessDenied(m) => ("AccessDenied", m.clone()),
        AgentError::ConfigInvalid(m) => ("ConfigInvalid", m.clone()),
        AgentError::Io(m) => ("Io", m.clone()),
    };
    (format!("org.linkrelay.Agent1.Error.{name}"), message)
}

/// Maps an outbox error to the D-Bus error a caller sees.
pub fn map_outbox_err(e: OutboxError) -> AgentError {
    match e {
        OutboxError::BadId(id) => AgentError::InvalidArgument(format!("not a message id: {id:?}")),
        OutboxError::NotFound(id) => AgentError::UnknownId(id),
        other => AgentError::Io(other.to_string()),
    }
}

/// Why a message is where it is, in words. Pure apart from reading relay memory.
pub fn message_status(
    m: &MessageState,
    folder: Folder,
    route: &UserRoute,
    t: u64,
    memory: &Mutex<RelayMemory>,
) -> String {
    if folder == Folder::Failed {
        return format!(
            "failed: {}",
            m.failure.clone().unwrap_or_else(|| "unknown reason".into())
        );
    }
    match &route.route {
        Route::Hold { reason } => format!("held: {reason}"),
        Route::Send { relays, max_size } => {
            if let Some(max) = max_size
                && m.size > *max
            {
                return format!(
                    "held: larger than the {max} bytes allowed on metered link {}",
                    route.link
                );
            }
            let mem = lock(memory);
            if !relays.is_empty()
                && relays
                    .iter()
                    .all(|r| mem.refusal(&route.link, r, t).is_some())
            {
                let r = &relays[0];
                let reply = mem
                    .refusal(&route.link, r, t)
                    .map(|f| f.reply.clone())
                    .unwrap_or_default();
                return format!("waiting: {r} refuses us on link {} ({reply})", route.link);
            }
            if m.next_attempt > t {
                let when = humantime::format_duration(Duration::from_secs(m.next_attempt - t));
                format!(
                    "deferred, next try in {when}: {}",
                    m.last_error.clone().unwrap_or_default()
                )
            } else {
                "due: sending".into()
            }
        }
    }
}

/// The D-Bus form of a message.
pub fn message_info(user: &str, folder: Folder, m: MessageState, status: String) -> MessageInfo {
    MessageInfo {
        id: m.id,
        user: user.to_string(),
        folder: folder.to_string(),
        from: m.from,
        recipients: m
            .recipients
            .into_iter()
            .map(|r| linkrelay_dbus::agent::RecipientInfo {
                addr: r.addr,
                state: match r.status {
                    RecipientStatus::Pending => "pending",
                    RecipientStatus::Sent => "sent",
                    RecipientStatus::Failed => "failed",
                }
                .into(),
                reply: r.reply.unwrap_or_default(),
            })
            .collect(),
        size: m.size,
        queued_at: m.queued_at,
        attempts: m.attempts,
        next_attempt: m.next_attempt,
        last_relay: m.last_relay.unwrap_or_default(),
        last_error: m.last_error.unwrap_or_default(),
        status,
    }
}
