//! Pruning each user's `sent/` off the event loop (`Outbox::prune_sent`), and when.
//!
//! The loop keeps one time, the next prune ([`next_prune`], pure): within the hour after mail
//! was sent (`sent/` may be over `keep_sent_size` now), else when the first message kept
//! expires, and never sooner than an hour after the last prune. An agent with nothing to
//! prune does not wake for it at all; an idle one wakes for it at most once an hour.

use std::time::Duration;

use linkrelay_config::UserName;
use linkrelay_dbus::agent::{AgentError, PruneResult};
use linkrelay_outbox::{Counts, Outbox, Pruned};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::service::interface::Reply;

/// The least time between two prunes the agent starts by itself.
pub const SPACING: u64 = 3600;

/// When to prune next, having pruned at `last`: see the module. `None`: not before mail is
/// sent. Pure.
pub fn next_prune(last: u64, earliest_expiry: Option<u64>, sent_since: bool) -> Option<u64> {
    let soonest = last.saturating_add(SPACING);
    if sent_since {
        return Some(soonest);
    }
    earliest_expiry.map(|at| at.max(soonest))
}

/// The earlier of two times, either of which may be unknown.
pub fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A prune of some users' `sent/`, as the event loop hands it out.
pub struct Job {
    /// (user, outbox) to prune.
    pub users: Vec<(UserName, Outbox)>,
    /// Unix seconds the ages are counted at.
    pub now: u64,
    /// `[outbox] keep_sent`.
    pub keep: Duration,
    /// `[outbox] keep_sent_size`.
    pub keep_size: u64,
}

/// What a prune did for one user.
#[derive(Debug)]
pub struct Report {
    /// The user.
    pub user: UserName,
    /// What was removed and kept, or why it could not be done.
    pub result: Result<Pruned, String>,
    /// The user's counts afterwards, when they could be read.
    pub counts: Option<Counts>,
}

impl Job {
    /// Prunes each user in turn. Blocking.
    fn run(self) -> Vec<Report> {
        self.users
            .into_iter()
            .map(|(user, outbox)| {
                let result = outbox
                    .prune_sent(self.now, self.keep, self.keep_size)
                    .map_err(|e| e.to_string());
                match &result {
                    Ok(p) if p.removed > 0 => {
                        info!(%user, removed = p.removed, freed = p.freed, kept = p.kept, "pruned sent mail");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(%user, error = %e, "cannot prune sent mail"),
                }
                Report {
                    user,
                    result,
                    counts: outbox.counts().ok(),
                }
            })
            .collect()
    }

    /// Runs the prune on a blocking thread; the reports go to `done` (the event loop), and,
    /// for `linkrelay prune`, the results to `reply`.
    pub fn spawn(
        self,
        done: mpsc::UnboundedSender<Vec<Report>>,
        reply: Option<Reply<Vec<PruneResult>>>,
    ) {
        tokio::spawn(async move {
            let reports = match tokio::task::spawn_blocking(move || self.run()).await {
                Ok(reports) => reports,
                Err(e) => {
                    warn!("pruning sent mail stopped: {e}");
                    Vec::new()
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(results(&reports));
            }
            let _ = done.send(reports);
        });
    }
}

/// The D-Bus form of the reports: an error if any user's prune failed.
fn results(reports: &[Report]) -> Result<Vec<PruneResult>, AgentError> {
    reports
        .iter()
        .map(|r| match &r.result {
            Ok(p) => Ok(PruneResult {
                user: r.user.to_string(),
                removed: p.removed as u32,
                freed: p.freed,
                kept: p.kept as u32,
            }),
            Err(e) => Err(AgentError::Io(format!(
                "pruning the sent mail of {}: {e}",
                r.user
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_agent_wakes_to_prune_only_when_something_expires_and_at_most_hourly() {
        let last = 1_000_000;
        #[rustfmt::skip]
        let cases = [
            ("nothing kept, nothing sent: never", None, false, None),
            ("the first expiry in a day", Some(last + 86_400), false, Some(last + 86_400)),
            ("an expiry in a minute waits for the hour", Some(last + 60), false, Some(last + SPACING)),
            ("mail sent since: within the hour", Some(last + 86_400), true, Some(last + SPACING)),
            ("mail sent since, nothing kept before", None, true, Some(last + SPACING)),
        ];
        for (what, expiry, sent, want) in cases {
            assert_eq!(next_prune(last, expiry, sent), want, "{what}");
        }
    }
}
