//! `mailq` (`sendmail -bp`): the queue in the format that Postfix's `mailq` prints and that
//! monitoring plugins parse: `Mail queue is empty`, or a header line, one block per message
//! and the footer `-- N Kbytes in M Requests.` Pure: it formats the states it is given.
//!
//! A block: the id (with `!` for a message held in `failed/`, as Postfix marks its hold
//! queue), the size, the arrival time (UTC, asctime style), the sender; the reason it waits
//! in parentheses, if any; then each recipient still to be delivered, indented to column 42.

use std::io::{self, Write};

use crate::sendmail::civil_from_days;
use crate::state::{MessageState, RecipientStatus};

/// The line above the first message, as Postfix prints it.
const HEADER: &str = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------";

/// Writes a mailq listing, one message at a time (the queue is never held whole).
#[derive(Debug, Default)]
pub struct Mailq {
    requests: u64,
    bytes: u64,
}

impl Mailq {
    /// A listing with nothing written yet.
    pub fn new() -> Mailq {
        Mailq::default()
    }

    /// Writes one message's block; `held` for a message of `failed/`.
    pub fn message(
        &mut self,
        out: &mut impl Write,
        state: &MessageState,
        held: bool,
    ) -> io::Result<()> {
        if self.requests == 0 {
            writeln!(out, "{HEADER}")?;
        }
        self.requests += 1;
        self.bytes += state.size;
        let mark = if held { "!" } else { "" };
        let sender = if state.from.is_empty() {
            "MAILER-DAEMON"
        } else {
            &state.from
        };
        writeln!(
            out,
            "{:<11} {:>8} {}  {sender}",
            format!("{}{mark}", state.id),
            state.size,
            asctime(state.queued_at)
        )?;
        if let Some(reason) = state.failure.as_ref().or(state.last_error.as_ref()) {
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            writeln!(out, "({reason})")?;
        }
        for r in state
            .recipients
            .iter()
            .filter(|r| r.status != RecipientStatus::Sent)
        {
            writeln!(out, "{:41}{}", "", r.addr)?;
        }
        writeln!(out)
    }

    /// Writes the footer (or that the queue is empty).
    pub fn finish(self, out: &mut impl Write) -> io::Result<()> {
        if self.requests == 0 {
            writeln!(out, "Mail queue is empty")
        } else {
            let s = if self.requests == 1 { "" } else { "s" };
            writeln!(
                out,
                "-- {} Kbytes in {} Request{s}.",
                self.bytes / 1024,
                self.requests
            )
        }
    }
}

/// `Sat Dec  5 22:35:32` (UTC) for unix seconds.
fn asctime(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (_, month, day) = civil_from_days(days);
    format!(
        "{} {} {day:>2} {:02}:{:02}:{:02}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Envelope;

    fn listing(entries: &[(MessageState, bool)]) -> String {
        let mut out = Vec::new();
        let mut q = Mailq::new();
        for (state, held) in entries {
            q.message(&mut out, state, *held).unwrap();
        }
        q.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_empty_queue_says_so_as_postfix_does() {
        assert_eq!(listing(&[]), "Mail queue is empty\n");
    }

    #[test]
    fn messages_are_listed_with_the_footer_monitoring_plugins_parse() {
        let env = Envelope {
            from: "alice@example.net".into(),
            recipients: vec!["bob@example.org".into(), "carol@example.org".into()],
            dsn: None,
        };
        // 2026-12-05 22:35:32 UTC, a Saturday.
        let mut waiting = MessageState::new("1796510132.628914.1.ab12", &env, 3000, 1_796_510_132);
        waiting.last_error = Some("relay-a: 451 4.3.0 try\nlater".into());
        waiting.recipients[1].status = RecipientStatus::Sent;
        let mut held = MessageState::new("1796510133.000001.1.cd34", &env, 1000, 1_796_510_133);
        held.failure = Some("lifetime over".into());
        let text = listing(&[(waiting, false), (held, true)]);
        let expected = "\
-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
1796510132.628914.1.ab12     3000 Sat Dec  5 22:35:32  alice@example.net
(relay-a: 451 4.3.0 try later)
                                         bob@example.org

1796510133.000001.1.cd34!     1000 Sat Dec  5 22:35:33  alice@example.net
(lifetime over)
                                         bob@example.org
                                         carol@example.org

-- 3 Kbytes in 2 Requests.
";
        assert_eq!(text, expected);
        let one = listing(&[(MessageState::new("a", &env, 10, 0), false)]);
        assert!(one.ends_with("\n-- 0 Kbytes in 1 Request.\n"), "{one}");
        assert!(one.contains("Thu Jan  1 00:00:00"), "{one}");
    }
}
