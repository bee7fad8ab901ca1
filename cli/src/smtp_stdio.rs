//! `sendmail -bs`: the submission listener's SMTP dialogue (`linkrelay_outbox::submission`)
//! on standard input and output, as PHP, symfony/mailer and Alpine use it. The client is the
//! process's own user (it started us), so no login is asked; each message is queued as
//! `sendmail` queues one (durable before the 250), for the user its sender maps to.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::ExitCode;

use linkrelay_outbox::submission::{Committed, Limits, Peer, Policy, Session, Step};

use crate::sendmail::{Context, EX_TEMPFAIL, fail, nudge, queue_whole};

/// The dialogue's questions: the user by sender (or `--user`); no token is needed.
impl Policy for Context {
    fn user_for_sender(&self, sender: &str) -> Result<String, String> {
        self.user_for(sender)
    }

    fn token_matches(&self, _password: &str) -> bool {
        // The peer is the owner: the dialogue never asks.
        false
    }
}

/// Runs the dialogue until the client quits or closes standard input.
pub(crate) fn main(ctx: &Context) -> ExitCode {
    let settings = &ctx.config.submission;
    let limits = Limits {
        max_message_size: ctx.config.outbox.max_message_size,
        max_recipients: settings.max_recipients,
        ..Limits::default()
    };
    let mut session = Session::new(&host_name(), limits, Peer::Owner);
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buf = vec![0u8; 8192];
    // Users whose outbox got mail with no agent holding it: nudged at the end.
    let mut to_wake = BTreeSet::new();
    loop {
        match session.next(ctx) {
            Step::Read => {
                if stdout
                    .write_all(session.output())
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
                session.clear_output();
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => session.end_of_input(),
                    Ok(n) => session.input(&buf[..n]),
                }
            }
            Step::Submit(sub) => {
                let committed = match ctx.outbox(&sub.user) {
                    Err(why) => Committed::Failed(why),
                    Ok(outbox) => match queue_whole(&outbox, &sub.envelope, &sub.message) {
                        Ok((id, woke)) => {
                            if woke {
                                to_wake.insert(sub.user.clone());
                            }
                            Committed::Queued(id)
                        }
                        Err(e) if e.is_no_space() => Committed::NoSpace,
                        Err(e) => Committed::Failed(e.to_string()),
                    },
                };
                session.committed(committed);
            }
            Step::Close => {
                if stdout
                    .write_all(session.output())
                    .and_then(|()| stdout.flush())
                    .is_ok()
                {
                    session.clear_output();
                }
                break;
            }
        }
    }
    for user in to_wake {
        nudge(&user);
    }
    if session.output().is_empty() {
        ExitCode::SUCCESS
    } else {
        fail(
            EX_TEMPFAIL,
            "standard output closed before the replies were written",
        )
    }
}

/// This machine's name, for the greeting.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_owned())
}
