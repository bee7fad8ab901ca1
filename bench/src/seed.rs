//! Fills an outbox fast for the flush and scale measurements: the same files
//! `Outbox::enqueue` writes (`queue/<id>/message.eml` and `state.json`, dirs 0700, files 0600),
//! without an fsync per message, then one `sync`. Seeding is not what is measured.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use linkrelay_outbox::{Envelope, MessageState, Outbox};

/// Queues `count` copies of `message` (CRLF line ends, as queued) from `from` to `to` in the
/// outbox at `root` (opened, so created with the right modes, first). Returns the ids.
pub fn seed(root: &Path, count: usize, from: &str, to: &str, message: &[u8]) -> anyhow::Result<()> {
    Outbox::open(root).with_context(|| format!("opening the outbox {}", root.display()))?;
    let env = Envelope {
        from: from.to_string(),
        recipients: vec![to.to_string()],
        dsn: None,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let secs = now.as_secs();
    let pid = std::process::id();
    // A per-call salt so that two seedings in the same second never collide.
    let salt = now.subsec_nanos() & 0xfff;
    let queue = root.join("queue");
    let mut dirs = DirBuilder::new();
    dirs.mode(0o700);
    for i in 0..count {
        let id = format!(
            "{:010}.{:06}.{pid}.{:04x}",
            secs + (i / 1_000_000) as u64,
            i % 1_000_000,
            (salt as usize + i) & 0xffff
        );
        let dir = queue.join(&id);
        dirs.create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let state = MessageState::new(&id, &env, message.len() as u64, secs);
        let mut json = serde_json::to_vec_pretty(&state)?;
        json.push(b'\n');
        for (name, bytes) in [("message.eml", message), ("state.json", &json[..])] {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(name))
                .with_context(|| format!("writing {}/{name}", dir.display()))?;
            f.write_all(bytes)?;
        }
    }
    let status = std::process::Command::new("sync").status()?;
    anyhow::ensure!(status.success(), "sync failed");
    Ok(())
}

/// Removes everything in `<root>/sent/` (between repetitions, so every run starts alike).
pub fn clear_sent(root: &Path) -> anyhow::Result<()> {
    let sent = root.join("sent");
    for e in std::fs::read_dir(&sent)? {
        let p = e?.path();
        std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// How many entries `<root>/<folder>/` holds (not counting hidden files such as the spool).
pub fn count(root: &Path, folder: &str) -> usize {
    std::fs::read_dir(root.join(folder))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// True while `linkrelay sendmail` has handed over mail the agent has not taken in yet: files
/// in `incoming/`, or records in its spool.
pub fn incoming_waits(root: &Path) -> bool {
    let spool = std::fs::metadata(root.join("incoming").join(".spool")).map_or(0, |m| m.len());
    count(root, "incoming") > 0 || spool > 0
}
