//! The DATA phase: the bytes after `354` up to the line holding a single dot.
//!
//! Only `CR LF . CR LF` ends the data (the first line counts as following a CR LF). A bare LF
//! or bare CR ends nothing and is remembered, and so is a NUL byte: the message is then
//! refused once its end is found, so that a client and a relay can never disagree about where
//! a message ends (SMTP smuggling). Leading dots are unstuffed. Bytes past the size limit are
//! counted but not kept.

/// Where the decoder is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// At the start of a line (after CR LF, or at the start of the data).
    LineStart,
    /// A line started with a dot.
    Dot,
    /// A line started with a dot, then CR.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, after a CR.
    Cr,
}

/// What was wrong with the data, found once its end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flaw {
    /// More bytes than the size limit.
    TooBig,
    /// A CR or LF that is not part of a CR LF.
    BareLineEnd,
    /// A NUL byte.
    Nul,
}

/// Collects the message of one DATA phase.
#[derive(Debug)]
pub(crate) struct DataDecoder {
    at: At,
    body: Vec<u8>,
    /// Bytes of the message seen so far, kept or not.
    size: u64,
    limit: u64,
    bare: bool,
    nul: bool,
}

impl DataDecoder {
    /// A decoder that keeps at most `limit` bytes.
    pub(crate) fn new(limit: u64) -> DataDecoder {
        DataDecoder {
            at: At::LineStart,
            body: Vec::new(),
            size: 0,
            limit,
            bare: false,
            nul: false,
        }
    }

    /// Takes bytes of the data phase; returns how many it used, and whether the end of the
    /// data was among them (the bytes after the end are not used).
    pub(crate) fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        for (i, &b) in input.iter().enumerate() {
            match (self.at, b) {
                (At::LineStart, b'.') => self.at = At::Dot,
                (At::Dot, b'\r') => self.at = At::DotCr,
                (At::DotCr, b'\n') => return (i + 1, true),
                // `.` CR then something else: the dot was stuffing, the CR is bare.
                (At::DotCr, b) => {
                    self.bare = true;
                    self.push(b'\r');
                    self.at = At::Mid;
                    self.byte(b);
                }
                // A dot-stuffed line: the first dot goes.
                (At::Dot, b) => {
                    self.at = At::Mid;
                    self.byte(b);
                }
                (At::Cr, b'\n') => {
                    self.push(b'\n');
                    self.at = At::LineStart;
                }
                (At::Cr, b) => {
                    self.bare = true;
                    self.at = At::Mid;
                    self.byte(b);
                }
                (At::LineStart | At::Mid, b) => {
                    self.at = At::Mid;
                    self.byte(b);
                }
            }
        }
        (input.len(), false)
    }

    /// One byte inside a line (a CR starts a line end).
    fn byte(&mut self, b: u8) {
        match b {
            b'\r' => {
                self.push(b'\r');
                self.at = At::Cr;
            }
            b'\n' => {
                self.bare = true;
                self.push(b'\n');
            }
            0 => {
                self.nul = true;
                self.push(0);
            }
            b => self.push(b),
        }
    }

    fn push(&mut self, b: u8) {
        self.size += 1;
        if self.size <= self.limit {
            self.body.push(b);
        }
    }

    /// The message, or what is wrong with it (the size first: nothing of a message that is
    /// too big was kept).
    pub(crate) fn finish(self) -> Result<Vec<u8>, Flaw> {
        if self.size > self.limit {
            Err(Flaw::TooBig)
        } else if self.bare {
            Err(Flaw::BareLineEnd)
        } else if self.nul {
            Err(Flaw::Nul)
        } else {
            Ok(self.body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `chunk` bytes; returns the result and the bytes left over
    /// after the end (`None` when no end was found).
    fn decode(input: &[u8], chunk: usize, limit: u64) -> (Result<Vec<u8>, Flaw>, Option<Vec<u8>>) {
        let mut d = DataDecoder::new(limit);
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + chunk).min(input.len());
            let (used, done) = d.feed(&input[pos..end]);
            pos += used;
            if done {
                return (d.finish(), Some(input[pos..].to_vec()));
            }
        }
        (d.finish(), None)
    }

    #[test]
    fn the_data_ends_at_a_lone_dot_line_whatever_the_pieces() {
        let input = b"Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n";
        for chunk in [1, 2, 3, 7, 100] {
            let (body, rest) = decode(input, chunk, 1000);
            assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhello\r\n.dot\r\n");
            assert_eq!(rest.unwrap(), b"QUIT\r\n");
        }
    }

    #[test]
    fn an_empty_message_ends_at_once() {
        let (body, rest) = decode(b".\r\n", 1, 10);
        assert_eq!(body.unwrap(), b"");
        assert_eq!(rest.unwrap(), b"");
    }

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        for input in [
            &b"a\n.\r\nb\r\n.\r\n"[..],
            b"a\r.\r\nb\r\n.\r\n",
            b"a\r\n.\n.\r\nb\r\n.\r\n",
            b"a\r\n.\rX\r\n.\r\n",
        ] {
            let (body, rest) = decode(input, 1, 1000);
            assert_eq!(body, Err(Flaw::BareLineEnd), "{input:?}");
            assert_eq!(rest.unwrap(), b"", "{input:?} ended early");
        }
    }

    #[test]
    fn nul_bytes_are_refused() {
        let (body, _) = decode(b"a\0b\r\n.\r\n", 4, 1000);
        assert_eq!(body, Err(Flaw::Nul));
    }

    #[test]
    fn too_much_data_is_counted_not_kept() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut d = DataDecoder::new(100);
        let (used, done) = d.feed(&input);
        assert!(done);
        assert_eq!(used, input.len());
        assert!(d.body.len() <= 100);
        assert_eq!(d.finish(), Err(Flaw::TooBig));
        let (body, _) = decode(b"0123456789\r\n.\r\n", 3, 12);
        assert_eq!(body.unwrap(), b"0123456789\r\n");
    }
}
