//! The envelope and the per-message delivery state stored as `state.json`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dsn::Dsn;

/// The SMTP envelope of a message: who it is from (`MAIL FROM`) and to (`RCPT TO`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The envelope sender; `""` is the null sender (`MAIL FROM:<>`).
    pub from: String,
    /// The envelope recipients, in order, without duplicates.
    pub recipients: Vec<String>,
    /// Delivery status notifications asked for (SMTP's DSN parameters, sendmail's `-N`, `-R`,
    /// `-V`); `None` when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<Dsn>,
}

/// Where delivery to one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Not delivered yet; will be tried (again).
    Pending,
    /// A relay accepted the message for this recipient.
    Sent,
    /// A relay rejected this recipient for good.
    Failed,
}

/// One envelope recipient and its delivery status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// The address, as given in the envelope.
    pub addr: String,
    /// Where delivery to it stands.
    pub status: RecipientStatus,
    /// The last server reply about this recipient, if any.
    #[serde(default)]
    pub reply: Option<String>,
}

/// The envelope and delivery state of one message, stored as `<folder>/<id>/state.json`.
///
/// Unknown fields are ignored on read (a newer agent may add some); missing optional fields
/// take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// Format version of this record ([`MessageState::VERSION`] when written by this crate).
    pub version: u32,
    /// The message id (also its directory name).
    pub id: String,
    /// The envelope sender; `""` is the null sender.
    pub from: String,
    /// The envelope recipients with their status.
    pub recipients: Vec<RecipientState>,
    /// Size of `message.eml` in bytes.
    pub size: u64,
    /// When the message was queued (unix seconds). [`crate::Outbox::retry`] of a failed message
    /// sets it to the time of the retry, so that the lifetime starts again; the id keeps the
    /// original enqueue time.
    pub queued_at: u64,
    /// Delivery attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Earliest time of the next attempt (unix seconds); 0 means as soon as possible.
    #[serde(default)]
    pub next_attempt: u64,
    /// Time of the last attempt (unix seconds).
    #[serde(default)]
    pub last_attempt: Option<u64>,
    /// Name of the relay of the last attempt.
    #[serde(default)]
    pub last_relay: Option<String>,
    /// What went wrong in the last attempt (a server reply or a connection error).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Why the message is in `failed/` (set when it is moved there).
    #[serde(default)]
    pub failure: Option<String>,
    /// When the message was sent (unix seconds).
    #[serde(default)]
    pub sent_at: Option<u64>,
    /// Name of the relay that took it.
    #[serde(default)]
    pub sent_via: Option<String>,
    /// How far the retry delay has grown: 1 after the first deferral, one more after each
    /// deferral on the same route; back to 1 when the route (link or relays) changed.
    #[serde(default)]
    pub backoff_step: u32,
    /// The route (link and relays) on which `backoff_step` was reached.
    #[serde(default)]
    pub backoff_route: Option<String>,
    /// How many times this state was rewritten since the message was queued: every change
    /// (a journal record, a retry) adds one. Replaying the outcome journal after a crash
    /// applies a record only over an older state, never over a newer one.
    #[serde(default)]
    pub revision: u64,
    /// Delivery status notifications asked for when the message was submitted, passed on to
    /// a relay that offers DSN. Absent in states written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<Dsn>,
}

impl MessageState {
    /// The format version this crate writes.
    pub const VERSION: u32 = 1;

    /// A fresh state for a message just queued: every recipient pending, no attempt yet.
    pub fn new(id: &str, envelope: &Envelope, size: u64, queued_at: u64) -> MessageState {
        MessageState {
            version: Self::VERSION,
            id: id.to_owned(),
            from: envelope.from.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|addr| RecipientState {
                    addr: addr.clone(),
                    status: RecipientStatus::Pending,
                    reply: None,
                })
                .collect(),
            size,
            queued_at,
            attempts: 0,
            next_attempt: 0,
            last_attempt: None,
            last_relay: None,
            last_error: None,
            failure: None,
            sent_at: None,
            sent_via: None,
            backoff_step: 0,
            backoff_route: None,
            revision: 0,
            dsn: envelope.dsn.clone(),
        }
    }

    /// The recipients still to be delivered to.
    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending)
    }

    /// True when no recipient is pending.
    pub fn is_done(&self) -> bool {
        self.pending().next().is_none()
    }

    /// The envelope of the message (every recipient, whatever its status).
    pub fn envelope(&self) -> Envelope {
        Envelope {
            from: self.from.clone(),
            recipients: self.recipients.iter().map(|r| r.addr.clone()).collect(),
            dsn: self.dsn.clone(),
        }
    }
}

/// The folders of an outbox that hold messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Folder {
    /// `queue/`: waiting to be sent.
    Queue,
    /// `sent/`: every recipient done, at least one delivered.
    Sent,
    /// `failed/`: the message itself is bad or its lifetime ran out.
    Failed,
}

impl Folder {
    /// Every folder, in the order [`crate::Outbox::locate`] looks.
    pub const ALL: [Folder; 3] = [Folder::Queue, Folder::Sent, Folder::Failed];

    /// The directory name: `"queue"`, `"sent"` or `"failed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Folder::Queue => "queue",
            Folder::Sent => "sent",
            Folder::Failed => "failed",
        }
    }
}

impl fmt::Display for Folder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many messages each folder holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages in `queue/`.
    pub queued: usize,
    /// Messages in `failed/`.
    pub failed: usize,
    /// Messages in `sent/`.
    pub sent: usize,
}
