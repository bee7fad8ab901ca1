//! The SMTP submission dialogue on any input, fed in pieces whose size the first byte picks,
//! as an unknown peer or the owner. It never panics, every reply is a well-formed reply line,
//! its input buffer stays within the line limit plus one piece, and what it submits is safe
//! to queue: recipients, addresses that fit in an SMTP command, CRLF line ends only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrelay_outbox::submission::{Committed, Limits, Peer, Policy, Session, Step};

struct AnyUser;

impl Policy for AnyUser {
    fn user_for_sender(&self, sender: &str) -> Result<String, String> {
        if sender.starts_with('x') {
            Err("no user for senders starting with x".into())
        } else {
            Ok("someone".into())
        }
    }
    fn token_matches(&self, password: &str) -> bool {
        password == "token"
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let peer = if first & 64 != 0 { Peer::Unknown } else { Peer::Owner };
    let limits = Limits {
        max_message_size: 2048,
        max_recipients: 5,
        max_line: 256,
        max_errors: 10,
    };
    let mut session = Session::new("fuzz.host", limits, peer);
    let mut pieces = input.chunks(chunk);
    let mut output = Vec::new();
    for _ in 0..100_000 {
        match session.next(&AnyUser) {
            Step::Read => {
                output.extend_from_slice(session.output());
                session.clear_output();
                assert!(session.buffered() <= 2 * (limits.max_line + 2 + chunk));
                match pieces.next() {
                    Some(piece) => session.input(piece),
                    None => break,
                }
            }
            Step::Submit(sub) => {
                let env = &sub.envelope;
                assert!(!env.recipients.is_empty() && env.recipients.len() <= 5);
                for addr in env.recipients.iter().chain(Some(&env.from)) {
                    assert!(!addr.chars().any(|c| c.is_whitespace() || c.is_control()));
                }
                let m = &sub.message;
                assert!(m.ends_with(b"\r\n"));
                for (i, b) in m.iter().enumerate() {
                    match b {
                        b'\n' => assert!(i > 0 && m[i - 1] == b'\r', "bare LF at {i}"),
                        b'\r' => assert!(m.get(i + 1) == Some(&b'\n'), "bare CR at {i}"),
                        0 => panic!("NUL at {i}"),
                        _ => {}
                    }
                }
                session.committed(Committed::Queued("id".into()));
            }
            Step::Close => {
                output.extend_from_slice(session.output());
                break;
            }
        }
    }
    let text = std::str::from_utf8(&output).expect("replies are text");
    for line in text.split_terminator("\r\n") {
        let code = line.get(..3).expect("a reply code");
        assert!(code.bytes().all(|b| b.is_ascii_digit()), "{line:?}");
        assert!(matches!(line.as_bytes().get(3), None | Some(b' ' | b'-')), "{line:?}");
        assert!(!line.contains(['\r', '\n']), "{line:?}");
    }
    assert!(text.is_empty() || text.ends_with("\r\n"));
});
