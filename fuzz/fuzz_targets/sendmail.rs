//! sendmail's message handling on any input: `prepare` (with -t/-i/-f chosen by the first
//! byte) and `envelope_from_headers` (files dropped in new/). They never panic, and what they
//! accept is safe to queue and to put into SMTP commands: CRLF line ends only, a final CRLF,
//! no Bcc: header left, recipients without white space or control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrelay_outbox::sendmail::{Args, envelope_from_headers, prepare};

fn check(envelope: &linkrelay_outbox::Envelope, message: &[u8]) {
    assert!(
        !envelope.recipients.is_empty(),
        "accepted without recipients"
    );
    for addr in envelope.recipients.iter().chain(Some(&envelope.from)) {
        assert!(
            !addr.chars().any(|c| c.is_whitespace() || c.is_control()),
            "address {addr:?} could break an SMTP command"
        );
    }
    assert!(message.ends_with(b"\r\n"), "no final CRLF");
    for (i, b) in message.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && message[i - 1] == b'\r', "bare LF at {i}"),
            b'\r' => assert!(message.get(i + 1) == Some(&b'\n'), "bare CR at {i}"),
            _ => {}
        }
    }
    let header_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    for line in message[..header_end].split(|b| *b == b'\n') {
        assert!(
            !line.to_ascii_lowercase().starts_with(b"bcc:"),
            "a Bcc: header is still there"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let args = Args {
        extract_recipients: flags & 1 != 0,
        ignore_dots: flags & 2 != 0,
        from: (flags & 4 != 0).then(|| "sender@example.org".to_owned()),
        full_name: (flags & 8 != 0).then(|| "Fuzzy Sender".to_owned()),
        recipients: if flags & 16 != 0 {
            vec!["rcpt@example.net".to_owned()]
        } else {
            Vec::new()
        },
        ..Args::default()
    };
    if let Ok((envelope, message)) = prepare(&args, input, "me@localhost") {
        check(&envelope, &message);
    }
    if let Ok((envelope, message)) = envelope_from_headers(input) {
        check(&envelope, &message);
    }
});
