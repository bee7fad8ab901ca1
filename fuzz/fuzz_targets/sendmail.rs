//! sendmail's message handling on any input: `prepare` (with -t/-i/-f chosen by the first
//! byte) and `envelope_from_headers` (files dropped in new/). They never panic, and what they
//! accept is safe to queue and to put into SMTP commands: CRLF line ends only, a final CRLF,
//! no Bcc: header left, recipients without white space or control characters. The streamed
//! forms (`prepare_stream`, `envelope_from_headers_stream`) give the same envelope, error and
//! length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;

use linkrelay_outbox::Envelope;
use linkrelay_outbox::sendmail::{
    Args, MessageStream, ReadError, SendmailError, envelope_from_headers,
    envelope_from_headers_stream, prepare, prepare_stream,
};

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
        local_names: (flags & 32 != 0).then(|| "me@example.org".to_owned()),
        ..Args::default()
    };
    let whole = prepare(&args, input, "me@localhost");
    if let Ok((envelope, message)) = &whole {
        check(envelope, message);
    }
    same_as_streamed(whole, prepare_stream(&args, input, "me@localhost"));
    let whole = envelope_from_headers(input);
    if let Ok((envelope, message)) = &whole {
        check(envelope, message);
    }
    same_as_streamed(whole, envelope_from_headers_stream(input));
});

/// The streamed message is the one made whole: the same envelope, the same error, the same
/// length (the Date: and Message-ID: added may differ, never in length).
fn same_as_streamed<R: std::io::Read + std::fmt::Debug>(
    whole: Result<(Envelope, Vec<u8>), SendmailError>,
    streamed: Result<MessageStream<R>, ReadError>,
) {
    match (whole, streamed) {
        (Ok((envelope, message)), Ok(mut stream)) => {
            let mut streamed = Vec::new();
            stream.read_to_end(&mut streamed).expect("reading a slice");
            assert_eq!(stream.envelope, envelope, "streamed envelope");
            assert_eq!(streamed.len(), message.len(), "streamed length");
        }
        (Err(w), Err(ReadError::Message(s))) => assert_eq!(w, s, "streamed error"),
        (w, s) => panic!("whole {w:?}, streamed {s:?}"),
    }
}
