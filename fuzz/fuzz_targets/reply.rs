//! The reply reader on any bytes a relay could send: `ReplyParser` never panics, never holds
//! more than its bounds, reads the same replies whatever pieces the bytes arrive in, and what
//! it gives as a reply is one: a code of 200 to 599, at most `MAX_LINES` lines of text without
//! control characters. Each reply is then classified (`outcome::classify`) and read as an EHLO
//! reply (`Offers`), as the session would.
#![no_main]

// Pure modules of the agent, compiled here on their own so that the fuzz build does not need
// the agent's D-Bus and TLS stack.
#[path = "../../agent/src/delivery/outcome.rs"]
#[allow(dead_code)]
mod outcome;
#[path = "../../agent/src/delivery/reply.rs"]
#[allow(dead_code)]
mod reply;

use libfuzzer_sys::fuzz_target;
use outcome::{Outcome, Stage, classify};
use reply::{MAX_LINE, MAX_LINES, Offers, Reply, ReplyError, ReplyParser};

/// Every reply in `input` fed in pieces of `step` bytes, up to the first error.
fn replies(input: &[u8], step: usize) -> Vec<Result<Reply, ReplyError>> {
    let mut out = Vec::new();
    let mut parser = ReplyParser::default();
    for piece in input.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let fed = parser.feed(rest);
            assert!(fed.consumed <= rest.len());
            let (line, lines) = parser.held();
            assert!(line < MAX_LINE && lines <= MAX_LINES, "holds {line} bytes, {lines} lines");
            rest = &rest[fed.consumed..];
            match fed.done {
                None => assert!(rest.is_empty(), "stopped without a reply"),
                Some(Ok(reply)) => {
                    out.push(Ok(reply));
                    parser = ReplyParser::default();
                }
                Some(Err(e)) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = replies(input, input.len().max(1));
    assert_eq!(replies(input, usize::from(step).max(1)), whole);
    assert_eq!(replies(input, 1), whole);
    for reply in whole.iter().flatten() {
        assert!((200..=599).contains(&reply.code), "{}", reply.code);
        assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_LINES);
        for line in &reply.lines {
            assert!(line.chars().count() < MAX_LINE);
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        let text = reply.text();
        assert!(!text.contains(['\r', '\n']));
        let outcome = classify(Stage::Rcpt, Some(reply.code), &text);
        assert_eq!(outcome == Outcome::Sent, reply.is_positive());
        let offers = Offers::from_ehlo(reply);
        assert_eq!(offers.extensions.len(), reply.lines.len() - 1);
        let _ = offers.has("PIPELINING") || offers.has_auth("PLAIN");
    }
});
