//! Group commit: the messages that sessions finish while the disk is busy with the last batch
//! go to it together, one spool append and one `fdatasync` for all of them
//! ([`Outbox::submit_batch`]). A session waits for its message's batch before it answers the
//! final dot with 250, so the answer keeps sendmail's promise (durable in the owner's outbox)
//! and the cost of the sync is shared.
//!
//! One task per user (each user has an outbox of their own), started at its first message.
//! The flusher learns of the new mail as it learns of sendmail's: its inotify watch sees the
//! spool closed after writing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use linkrelay_outbox::submission::{Committed, Submission};
use linkrelay_outbox::{Envelope, Outbox, OutboxError};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// Most messages in one batch.
const MAX_BATCH: usize = 256;
/// Most bytes in one batch (beyond it the rest waits for the next write).
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Messages that may wait for a user's committer before sessions wait to hand theirs over.
const QUEUE: usize = 1024;

/// A message waiting for its batch, and who wants to know how it went.
struct Job {
    envelope: Envelope,
    message: Vec<u8>,
    done: oneshot::Sender<Committed>,
}

/// The committers of every user, by user name.
pub(crate) struct Committers {
    data_dir: PathBuf,
    users: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

impl Committers {
    /// Committers for the outboxes under `data_dir`.
    pub(crate) fn new(data_dir: PathBuf) -> Committers {
        Committers {
            data_dir,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Makes `submission` durable in its user's outbox, with the messages of other sessions.
    pub(crate) async fn commit(&self, submission: Submission) -> Committed {
        let sender = match self.sender(&submission.user) {
            Ok(sender) => sender,
            Err(e) => return failure(&e),
        };
        let (done, result) = oneshot::channel();
        let job = Job {
            envelope: submission.envelope,
            message: submission.message,
            done,
        };
        if sender.send(job).await.is_err() {
            return Committed::Failed("the outbox's writer stopped".into());
        }
        result
            .await
            .unwrap_or_else(|_| Committed::Failed("the outbox's writer stopped".into()))
    }

    /// Forgets the committers of users that are gone (after a reload); their tasks end once
    /// the sessions that hold them are done.
    pub(crate) fn keep_only(&self, users: &[String]) {
        let mut map = self.users.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|user, _| users.contains(user));
    }

    fn sender(&self, user: &str) -> Result<mpsc::Sender<Job>, OutboxError> {
        let mut map = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = map.get(user).filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let outbox = Outbox::open(&self.data_dir.join(user))?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(user.to_owned(), outbox, receiver));
        map.insert(user.to_owned(), sender.clone());
        Ok(sender)
    }
}

/// One user's committer: takes what waits, writes it as one batch, answers each.
async fn run(user: String, outbox: Outbox, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut bytes = first.message.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && bytes < MAX_BATCH_BYTES
            && let Ok(job) = jobs.try_recv()
        {
            bytes += job.message.len();
            batch.push(job);
        }
        let outbox = outbox.clone();
        let written = tokio::task::spawn_blocking(move || {
            let messages: Vec<(&Envelope, &[u8])> = batch
                .iter()
                .map(|job| (&job.envelope, job.message.as_slice()))
                .collect();
            let results = outbox.submit_batch(&messages);
            (batch, results)
        })
        .await;
        let Ok((batch, results)) = written else {
            warn!(%user, "the submission writer failed; its messages were not queued");
            continue;
        };
        debug!(%user, messages = batch.len(), "submitted messages made durable together");
        for (job, result) in batch.into_iter().zip(results) {
            let committed = match result {
                Ok(id) => Committed::Queued(id),
                Err(e) => failure(&e),
            };
            let _ = job.done.send(committed);
        }
    }
}

/// What the session answers for an outbox error: a full disk is 452 4.3.1, the rest 451.
fn failure(e: &OutboxError) -> Committed {
    if e.is_no_space() {
        Committed::NoSpace
    } else {
        warn!("a submitted message was not queued: {e}");
        Committed::Failed(e.to_string())
    }
}
