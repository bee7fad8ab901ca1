//! A relay's replies, read with bounds: whatever a relay sends, a reply costs at most
//! [`MAX_LINES`] lines of at most [`MAX_LINE`] bytes, and each byte is looked at once.
//!
//! lettre, which the agent used to read replies with, reads a line into a buffer without
//! bound and checks its length once the line has ended: a relay (or anyone on the path before
//! TLS) that sent `220-hello` and then bytes without a line end took the agent to gigabytes.
//! It also parsed the whole reply again after each line, so that endless short lines cost CPU
//! quadratic in their number. Here a reply is taken in as bytes arrive ([`ReplyParser::feed`])
//! and refused as soon as it passes a bound.
//!
//! Pure (no I/O, std only), so it is tested on its own and fuzzed (`fuzz/fuzz_targets/reply.rs`
//! compiles this file by itself).

/// The longest reply line read, line end included. RFC 5321 allows 512 bytes; this is four
/// times that, as Postfix reads replies.
pub const MAX_LINE: usize = 2048;

/// The most lines one reply may have. An EHLO reply has about ten to twenty, a greeting a few.
pub const MAX_LINES: usize = 128;

/// One reply: its code and its lines' texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 200 to 599.
    pub code: u16,
    /// Each line's text after the code and its separator, in order (at least one, maybe
    /// empty). Control characters are replaced with U+FFFD: the text is shown to the user.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx and 3xx: the relay goes ahead.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The reply's text, its lines joined by spaces; an enhanced status code (RFC 3463) that
    /// the first line starts with is not repeated from the lines after it.
    pub fn text(&self) -> String {
        let Some((first, rest)) = self.lines.split_first() else {
            return String::new();
        };
        let repeated = first
            .split(' ')
            .next()
            .filter(|word| self.is_enhanced_code(word));
        let mut text = first.clone();
        for line in rest {
            text.push(' ');
            let unrepeated = repeated.and_then(|code| line.strip_prefix(code)?.strip_prefix(' '));
            text.push_str(unrepeated.unwrap_or(line).trim_start());
        }
        text
    }

    /// Whether `word` is an enhanced status code of this reply's class (`5.1.1` for a 550).
    fn is_enhanced_code(&self, word: &str) -> bool {
        let parts: Vec<&str> = word.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            && parts[0] == (self.code / 100).to_string()
    }
}

/// Why bytes from a relay are not a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line did not end within [`MAX_LINE`] bytes.
    LineTooLong,
    /// The reply went on past [`MAX_LINES`] lines.
    TooManyLines,
    /// A line that is not `CODE[-| ]text` (the start of it, escaped).
    Malformed(String),
    /// The lines of one reply carry different codes.
    MixedCodes(u16, u16),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::LineTooLong => {
                write!(
                    f,
                    "the relay sent a reply line longer than {MAX_LINE} bytes"
                )
            }
            ReplyError::TooManyLines => {
                write!(f, "the relay sent a reply of more than {MAX_LINES} lines")
            }
            ReplyError::Malformed(line) => write!(f, "malformed reply {line}"),
            ReplyError::MixedCodes(a, b) => {
                write!(f, "malformed reply: its lines have codes {a} and {b}")
            }
        }
    }
}

impl std::error::Error for ReplyError {}

/// Takes in one reply from bytes as they arrive.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// The line read so far, without its end.
    line: Vec<u8>,
    /// The reply's code, from its first line.
    code: Option<u16>,
    /// The texts of the lines read so far.
    lines: Vec<String>,
}

/// What [`ReplyParser::feed`] made of some bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// How many bytes of the input it took. The rest (after a complete reply) belongs to the
    /// next reply: a relay answering pipelined commands sends their replies back to back.
    pub consumed: usize,
    /// A whole reply, or why there is none; `None` when more bytes are needed.
    pub done: Option<Result<Reply, ReplyError>>,
}

