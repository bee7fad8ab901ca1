//! Pruning `sent/`: what went out is kept for a while (`[outbox] keep_sent`, and at most
//! `keep_sent_size` bytes of it), for `linkrelay queue`-style questions ("did it go, and
//! through which relay?"), then removed. A mail client keeps its own copy in its Sent
//! folder; without pruning `sent/` grew for ever (105 MB after one 100 MB message).
//!
//! Removal needs no sync: a message a crash brings back into `sent/` is pruned again.

use std::fs;
use std::time::Duration;

use rustix::fs::AtFlags;

use crate::error::OutboxError;
use crate::fsutil::{open_dir, rename_noreplace};
use crate::outbox::Outbox;
use crate::state::Folder;

/// The message file of a message directory (as in `outbox.rs`).
const MESSAGE: &str = "message.eml";

/// What a prune of `sent/` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Messages removed.
    pub removed: usize,
    /// Bytes of `message.eml` they held.
    pub freed: u64,
    /// Messages kept.
    pub kept: usize,
    /// When the first message kept is due to go (unix seconds), if any is kept; at or a
    /// little before the time (a message queued since the cutoff counts from its queueing).
    pub next_expiry: Option<u64>,
}

/// One message of `sent/`, as pruning sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// When it was sent (unix seconds).
    pub(crate) sent_at: u64,
    /// The size of its `message.eml`.
    pub(crate) size: u64,
}

/// Which of the messages of `sent/` (in enqueue order) to remove at `now`: those sent more
/// than `keep` ago, then the oldest of the rest while they hold more than `keep_size` bytes.
/// Also when the first message kept is due to go. Pure.
pub(crate) fn choose(
    sent: &[Sent],
    now: u64,
    keep: Duration,
    keep_size: u64,
) -> (Vec<bool>, Option<u64>) {
    let keep = keep.as_secs();
    let mut remove: Vec<bool> = sent
        .iter()
        .map(|m| m.sent_at.saturating_add(keep) <= now)
        .collect();
    let mut total: u64 = sent
        .iter()
        .zip(&remove)
        .filter(|(_, r)| !**r)
        .map(|(m, _)| m.size)
        .sum();
    for (m, r) in sent.iter().zip(remove.iter_mut()) {
        if total <= keep_size {
            break;
        }
        if !*r {
            *r = true;
            total -= m.size;
        }
    }
    let next = sent
        .iter()
        .zip(&remove)
        .filter(|(_, r)| !**r)
        .map(|(m, _)| m.sent_at.saturating_add(keep))
        .min();
    (remove, next)
}

impl Outbox {
    /// Removes from `sent/` what was sent more than `keep` before `now`, then the oldest of
    /// the rest while they hold more than `keep_size` bytes. A message whose state cannot be
    /// read counts as sent when it was queued (its id says when).
    pub fn prune_sent(
        &self,
        now: u64,
        keep: Duration,
        keep_size: u64,
    ) -> Result<Pruned, OutboxError> {
        let ids = self.message_ids(Folder::Sent)?;
        let cutoff = now.saturating_sub(keep.as_secs());
        let sent: Vec<Sent> = ids
            .iter()
            .map(|id| {
                let queued = id_time(id);
                // Sent after it was queued: one queued since the cutoff is kept, unread.
                let sent_at = if queued > cutoff {
                    queued
                } else {
                    self.entry(Folder::Sent, id)
                        .and_then(|s| s.sent_at)
                        .unwrap_or(queued)
                };
                Sent {
                    sent_at,
                    size: self.message_size(Folder::Sent, id),
                }
            })
            .collect();
        let (remove, next_expiry) = choose(&sent, now, keep, keep_size);
        let mut pruned = Pruned {
            next_expiry,
            ..Pruned::default()
        };
        for ((id, m), remove) in ids.iter().zip(&sent).zip(remove) {
            if !remove {
                pruned.kept += 1;
                continue;
            }
            match self.discard(Folder::Sent, id) {
                Ok(()) => {
                    pruned.removed += 1;
                    pruned.freed += m.size;
                }
                Err(OutboxError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pruned)
    }

    /// The size of `message.eml` of `<folder>/<id>`, 0 when it cannot be seen.
    fn message_size(&self, folder: Folder, id: &str) -> u64 {
        let Ok(dir) = open_dir(&self.msg_path(folder, id)) else {
            return 0;
        };
        rustix::fs::statat(&dir, MESSAGE, AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| u64::try_from(st.st_size).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Removes `<folder>/<id>` without syncing: renamed into `tmp/` (so that no half-removed
    /// message is ever in the folder), then deleted.
    fn discard(&self, folder: Folder, id: &str) -> Result<(), OutboxError> {
        let src = self.msg_path(folder, id);
        let dst = self
            .root()
            .join("tmp")
            .join(format!("{id}.pruned.{:04x}", rand::random::<u16>()));
        match rename_noreplace(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OutboxError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(OutboxError::io(format!("removing {}", src.display()), e)),
        }
        // What is left in tmp/ is garbage that `recover` clears if this fails.
        let _ = fs::remove_dir_all(&dst);
        Ok(())
    }
}

/// The enqueue time an id starts with (0 when it does not).
fn id_time(id: &str) -> u64 {
    id.split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn old_mail_goes_then_the_oldest_while_too_much_is_kept() {
        let keep = Duration::from_secs(3 * DAY);
        let now = 10 * DAY;
        let m = |sent_at, size| Sent { sent_at, size };
        #[rustfmt::skip]
        let cases = [
            ("nothing sent", vec![], 100, vec![], None),
            ("all young and small", vec![m(9 * DAY, 10), m(9 * DAY, 10)], 100,
                vec![false, false], Some(12 * DAY)),
            ("exactly keep old goes", vec![m(7 * DAY, 10), m(8 * DAY, 10)], 100,
                vec![true, false], Some(11 * DAY)),
            ("too big: the oldest young one goes too", vec![m(8 * DAY, 60), m(9 * DAY, 60)], 100,
                vec![true, false], Some(12 * DAY)),
            ("one alone above the size goes", vec![m(9 * DAY, 500)], 100, vec![true], None),
            ("old ones do not count towards the size", vec![m(DAY, 90), m(9 * DAY, 90)], 100,
                vec![true, false], Some(12 * DAY)),
        ];
        for (what, sent, keep_size, remove, next) in cases {
            assert_eq!(
                choose(&sent, now, keep, keep_size),
                (remove, next),
                "{what}"
            );
        }
    }
}
