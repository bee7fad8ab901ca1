//! Watches each user's `new/`, `incoming/` and `queue/` directories with inotify, so that a
//! file a mail client drops into `new/` (Maildir style), or a message `linkrelay sendmail`
//! writes, gets sent without a nudge over D-Bus, and without any polling. It tells the event
//! loop, which wakes that user's flusher.

use std::collections::HashMap;
use std::path::PathBuf;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use linkrelay_config::UserName;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Starts watching `dirs` (user, directory); sends the user's name on `tx` when a file or
/// directory arrives in one. Returns the task, to abort when the set of users changes.
pub fn spawn(
    dirs: Vec<(UserName, PathBuf)>,
    tx: mpsc::UnboundedSender<UserName>,
) -> std::io::Result<JoinHandle<()>> {
    let inotify = Inotify::init()?;
    let mut users = HashMap::new();
    for (user, dir) in dirs {
        // A file is complete when it is renamed in (Maildir) or closed after writing.
        let wd = inotify
            .watches()
            .add(&dir, WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)?;
        users.insert(wd, user);
    }
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    Ok(tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                // The agent's own swap of the spool (`.spool` and `.spool.taken` trade names)
                // is no arrival: a submitter's append shows as the spool's close after writing,
                // and what mail clients and sendmail rename in has a name without a dot.
                Ok(ev)
                    if ev.mask.contains(EventMask::MOVED_TO) && is_dotfile(ev.name.as_deref()) => {}
                Ok(ev) => {
                    if let Some(user) = users.get(&ev.wd) {
                        debug!(%user, file = ?ev.name, "new mail in the outbox");
                        if tx.send(user.clone()).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    warn!("inotify on the outboxes: {e}; new mail waits for the next flush");
                    return;
                }
            }
        }
    }))
}

/// Whether an event's file name starts with a dot.
fn is_dotfile(name: Option<&std::ffi::OsStr>) -> bool {
    name.is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}
