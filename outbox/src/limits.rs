//! How much the outbox reads into memory at most. Nothing is allocated by the size a file
//! claims: a sparse file can claim 64 GiB and hold nothing, and `vec![0; len]` of that aborts
//! the process (and the agent would abort again at every start, on the same file).

/// What the outbox reads at most, by kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message: a `new/` file, a submitted message, `message.eml`. What is
    /// larger goes to `failed/` with the reason (`[outbox] max_message_size`).
    pub max_message_size: u64,
}

impl Limits {
    /// `max_message_size` when the config does not say: 50 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

    /// The largest file of `incoming/` or record of its spool: an envelope line (at most a
    /// state's size) and a message.
    pub(crate) fn max_submission(self) -> u64 {
        self.max_message_size.saturating_add(STATE_MAX)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: Limits::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// The largest `state.json` read (about 50,000 recipients with their replies); a larger one
/// is unusable and set aside like a corrupt one.
pub const STATE_MAX: u64 = 16 * 1024 * 1024;

/// The largest outcome journal replayed; a larger one is set aside as `journal.oversized`.
/// The agent checkpoints (empties) the journal long before: every
/// [`crate::CHECKPOINT_EVERY`] records or 16 MiB.
pub const JOURNAL_MAX: u64 = 64 * 1024 * 1024;

/// A journal this long is checkpointed at the next record, however few records it holds.
pub(crate) const JOURNAL_CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;