impl ReplyParser {
    /// Takes bytes from the front of `input` until a reply is complete or broken, or the
    /// input runs out. After a `done`, start a new parser for the next reply.
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut consumed = 0;
        while consumed < input.len() {
            let rest = &input[consumed..];
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                if self.line.len() + rest.len() >= MAX_LINE {
                    return self.broken(input.len(), ReplyError::LineTooLong);
                }
                self.line.extend_from_slice(rest);
                return Fed {
                    consumed: input.len(),
                    done: None,
                };
            };
            consumed += end + 1;
            if self.line.len() + end + 1 > MAX_LINE {
                return self.broken(consumed, ReplyError::LineTooLong);
            }
            self.line.extend_from_slice(&rest[..end]);
            if let Some(done) = self.end_line() {
                return Fed {
                    consumed,
                    done: Some(done),
                };
            }
        }
        Fed {
            consumed,
            done: None,
        }
    }

    /// What the parser holds: the bytes of an unfinished line and the lines taken so far
    /// (never more than [`MAX_LINE`] and [`MAX_LINES`]). For the tests and the fuzz target.
    #[allow(dead_code)]
    pub fn held(&self) -> (usize, usize) {
        (self.line.len(), self.lines.len())
    }

    fn broken(&mut self, consumed: usize, e: ReplyError) -> Fed {
        self.line.clear();
        Fed {
            consumed,
            done: Some(Err(e)),
        }
    }

    /// Takes in the line in `self.line`; `Some` when the reply is complete or broken.
    fn end_line(&mut self) -> Option<Result<Reply, ReplyError>> {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let (code, last, text) = match parse_line(&line) {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(e)),
        };
        match self.code {
            Some(first) if first != code => return Some(Err(ReplyError::MixedCodes(first, code))),
            _ => self.code = Some(code),
        }
        if self.lines.len() == MAX_LINES {
            return Some(Err(ReplyError::TooManyLines));
        }
        self.lines.push(text);
        last.then(|| {
            Ok(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            })
        })
    }
}

/// One line without its end: the code, whether it is the reply's last line, and its text.
fn parse_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let malformed = || {
        let start: String = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
        ReplyError::Malformed(format!("{start:?}"))
    };
    let code = match line {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(malformed()),
    };
    let (last, text) = match &line[3..] {
        [] => (true, &[][..]),
        [b' ', text @ ..] => (true, text),
        [b'-', text @ ..] => (false, text),
        _ => return Err(malformed()),
    };
    let text = String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    Ok((code, last, text))
}

/// What a relay offers, from its EHLO reply: the first line names the server, each further
/// line is an extension keyword and its parameters (`SIZE 10485760`, `AUTH PLAIN LOGIN`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offers {
    /// The server's name (the first word of the first line).
    pub name: String,
    /// The extension lines as the relay wrote them.
    pub extensions: Vec<String>,
}

