//! The outbox's error type.

use std::io;
use std::path::PathBuf;

use crate::state::Folder;

/// Everything that can go wrong in the outbox.
///
/// Use [`OutboxError::is_no_space`] to tell a full disk (a temporary failure, `EX_TEMPFAIL`
/// for sendmail) from the rest.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A message id from outside does not have the shape of an id
    /// (`[A-Za-z0-9][A-Za-z0-9._-]{0,127}` without `..`).
    #[error("invalid message id {0:?}")]
    BadId(String),
    /// No message with this id (in the folder asked for, or anywhere).
    #[error("no message {0}")]
    NotFound(String),
    /// The operation does not apply to a message in this folder (for example removing or
    /// retrying a message that was sent).
    #[error("message {id} is in {folder}/; {action} is not possible there")]
    WrongFolder {
        /// The message id.
        id: String,
        /// Where the message is.
        folder: Folder,
        /// What was asked ("remove", "retry").
        action: &'static str,
    },
    /// The envelope given to `enqueue` cannot be delivered (no recipient, or an address with
    /// white space or control characters).
    #[error("bad envelope: {0}")]
    BadEnvelope(String),
    /// The message is larger than the outbox takes ([`crate::Limits::max_message_size`]).
    #[error("the message is larger than the {max} bytes of [outbox] max_message_size")]
    TooLarge {
        /// The limit, in bytes.
        max: u64,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The error from the system.
        #[source]
        source: io::Error,
    },
    /// A file in the outbox does not hold what it should (unparseable `state.json`, a message
    /// directory that is not a directory, ...).
    #[error("corrupt {}: {reason}", path.display())]
    Corrupt {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The outbox refuses a path that could let another user redirect or read the mail: a
    /// symbolic link, or a directory owned by another uid.
    #[error("refusing {}: {reason}", path.display())]
    Unsafe {
        /// The path refused.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl OutboxError {
    /// True when the error is a full disk or an exhausted quota (`ENOSPC`, `EDQUOT`): the
    /// caller should try again later (`EX_TEMPFAIL` in sendmail mode).
    pub fn is_no_space(&self) -> bool {
        match self {
            OutboxError::Io { source, .. } => {
                let code = source.raw_os_error();
                code == Some(rustix::io::Errno::NOSPC.raw_os_error())
                    || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
            }
            _ => false,
        }
    }

    /// True for [`OutboxError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, OutboxError::NotFound(_))
    }

    /// The same error again, for another message of a batch that one write failed for (an
    /// I/O error keeps its code, so that [`OutboxError::is_no_space`] still tells).
    pub(crate) fn for_each_of_a_batch(&self) -> OutboxError {
        match self {
            OutboxError::Io { context, source } => OutboxError::Io {
                context: context.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            OutboxError::BadId(id) => OutboxError::BadId(id.clone()),
            OutboxError::NotFound(id) => OutboxError::NotFound(id.clone()),
            OutboxError::WrongFolder { id, folder, action } => OutboxError::WrongFolder {
                id: id.clone(),
                folder: *folder,
                action,
            },
            OutboxError::BadEnvelope(why) => OutboxError::BadEnvelope(why.clone()),
            OutboxError::TooLarge { max } => OutboxError::TooLarge { max: *max },
            OutboxError::Corrupt { path, reason } => OutboxError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            OutboxError::Unsafe { path, reason } => OutboxError::Unsafe {
                path: path.clone(),
                reason: reason.clone(),
            },
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        OutboxError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}
