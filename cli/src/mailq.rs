//! `mailq` (`sendmail -bp`): every user's queued and failed messages, read straight from the
//! outboxes (it works while the agent is down), in Postfix's format
//! (`linkrelay_outbox::mailq`). `linkrelay queue` says more; this is for the tools that parse
//! mailq.

use std::io::Write;
use std::process::ExitCode;

use linkrelay_config::Config;
use linkrelay_outbox::mailq::Mailq;
use linkrelay_outbox::{Folder, Outbox};

use crate::sendmail::{EX_SOFTWARE, EX_TEMPFAIL, data_dir, fail};

/// Prints the queue of every configured user.
pub(crate) fn main(config: &Config) -> ExitCode {
    let Some(data_dir) = data_dir() else {
        return fail(
            EX_SOFTWARE,
            "cannot find the data directory: set XDG_DATA_HOME or HOME",
        );
    };
    let mut out = std::io::stdout().lock();
    let mut listing = Mailq::new();
    for user in &config.users {
        let root = data_dir.join(&user.name);
        if !root.exists() {
            continue; // no mail ever: nothing to create just to say so
        }
        let outbox = match Outbox::open(&root) {
            Ok(outbox) => outbox,
            Err(e) => {
                return fail(
                    EX_TEMPFAIL,
                    format!("cannot read the outbox of {}: {e}", user.name),
                );
            }
        };
        if let Err(e) = list(&outbox, &mut listing, &mut out) {
            return fail(
                EX_TEMPFAIL,
                format!("cannot list the outbox of {}: {e}", user.name),
            );
        }
    }
    match listing.finish(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EX_TEMPFAIL, e),
    }
}

/// One outbox's messages: what waits in `incoming/`, then `queue/`, then `failed/` (held);
/// entries that cannot be read are left out (the agent deals with them).
fn list(outbox: &Outbox, listing: &mut Mailq, out: &mut impl Write) -> anyhow::Result<()> {
    let queued = outbox.message_ids(Folder::Queue)?;
    for state in outbox.incoming_states() {
        if queued.binary_search(&state.id).is_err() {
            listing.message(out, &state, false)?;
        }
    }
    for id in &queued {
        if let Ok(state) = outbox.state(Folder::Queue, id) {
            listing.message(out, &state, false)?;
        }
    }
    for id in outbox.message_ids(Folder::Failed)? {
        if let Ok(state) = outbox.state(Folder::Failed, &id) {
            listing.message(out, &state, true)?;
        }
    }
    Ok(())
}
