//! Watches each user's `new/` directory with inotify, so that a mail client that drops a file
//! there (Maildir style) gets it sent without a nudge, and without any polling.

use std::collections::HashMap;
use std::path::PathBuf;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Starts watching `dirs` (user, new/ directory); sends the user's name on `tx` when a file
/// arrives. Returns the task, to abort when the set of users changes.
pub fn spawn(
    dirs: Vec<(String, PathBuf)>,
    tx: mpsc::UnboundedSender<String>,
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
                Ok(ev) => {
                    if let Some(user) = users.get(&ev.wd) {
                        debug!(%user, file = ?ev.name, "file dropped into new/");
                        if tx.send(user.clone()).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    warn!("inotify on new/: {e}; files dropped there wait for the next flush");
                    return;
                }
            }
        }
    }))
}