impl Offers {
    /// The offers in a (positive) EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Offers {
        let mut lines = reply.lines.iter();
        let name = lines
            .next()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("")
            .to_owned();
        Offers {
            name,
            extensions: lines.cloned().collect(),
        }
    }

    /// The parameters of `keyword` (case-insensitive) if it is offered.
    fn find(&self, keyword: &str) -> Option<impl Iterator<Item = &str>> {
        self.extensions.iter().find_map(|line| {
            let mut words = line.split_whitespace();
            words
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
                .then_some(words)
        })
    }

    /// Whether `keyword` is offered.
    pub fn has(&self, keyword: &str) -> bool {
        self.find(keyword).is_some()
    }

    /// Whether AUTH `mechanism` is offered.
    pub fn has_auth(&self, mechanism: &str) -> bool {
        self.find("AUTH")
            .is_some_and(|mut ms| ms.any(|m| m.eq_ignore_ascii_case(mechanism)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reply in `input`, fed in pieces of `step` bytes.
    fn replies(input: &[u8], step: usize) -> Vec<Result<Reply, ReplyError>> {
        let mut out = Vec::new();
        let mut parser = ReplyParser::default();
        let mut pending: &[u8] = &[];
        let mut chunks = input.chunks(step);
        loop {
            if pending.is_empty() {
                match chunks.next() {
                    Some(c) => pending = c,
                    None => return out,
                }
            }
            let fed = parser.feed(pending);
            pending = &pending[fed.consumed..];
            if let Some(done) = fed.done {
                let stop = done.is_err();
                out.push(done);
                if stop {
                    return out;
                }
                parser = ReplyParser::default();
            }
        }
    }

    fn reply(code: u16, lines: &[&str]) -> Result<Reply, ReplyError> {
        Ok(Reply {
            code,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        })
    }

    #[test]
    fn replies_come_whole_whatever_the_pieces_they_arrive_in() {
        let input =
            b"220 relay.test ESMTP\r\n250-relay.test\r\n250-SIZE 10485760\r\n250 HELP\r\n354\r\n";
        for step in [1, 2, 3, 7, 64, input.len()] {
            assert_eq!(
                replies(input, step),
                [
                    reply(220, &["relay.test ESMTP"]),
                    reply(250, &["relay.test", "SIZE 10485760", "HELP"]),
                    reply(354, &[""]),
                ],
                "in pieces of {step}"
            );
        }
    }

    #[test]
    fn a_complete_reply_leaves_what_follows_it_unread() {
        let mut parser = ReplyParser::default();
        let fed = parser.feed(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
        assert_eq!(fed.consumed, 14);
        assert_eq!(fed.done, Some(reply(250, &["2.1.0 Ok"])));
    }

    #[test]
    fn a_line_without_end_is_refused_once_it_passes_the_bound() {
        let mut parser = ReplyParser::default();
        assert_eq!(parser.feed(b"220-hello").done, None);
        let flood = vec![b'x'; MAX_LINE];
        let fed = parser.feed(&flood);
        assert_eq!(fed.done, Some(Err(ReplyError::LineTooLong)));
        assert!(parser.line.capacity() <= 2 * MAX_LINE);
        assert_eq!(parser.held(), (0, 0));
        // The longest line allowed is taken.
        let mut line = b"250 ".to_vec();
        line.resize(MAX_LINE - 2, b'y');
        line.extend_from_slice(b"\r\n");
        assert!(matches!(
            replies(&line, 100)[0],
            Ok(Reply { code: 250, .. })
        ));
        line.insert(5, b'y');
        assert_eq!(replies(&line, 100), [Err(ReplyError::LineTooLong)]);
    }

    #[test]
    fn endless_lines_are_refused_after_the_most_a_reply_may_have() {
        let flood = b"250-x\r\n".repeat(MAX_LINES + 1);
        assert_eq!(replies(&flood, 4096), [Err(ReplyError::TooManyLines)]);
        let mut most = b"250-x\r\n".repeat(MAX_LINES - 1);
        most.extend_from_slice(b"250 end\r\n");
        assert!(matches!(&replies(&most, 4096)[0], Ok(r) if r.lines.len() == MAX_LINES));
    }

    #[test]
    fn what_is_not_a_reply_says_so() {
        for (input, want) in [
            (
                &b"hello, this is not SMTP\r\n"[..],
                "malformed reply \"hello, this is not SMTP\"",
            ),
            (b"2.1.0 Ok\r\n", "malformed reply \"2.1.0 Ok\""),
            (b"250+Ok\r\n", "malformed reply \"250+Ok\""),
            (b"650 Ok\r\n", "malformed reply \"650 Ok\""),
            (b"25\r\n", "malformed reply \"25\""),
            (
                b"250-a\r\n251 b\r\n",
                "malformed reply: its lines have codes 250 and 251",
            ),
        ] {
            let got = replies(input, 3);
            match &got[..] {
                [Err(e)] => assert_eq!(e.to_string(), want),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bare_line_feed_ends_a_line_and_control_characters_are_not_passed_on() {
        assert_eq!(
            replies(b"250-a\n250 b\x1b[31mred\x07\r\n", 5),
            [reply(250, &["a", "b\u{FFFD}[31mred\u{FFFD}"])]
        );
    }

    #[test]
    fn the_text_joins_the_lines_without_repeating_the_enhanced_code() {
        let reply = |code, lines: &[&str]| Reply {
            code,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        };
        assert_eq!(
            reply(
                550,
                &["5.1.1 <two@dest.example>: User unknown", "5.1.1 see help"]
            )
            .text(),
            "5.1.1 <two@dest.example>: User unknown see help"
        );
        assert_eq!(
            reply(250, &["relay.test", "SIZE 10", "HELP"]).text(),
            "relay.test SIZE 10 HELP"
        );
        // Only a code of the reply's class, and only when the first line has it.
        assert_eq!(
            reply(550, &["4.1.1 a", "4.1.1 b"]).text(),
            "4.1.1 a 4.1.1 b"
        );
        assert_eq!(
            reply(550, &["no code", "5.1.1 b"]).text(),
            "no code 5.1.1 b"
        );
    }

    #[test]
    fn offers_are_read_from_the_ehlo_reply() {
        let ehlo = Reply {
            code: 250,
            lines: [
                "relay.test greets you",
                "SIZE 10485760",
                "auth plain LOGIN",
                "PIPELINING",
            ]
            .map(String::from)
            .to_vec(),
        };
        let offers = Offers::from_ehlo(&ehlo);
        assert_eq!(offers.name, "relay.test");
        assert!(offers.has("pipelining") && offers.has("SIZE"));
        assert!(!offers.has("STARTTLS") && !offers.has("8BITMIME"));
        assert!(offers.has_auth("PLAIN") && offers.has_auth("login"));
        assert!(!offers.has_auth("CRAM-MD5"));
    }
}
