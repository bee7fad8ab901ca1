//! The I/O of one client: reads what it sends into the dialogue
//! ([`linkrelay_outbox::submission::Session`]), writes the replies, hands complete messages to
//! the group commit, and keeps the time limits: each command must arrive within `timeout`, a
//! whole message's data within `data_timeout`. A session that exceeds one gets 421 and is
//! closed; what it was sending is dropped.

use std::sync::Arc;
use std::time::Duration;

use linkrelay_config::Config;
use linkrelay_outbox::submission::{Limits, Peer, Policy, Session, Step};
use linkrelay_outbox::token::{read_token, token_matches};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, warn};

use super::listener::Shared;

/// How long another uid's client may take over its first command (it is refused then).
const STRANGER_TIMEOUT: Duration = Duration::from_secs(10);

/// What one read takes at most.
const READ_CHUNK: usize = 4096;

/// The dialogue's questions, answered from the config and the token file.
struct AgentPolicy<'a> {
    config: &'a Config,
    shared: &'a Shared,
}

impl Policy for AgentPolicy<'_> {
    fn user_for_sender(&self, sender: &str) -> Result<String, String> {
        match self.config.user_for_sender(sender) {
            Some(user) => Ok(user.name.to_string()),
            None => Err(format!(
                "sender <{sender}> belongs to no linkrelay user: no [[user]] has a `from` pattern \
                 matching it and none is `default = true`"
            )),
        }
    }

    fn token_matches(&self, password: &str) -> bool {
        match read_token(&self.shared.data_dir) {
            Ok(Some(token)) => token_matches(&token, password),
            _ => false,
        }
    }
}

/// Serves one client until it leaves, is too slow, or is refused.
pub(crate) async fn serve<S>(mut stream: S, peer: Peer, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = shared.config();
    let settings = &config.submission;
    let limits = Limits {
        max_message_size: config.outbox.max_message_size,
        max_recipients: settings.max_recipients,
        ..Limits::default()
    };
    let command_timeout = match peer {
        Peer::Other { .. } => settings.timeout.min(STRANGER_TIMEOUT),
        _ => settings.timeout,
    };
    let data_timeout = settings.data_timeout;
    if let Peer::Other { uid, owner } = peer {
        warn!(
            uid,
            "refused a submission from uid {uid}: this listener serves uid {owner} only"
        );
    }
    let mut session = Session::new(&shared.host, limits, peer);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut seen = session.progress();
    let mut deadline = Instant::now() + command_timeout;
    loop {
        // A reload applies to the next command (which user a sender maps to).
        let config = shared.config();
        let policy = AgentPolicy {
            config: &config,
            shared: &shared,
        };
        match session.next(&policy) {
            Step::Read => {
                if session.progress() != seen {
                    seen = session.progress();
                    let limit = if session.in_data() {
                        data_timeout
                    } else {
                        command_timeout
                    };
                    deadline = Instant::now() + limit;
                }
                if !send(&mut stream, &mut session, deadline).await {
                    return;
                }
                match timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        if session.in_data() {
                            debug!("a client left in the middle of a message; nothing was queued");
                        }
                        session.end_of_input();
                    }
                    Ok(Ok(n)) => session.input(&buf[..n]),
                    Err(_) => {
                        debug!(in_data = session.in_data(), "a client was too slow");
                        session.timed_out();
                    }
                }
            }
            Step::Submit(submission) => {
                let user = submission.user.clone();
                let committed = shared.committers.commit(submission).await;
                debug!(%user, ?committed, "a submitted message");
                session.committed(committed);
            }
            Step::Close => {
                let _ = send(&mut stream, &mut session, deadline).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Writes the session's replies; false when the client cannot take them in time.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    deadline: Instant,
) -> bool {
    if session.output().is_empty() {
        return true;
    }
    let written = timeout_at(deadline, stream.write_all(session.output())).await;
    session.clear_output();
    matches!(written, Ok(Ok(())))
}
