//! What `sendmail` mode needs, without I/O: the command line, and turning the bytes a mail
//! client pipes in (or drops in `new/`) into an envelope and the message to queue.
//!
//! The message is normalised the way Postfix's sendmail does it: CRLF line ends, `Bcc:`
//! removed, `From:`, `Date:` and `Message-ID:` added when missing. 8-bit bytes pass through.

use std::collections::HashSet;
use std::io::Read;

use mailparse::{MailAddr, addrparse_header, parse_header, parse_headers};

use crate::dsn::{Dsn, ENVID_MAX, Notify, RecipientDsn, Ret};
use crate::id::now_secs;
use crate::state::Envelope;

/// The `sendmail` command line, as far as linkrelay uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// What to do: read a message (the default), speak SMTP, print the queue, or flush it.
    pub mode: Mode,
    /// `-t`: take the recipients from the To:, Cc: and Bcc: headers too.
    pub extract_recipients: bool,
    /// `-i` or `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f addr`, `-faddr` or `-r addr`: the envelope sender (`""` or `"<>"`: null sender).
    pub from: Option<String>,
    /// `-F name`: the full name for the From: header if one is added.
    pub full_name: Option<String>,
    /// `-N never|success,failure,delay`: when each recipient's delivery should be notified
    /// (passed on to a relay that offers DSN).
    pub notify: Option<Notify>,
    /// `-R full|hdrs`: what a notification returns of the message.
    pub ret: Option<Ret>,
    /// `-V envid`: the sender's own id for the message, for notifications.
    pub envid: Option<String>,
    /// The recipients on the command line.
    pub recipients: Vec<String>,
    /// The address that a local name stands for (`root`, `alice`: an address without
    /// `@domain`, as cron and other local programs write them), set by the caller from the
    /// config, not by a flag. With it, such a sender or recipient becomes this address (your
    /// own mailbox, as nullmailer's `adminaddr`), and a From:, To: or Cc: header that holds
    /// only local names is rewritten to it. Without it, a local name is a
    /// [`SendmailError::DataErr`] that says how to set it.
    pub local_names: Option<String>,
}

impl Args {
    /// The DSN requests of `-N`, `-R` and `-V` for a message to `recipients` (`-N` applies
    /// to each of them); `None` when none was given.
    pub fn dsn(&self, recipients: &[String]) -> Option<Dsn> {
        let dsn = Dsn {
            ret: self.ret,
            envid: self.envid.clone(),
            recipients: match self.notify {
                Some(notify) => recipients
                    .iter()
                    .map(|addr| RecipientDsn {
                        addr: addr.clone(),
                        notify: Some(notify),
                        orcpt: None,
                    })
                    .collect(),
                None => Vec::new(),
            },
        };
        (!dsn.is_empty()).then_some(dsn)
    }
}

/// What sendmail is asked to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): read one message from standard input and queue it.
    #[default]
    Deliver,
    /// `-bs`: speak SMTP on standard input and output, queueing each message.
    Smtp,
    /// `-bp`, or called as `mailq`: print the queue.
    Print,
    /// `-q`: ask the agent to send what is queued now.
    Flush,
}

/// Why sendmail mode gives up; [`SendmailError::exit_code`] gives the sysexits code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendmailError {
    /// Bad command line (`EX_USAGE`, 64).
    #[error("{0}")]
    Usage(String),
    /// Bad input message or address (`EX_DATAERR`, 65).
    #[error("{0}")]
    DataErr(String),
}

impl SendmailError {
    /// The sysexits code to exit with: 64 (`EX_USAGE`) or 65 (`EX_DATAERR`).
    pub fn exit_code(&self) -> i32 {
        match self {
            SendmailError::Usage(_) => 64,
            SendmailError::DataErr(_) => 65,
        }
    }
}

/// Parses the sendmail command line (without `argv[0]`), getopt style: options may be
/// clustered (`-ti`), values attached or separate (`-faddr`, `-f addr`), options and
/// recipients may be mixed, and `--` ends the options.
///
/// Modes: `-bm` (the default), `-bs`, `-bp` and `-q` (any form: `-q`, `-q30m`, `-qIid`: the
/// agent runs the queue, so each asks it to flush now). DSN: `-N`, `-R`, `-V`, whose values
/// are checked. Accepted and ignored, as cron daemons and mail clients pass them:
/// `-o<anything>` (`-oem`, `-odb`, `-odi`, ... but `-oi` means `-i`), `-O opt=val`, `-v`,
/// `-m`, `-n`, `-G`, `-U`, and with their values `-B type`, `-X log`, `-A`, `-C`, `-L`,
/// `-e`, `-h`, `-p`. Other modes (`-bd`, `-bv`, ...), `-I` and anything unknown are
/// [`SendmailError::Usage`] naming the option.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args, SendmailError> {
    let mut args = args.into_iter();
    let mut out = Args::default();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            out.recipients.push(arg);
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let cluster = &arg[1..];
        for (i, c) in cluster.char_indices() {
            match c {
                't' => out.extract_recipients = true,
                'i' => out.ignore_dots = true,
                'G' | 'U' | 'm' | 'n' | 'v' => {}
                'I' => {
                    return Err(SendmailError::Usage(
                        "-I (newaliases) is not supported: linkrelay has no aliases".into(),
                    ));
                }
                'q' => {
                    // -q, -q30m, -qIid, -qRsite: whatever is asked, the agent runs the queue.
                    out.mode = Mode::Flush;
                    break;
                }
                'A' | 'B' | 'C' | 'F' | 'L' | 'N' | 'O' | 'R' | 'V' | 'X' | 'b' | 'e' | 'f'
                | 'h' | 'o' | 'p' | 'r' => {
                    let rest = &cluster[i + c.len_utf8()..];
                    let value = if rest.is_empty() {
                        args.next().ok_or_else(|| {
                            SendmailError::Usage(format!("option -{c} needs a value"))
                        })?
                    } else {
                        rest.to_owned()
                    };
                    option_with_value(&mut out, c, value)?;
                    break;
                }
                other => {
                    return Err(SendmailError::Usage(format!(
                        "unknown option -{other} (in {arg:?})"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// An option that takes a value (`-f addr`, `-bs`, `-N never`, ...).
fn option_with_value(out: &mut Args, c: char, value: String) -> Result<(), SendmailError> {
    let usage = |text: String| Err(SendmailError::Usage(text));
    match c {
        'F' => out.full_name = Some(value),
        'f' | 'r' => out.from = Some(value),
        'o' if value == "i" => out.ignore_dots = true,
        'b' => {
            out.mode = match value.as_str() {
                "m" => Mode::Deliver,
                "s" => Mode::Smtp,
                "p" => Mode::Print,
                _ => {
                    return usage(format!(
                        "-b{value} is not supported: linkrelay's sendmail reads a message \
                         (-bm), speaks SMTP on standard input (-bs) or prints the queue (-bp)"
                    ));
                }
            }
        }
        'N' => match Notify::parse(&value) {
            Ok(notify) => out.notify = Some(notify),
            Err(why) => {
                return usage(format!(
                    "-N {value}: {why} (write -N never, or a list of success, failure, delay)"
                ));
            }
        },
        'R' => match Ret::parse(&value) {
            Some(ret) => out.ret = Some(ret),
            None => return usage(format!("-R {value}: write -R full or -R hdrs")),
        },
        'V' => {
            if value.is_empty()
                || value.chars().count() > ENVID_MAX
                || value.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return usage(format!(
                    "-V {value:?}: an envelope id is 1 to {ENVID_MAX} printable characters"
                ));
            }
            out.envid = Some(value);
        }
        _ => {}
    }
    Ok(())
}

/// Turns what sendmail read on standard input into the envelope and the message to queue.
///
/// - Without `-i` a line with a single `.` ends the input. Line ends become CRLF, and the
///   message ends with CRLF. A leading mbox `From ` line is dropped.
/// - The message must start with a valid header section, else [`SendmailError::DataErr`].
/// - Recipients: those of the command line, plus with `-t` every address of To:, Cc: and
///   Bcc:; duplicates (ignoring case) are dropped, the first spelling is kept. None at all is
///   `DataErr("no recipients")`, and so is an address with no `@domain`, white space or
///   control characters.
/// - Envelope sender: `-f`, else the address of the Sender: header, else of the From:
///   header, else `default_from`.
/// - `Bcc:` header fields (with their continuation lines) are removed, with or without
///   `-t`. A missing `From:` is added with the envelope sender (or `default_from` for a null
///   sender) and the `-F` name (RFC 2047-encoded if not ASCII); a missing `Date:` and
///   `Message-ID:` are added too, as Postfix does.
/// - `-N`, `-R` and `-V` become the envelope's DSN requests (`-N` for every recipient).
pub fn prepare(
    args: &Args,
    input: &[u8],
    default_from: &str,
) -> Result<(Envelope, Vec<u8>), SendmailError> {
    let (mut envelope, message) = build(&Request::of(args, default_from), input)?;
    envelope.dsn = args.dsn(&envelope.recipients);
    Ok((envelope, message))
}

/// Reads the envelope of a complete message file (from the outbox's `new/`): recipients from
/// To:, Cc: and Bcc:, sender from Sender: else From: (one of them is required). The message
/// returned has CRLF line ends, no `Bcc:`, and `Date:`/`Message-ID:` added if missing. Dots
/// are not special.
pub fn envelope_from_headers(message: &[u8]) -> Result<(Envelope, Vec<u8>), SendmailError> {
    build(
        &Request {
            dot_ends: false,
            extract: true,
            recipients: &[],
            from: None,
            full_name: None,
            default_from: None,
            local: None,
        },
        message,
    )
}

/// Prepares a message that came over SMTP (the submission listener, `sendmail -bs`) for the
/// queue. The envelope is the dialogue's (`MAIL FROM`, `RCPT TO`) and is not changed; the
/// message must start with a valid header section ([`SendmailError::DataErr`] else), loses
/// its `Bcc:` fields and gains `Date:`, `Message-ID:` and `From:` (the envelope sender) when
/// missing, as with `sendmail`. Dots are not special: the dialogue has unstuffed them.
pub fn prepare_submitted(envelope: &Envelope, data: &[u8]) -> Result<Vec<u8>, SendmailError> {
    build(
        &Request {
            dot_ends: false,
            extract: false,
            recipients: &envelope.recipients,
            from: Some(&envelope.from),
            full_name: None,
            default_from: None,
            local: None,
        },
        data,
    )
    .map(|(_, message)| message)
}

/// The largest header section read into memory: a message whose header section (up to the
/// first empty line) is longer is refused. Postfix cuts a single header at 100 KB; ten times
/// that holds any real one, `Received:` lines and all.
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// Why reading a message from a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream could not be read.
    #[error("cannot read the message: {0}")]
    Io(#[from] std::io::Error),
    /// What was read is not a message to queue.
    #[error("{0}")]
    Message(#[from] SendmailError),
}

/// [`prepare`] on a stream: reads `input` up to the end of its header section (at most
/// [`MAX_HEADER_SECTION`] bytes), and gives the envelope and a reader of the message to
/// queue. The body is normalised as it is read, so a message of any size costs a few
/// buffers: `MessageStream` yields exactly the bytes `prepare` would return.
pub fn prepare_stream<R: Read>(
    args: &Args,
    input: R,
    default_from: &str,
) -> Result<MessageStream<R>, ReadError> {
    let mut message = stream(&Request::of(args, default_from), input)?;
    message.envelope.dsn = args.dsn(&message.envelope.recipients);
    Ok(message)
}

/// [`envelope_from_headers`] on a stream (a file of `new/`), as [`prepare_stream`] is to
/// [`prepare`].
pub fn envelope_from_headers_stream<R: Read>(input: R) -> Result<MessageStream<R>, ReadError> {
    stream(
        &Request {
            dot_ends: false,
            extract: true,
            recipients: &[],
            from: None,
            full_name: None,
            default_from: None,
            local: None,
        },
        input,
    )
}

/// A message being read: its envelope, and the bytes to queue as a reader (the header section
/// as queued, then the body, normalised as it is read).
#[derive(Debug)]
pub struct MessageStream<R> {
    /// The envelope, from the command line and the header section.
    pub envelope: Envelope,
    /// The header section as queued and the part of the body read with it.
    start: Vec<u8>,
    pos: usize,
    rest: Normalized<R>,
}

impl<R: Read> Read for MessageStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.start.len() {
            let n = buf.len().min(self.start.len() - self.pos);
            buf[..n].copy_from_slice(&self.start[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

impl<R: Read> MessageStream<R> {
    /// The input, for reading what follows a dot that ended the message (so that the writer
    /// is not cut off).
    pub fn into_input(self) -> R {
        self.rest.input
    }
}

/// Reads `input` through a [`Normalizer`] up to the end of the header section, and builds
/// the stream of the message to queue.
fn stream<R: Read>(req: &Request<'_>, input: R) -> Result<MessageStream<R>, ReadError> {
    let mut rest = Normalized::new(input, req.dot_ends);
    let mut read = Vec::new();
    let mut chunk = [0; 16 * 1024];
    let mut scanned = 0;
    let body = loop {
        if let Some(at) = header_end(&read, scanned) {
            break at;
        }
        // The next search starts where a blank line cut by this read's end could start.
        scanned = read.len().saturating_sub(3);
        if read.len() > MAX_HEADER_SECTION {
            return Err(SendmailError::DataErr(format!(
                "the header section is longer than {MAX_HEADER_SECTION} bytes"
            ))
            .into());
        }
        let n = rest.read(&mut chunk)?;
        if n == 0 {
            break read.len();
        }
        read.extend_from_slice(&chunk[..n]);
    };
    let (envelope, mut start, at) = build_head(req, &read[..body])?;
    start.extend_from_slice(&read[at..]);
    Ok(MessageStream {
        envelope,
        start,
        pos: 0,
        rest,
    })
}

/// Where the body of normalised bytes starts (after the first empty line), if it is in them;
/// the search for the empty line starts at `from`.
fn header_end(msg: &[u8], from: usize) -> Option<usize> {
    if msg.starts_with(b"\r\n") {
        return Some(2);
    }
    msg.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| from + i + 4)
}

/// A reader that normalises another as it reads (see [`Normalizer`]).
#[derive(Debug)]
pub(crate) struct Normalized<R> {
    input: R,
    normalizer: Normalizer,
    out: Vec<u8>,
    pos: usize,
}

impl<R: Read> Normalized<R> {
    pub(crate) fn new(input: R, dot_ends: bool) -> Normalized<R> {
        Normalized {
            input,
            normalizer: Normalizer::new(dot_ends),
            out: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: Read> Read for Normalized<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut chunk = [0; 16 * 1024];
        while self.pos == self.out.len() {
            if self.normalizer.ended() {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let n = match self.input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.normalizer.finish(&mut self.out);
            } else {
                self.normalizer.push(&chunk[..n], &mut self.out);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Why `addr` cannot be an SMTP envelope address, if it cannot.
pub(crate) fn address_problem(addr: &str) -> Option<&'static str> {
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains white space or control characters");
    }
    if addr.contains(['<', '>']) {
        return Some("contains angle brackets");
    }
    match addr.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => None,
        _ => Some("is not an address (local@domain)"),
    }
}

struct Request<'a> {
    dot_ends: bool,
    extract: bool,
    recipients: &'a [String],
    from: Option<&'a str>,
    full_name: Option<&'a str>,
    default_from: Option<&'a str>,
    /// [`Args::local_names`].
    local: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// What the command line `args` asks of a message read on standard input.
    fn of(args: &'a Args, default_from: &'a str) -> Request<'a> {
        Request {
            dot_ends: !args.ignore_dots,
            extract: args.extract_recipients,
            recipients: &args.recipients,
            from: args.from.as_deref(),
            full_name: args.full_name.as_deref(),
            default_from: Some(default_from),
            local: args.local_names.as_deref(),
        }
    }
}

/// One header field: its bytes `start..end` (continuation lines and the final CRLF
/// included) and its name.
struct Field {
    start: usize,
    end: usize,
    name: String,
}

impl Field {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The header section of a normalised message.
struct Section {
    fields: Vec<Field>,
    /// Where the body starts, after the blank line; `None` if there is no blank line.
    body: Option<usize>,
}

fn build(req: &Request<'_>, input: &[u8]) -> Result<(Envelope, Vec<u8>), SendmailError> {
    let msg = normalize(input, req.dot_ends);
    let (envelope, mut out, body) = build_head(req, &msg)?;
    out.extend_from_slice(&msg[body..]);
    Ok((envelope, out))
}

/// The envelope and the header section to queue (`Bcc:` removed, `From:`, `Date:` and
/// `Message-ID:` added, the blank line when a body follows) of the normalised message that
/// starts with `msg`, which holds at least its whole header section; and where in `msg` the
/// body starts (`msg.len()` when there is none).
fn build_head(req: &Request<'_>, msg: &[u8]) -> Result<(Envelope, Vec<u8>, usize), SendmailError> {
    let section = header_section(msg)?;

    let mut recipients = Recipients::default();
    for arg in req.recipients {
        for addr in split_list(arg) {
            recipients.add(
                qualify(strip_angle(addr), req.local, "recipient")?,
                "recipient",
            )?;
        }
    }
    if req.extract {
        for field in &section.fields {
            if field.is("to") || field.is("cc") || field.is("bcc") {
                match field_addresses_or_local(msg, field, req.local)? {
                    FieldAddrs::Addresses(list) => {
                        for addr in list {
                            recipients.add(&addr, "recipient")?;
                        }
                    }
                    FieldAddrs::Local { .. } => {
                        recipients.add(req.local.unwrap_or_default(), "recipient")?;
                    }
                }
            }
        }
    }
    if recipients.list.is_empty() {
        return Err(SendmailError::DataErr("no recipients".into()));
    }

    let header_sender = match req.from {
        Some(_) => None,
        None => sender_from_headers(msg, &section, req.local)?,
    };
    let sender = match (req.from, header_sender, req.default_from) {
        (Some(f), _, _) => {
            let f = qualify(strip_angle(f.trim()), req.local, "sender")?;
            check_address(f, "sender")?;
            f.to_owned()
        }
        (None, Some(addr), _) => addr,
        (None, None, Some(default)) => {
            check_address(default, "default sender")?;
            default.to_owned()
        }
        (None, None, None) => {
            return Err(SendmailError::DataErr(
                "no sender: the message has neither a From: nor a Sender: header".into(),
            ));
        }
    };

    let has = |name: &str| section.fields.iter().any(|f| f.is(name));
    let mut added = String::new();
    // The address that names the sender in headers (for From: and the Message-ID host).
    let visible_sender = if sender.is_empty() {
        req.default_from.unwrap_or_default().to_owned()
    } else {
        sender.clone()
    };
    if !has("from") {
        if visible_sender.is_empty() {
            return Err(SendmailError::DataErr(
                "no sender address for the From: header (give -f or a From: header)".into(),
            ));
        }
        check_address(&visible_sender, "sender")?;
        added.push_str(&from_field(req.full_name, &visible_sender));
    }
    if !has("date") {
        added.push_str(&format!("Date: {}\r\n", rfc5322_date(now_secs())));
    }
    if !has("message-id") {
        added.push_str(&format!(
            "Message-ID: <{}.{:016x}@{}>\r\n",
            now_secs(),
            rand::random::<u64>(),
            message_id_host(&visible_sender)
        ));
    }

    let head_len = section.fields.last().map_or(0, |f| f.end);
    let mut out = Vec::with_capacity(head_len + added.len() + 2);
    for field in section.fields.iter().filter(|f| !f.is("bcc")) {
        match local_rewrite(req, msg, field) {
            Some(rewritten) => out.extend_from_slice(rewritten.as_bytes()),
            None => out.extend_from_slice(&msg[field.start..field.end]),
        }
    }
    out.extend_from_slice(added.as_bytes());
    if section.body.is_some() {
        out.extend_from_slice(b"\r\n");
    }
    Ok((
        Envelope {
            from: sender,
            recipients: recipients.list,
            dsn: None,
        },
        out,
        section.body.unwrap_or(msg.len()),
    ))
}

/// CRLF line ends (a lone LF becomes CRLF, CRLF stays), a final CRLF, and with `dot_ends` the
/// input stops at a line holding a single dot.
///
/// A lone CR becomes CRLF too (found by fuzzing): sent as it is, `CR . CRLF` in a body is the
/// end of the data for a server that takes a lone CR as a line end (SMTP smuggling), while
/// the client's dot-stuffing does not see a line there to stuff.
fn normalize(input: &[u8], dot_ends: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32 + 2);
    let mut n = Normalizer::new(dot_ends);
    n.push(input, &mut out);
    n.finish(&mut out);
    out
}

/// Where the normaliser stands in the current line (split at LF), for the dot that ends the
/// input: only a line that is `.` or `.` CR does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Nothing of the line yet.
    Start,
    /// `.` so far, held back.
    Dot,
    /// `.` CR so far, held back.
    DotCr,
    /// Anything else: the line is content.
    Other,
}

/// [`normalize`] a piece at a time: what streams through it comes out as `normalize` makes
/// the whole, whatever the pieces.
#[derive(Debug)]
pub(crate) struct Normalizer {
    dot_ends: bool,
    line: Line,
    /// A CR was seen: a line end, CRLF whether or not an LF follows.
    cr: bool,
    /// The dot line ended the input.
    ended: bool,
}

impl Normalizer {
    pub(crate) fn new(dot_ends: bool) -> Normalizer {
        Normalizer {
            dot_ends,
            line: Line::Start,
            cr: false,
            ended: false,
        }
    }

    /// Whether a line with a single dot ended the input (what follows is not read).
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// Normalises `input` onto `out`; stops at the end of the input (a dot line).
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.ended {
                return;
            }
            match (self.line, b) {
                (Line::Start, b'.') if self.dot_ends && !self.cr => self.line = Line::Dot,
                (Line::Dot, b'\r') => self.line = Line::DotCr,
                (Line::Dot | Line::DotCr, b'\n') => self.ended = true,
                (Line::Dot, _) => {
                    self.line = Line::Other;
                    self.content(b'.', out);
                    self.content(b, out);
                }
                (Line::DotCr, _) => {
                    self.line = Line::Other;
                    self.content(b'.', out);
                    self.content(b'\r', out);
                    self.content(b, out);
                }
                _ => self.content(b, out),
            }
        }
    }

    /// Ends the input: a last line without its line end gets one.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if matches!(self.line, Line::Dot | Line::DotCr) {
            // A dot line at the very end ends the input as well.
            self.ended = true;
            return;
        }
        if self.cr || self.line == Line::Other {
            out.extend_from_slice(b"\r\n");
        }
        self.cr = false;
        self.line = Line::Start;
        self.ended = true;
    }

    /// One byte of a line's content (or its end).
    fn content(&mut self, b: u8, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.cr) {
            out.extend_from_slice(b"\r\n");
            if b == b'\n' {
                self.line = Line::Start;
                return;
            }
        }
        match b {
            b'\r' => {
                self.cr = true;
                self.line = Line::Other;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                self.line = Line::Start;
            }
            _ => {
                out.push(b);
                self.line = Line::Other;
            }
        }
    }
}

/// Splits the header section of a normalised message into fields, checking that every line
/// is a header field or a continuation line.
fn header_section(msg: &[u8]) -> Result<Section, SendmailError> {
    let bad = |detail: String| {
        SendmailError::DataErr(format!("message has no valid header section: {detail}"))
    };
    let mut pos = 0;
    let mut line_no = 1;
    if msg.starts_with(b"From ") {
        // An mbox separator line, as some programs pipe in; never a header.
        pos = line_end(msg, 0).1;
        line_no += 1;
    }
    let start = pos;
    let mut fields: Vec<Field> = Vec::new();
    let (end, body) = loop {
        if pos >= msg.len() {
            break (pos, None);
        }
        let (eol, next) = line_end(msg, pos);
        let line = &msg[pos..eol];
        if line.is_empty() {
            break (pos, Some(next));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some(field) => field.end = next,
                None => {
                    return Err(bad(format!("line {line_no} starts with white space")));
                }
            }
        } else {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|colon| trim_wsp_end(&line[..colon]))
                .filter(|name| !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b)));
            match name {
                Some(name) => fields.push(Field {
                    start: pos,
                    end: next,
                    name: String::from_utf8_lossy(name).into_owned(),
                }),
                None => {
                    return Err(bad(format!(
                        "line {line_no} is not a header field: {}",
                        show(line)
                    )));
                }
            }
        }
        pos = next;
        line_no += 1;
    };
    // mailparse must agree, since its parser reads the addresses.
    parse_headers(&msg[start..end]).map_err(|e| bad(e.to_string()))?;
    Ok(Section { fields, body })
}

/// End of the line starting at `pos` (before its CRLF) and the start of the next one.
fn line_end(msg: &[u8], pos: usize) -> (usize, usize) {
    match msg[pos..].iter().position(|&b| b == b'\n') {
        Some(i) => {
            let nl = pos + i;
            let eol = if nl > pos && msg[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            (eol, nl + 1)
        }
        None => (msg.len(), msg.len()),
    }
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A line for an error message: at most 60 bytes, escaped.
fn show(line: &[u8]) -> String {
    let cut = &line[..line.len().min(60)];
    let text = String::from_utf8_lossy(cut);
    let mut shown = format!("\"{}\"", text.escape_debug());
    if line.len() > 60 {
        shown.push_str("...");
    }
    shown
}

/// The addresses of an address header field (groups flattened).
fn field_addresses(msg: &[u8], field: &Field) -> Result<Vec<String>, SendmailError> {
    let raw = &msg[field.start..field.end];
    let (header, _) = parse_header(raw).map_err(|e| {
        SendmailError::DataErr(format!("cannot parse the {}: header: {e}", field.name))
    })?;
    if header.get_value_raw().iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let list = addrparse_header(&header).map_err(|e| {
        SendmailError::DataErr(format!(
            "cannot parse the {}: header {}: {e}",
            field.name,
            show(header.get_value_raw())
        ))
    })?;
    // mailparse keeps the comma that follows a group (`g: a@b;, c@d`) in front of the next
    // address; no address starts with a comma or white space, so trim them.
    let clean = |addr: &str| {
        addr.trim_start_matches(|c: char| c == ',' || c.is_whitespace())
            .trim_end()
            .to_owned()
    };
    let mut out = Vec::new();
    for addr in list.iter() {
        match addr {
            MailAddr::Single(info) => out.push(clean(&info.addr)),
            MailAddr::Group(group) => out.extend(group.addrs.iter().map(|a| clean(&a.addr))),
        }
    }
    Ok(out)
}

/// The first address of the Sender: header, else of the From: header (a local name there
/// stands for `local`).
fn sender_from_headers(
    msg: &[u8],
    section: &Section,
    local: Option<&str>,
) -> Result<Option<String>, SendmailError> {
    for name in ["sender", "from"] {
        let Some(field) = section.fields.iter().find(|f| f.is(name)) else {
            continue;
        };
        let addr = match field_addresses_or_local(msg, field, local)? {
            FieldAddrs::Addresses(list) => list.into_iter().next(),
            FieldAddrs::Local { .. } => local.map(str::to_owned),
        };
        if let Some(addr) = addr {
            check_address(&addr, "sender")?;
            return Ok(Some(addr));
        }
    }
    Ok(None)
}

/// What a local name needs, said where one is refused.
const LOCAL_NAME_HINT: &str = "a local name (no @domain, as cron writes them) stands for your \
    own address when linkrelay knows it: give the [[user]] this mail belongs to (`default = \
    true`, or the only one) a `from` address without wildcards, or pass --user";

/// Whether `addr` is a local name: a mailbox without `@domain` (`root`, `alice.b`), as cron
/// and other local programs write them.
fn is_local_name(addr: &str) -> bool {
    !addr.is_empty()
        && addr.len() <= 64
        && !addr.starts_with('.')
        && !addr.ends_with('.')
        && addr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
}

/// `addr`, or `local` when `addr` is a local name; a local name with no `local` is an error.
fn qualify<'a>(
    addr: &'a str,
    local: Option<&'a str>,
    what: &str,
) -> Result<&'a str, SendmailError> {
    if !is_local_name(addr) {
        return Ok(addr);
    }
    local.ok_or_else(|| SendmailError::DataErr(format!("{what} {addr:?}: {LOCAL_NAME_HINT}")))
}

/// One item of an address header made of local names: `root` or `root (Cron Daemon)`; its
/// comment.
fn header_local_name(item: &str) -> Option<Option<&str>> {
    let item = item.trim();
    let (name, comment) = match item.split_once('(') {
        Some((name, rest)) => (name.trim(), Some(rest.strip_suffix(')')?.trim())),
        None => (item, None),
    };
    is_local_name(name).then_some(comment.filter(|c| !c.is_empty() && !c.contains(['(', ')'])))
}

/// What an address header field holds.
enum FieldAddrs {
    /// Addresses (groups flattened).
    Addresses(Vec<String>),
    /// Only local names (there is an address for them); the first one's comment, as in
    /// cron's `From: root (Cron Daemon)`.
    Local { comment: Option<String> },
}

/// The addresses of an address header field, or that it holds only local names.
fn field_addresses_or_local(
    msg: &[u8],
    field: &Field,
    local: Option<&str>,
) -> Result<FieldAddrs, SendmailError> {
    let error = match field_addresses(msg, field) {
        Ok(list) => return Ok(FieldAddrs::Addresses(list)),
        Err(e) => e,
    };
    let Ok((header, _)) = parse_header(&msg[field.start..field.end]) else {
        return Err(error);
    };
    let value = header.get_value();
    let items: Option<Vec<_>> = value.split(',').map(header_local_name).collect();
    match (items, local) {
        (Some(items), Some(_)) => Ok(FieldAddrs::Local {
            comment: items.into_iter().next().flatten().map(str::to_owned),
        }),
        (Some(_), None) => Err(SendmailError::DataErr(format!(
            "the {}: header {}: {LOCAL_NAME_HINT}",
            field.name,
            show(value.as_bytes())
        ))),
        (None, _) => Err(error),
    }
}

/// The field that replaces a From:, To: or Cc: field made of local names, when there is an
/// address for them: the From: keeps the comment as its display name (`From: Cron Daemon
/// <alice@example.org>`).
fn local_rewrite(req: &Request<'_>, msg: &[u8], field: &Field) -> Option<String> {
    let local = req.local?;
    if !(field.is("from") || field.is("to") || field.is("cc")) {
        return None;
    }
    // Any other field is kept as it is, as before (a From: is not even read when -f is given).
    let Ok(FieldAddrs::Local { comment }) = field_addresses_or_local(msg, field, Some(local))
    else {
        return None;
    };
    Some(if field.is("from") {
        from_field(comment.as_deref().or(req.full_name), local)
    } else {
        format!("{}: {local}\r\n", field.name)
    })
}

fn check_address(addr: &str, what: &str) -> Result<(), SendmailError> {
    if addr.is_empty() && what == "sender" {
        return Ok(());
    }
    match address_problem(addr) {
        None => Ok(()),
        Some(problem) => Err(SendmailError::DataErr(format!("{what} {addr:?} {problem}"))),
    }
}

/// The addresses of a command-line recipient argument, which sendmail reads as a list:
/// split at the commas that are outside double quotes and angle brackets, trimmed, empty
/// items left out (`a@b.example, c@d.example,` is two).
fn split_list(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in arg.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(arg[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(arg[start..].trim());
    let given = out.len();
    out.retain(|a| !a.is_empty());
    // A lone empty argument stays one, for the "empty recipient" error.
    if out.is_empty() && given == 1 {
        out.push("");
    }
    out
}

/// `<addr>` -> `addr` (and `<>` -> the null sender).
fn strip_angle(addr: &str) -> &str {
    addr.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(addr)
}

/// Recipients in order, without case-insensitive duplicates.
#[derive(Default)]
struct Recipients {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl Recipients {
    fn add(&mut self, addr: &str, what: &str) -> Result<(), SendmailError> {
        if addr.is_empty() {
            return Err(SendmailError::DataErr(format!("empty {what} address")));
        }
        check_address(addr, what)?;
        if self.seen.insert(addr.to_lowercase()) {
            self.list.push(addr.to_owned());
        }
        Ok(())
    }
}

/// `From: addr` or `From: Full Name <addr>`, with CRLF.
fn from_field(full_name: Option<&str>, addr: &str) -> String {
    let name: String = full_name
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = name.trim();
    if name.is_empty() {
        format!("From: {addr}\r\n")
    } else if name.is_ascii() {
        format!("From: {} <{addr}>\r\n", quote_phrase(name))
    } else {
        format!("From: {} <{addr}>\r\n", encode_words(name))
    }
}

/// An ASCII display name as an RFC 5322 phrase: as is if it is made of atoms, else quoted.
fn quote_phrase(name: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if name.chars().all(|c| atext(c) || c == ' ') {
        name.to_owned()
    } else {
        let mut quoted = String::with_capacity(name.len() + 2);
        quoted.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    }
}

/// RFC 2047 encoded words (`=?UTF-8?B?...?=`), each under 75 characters, folded.
fn encode_words(text: &str) -> String {
    const MAX_CHUNK: usize = 45; // 60 base64 characters + 12 = 72
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > MAX_CHUNK {
            words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
    }
    words.join("\r\n ")
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The host part for a Message-ID: the sender's domain if it is usable there.
fn message_id_host(sender: &str) -> String {
    let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    let dot_atom = !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let literal = domain.starts_with('[')
        && domain.ends_with(']')
        && domain.len() > 2
        && domain[1..domain.len() - 1]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':'));
    if dot_atom || literal {
        domain.to_owned()
    } else {
        "localhost.localdomain".to_owned()
    }
}

/// An RFC 5322 date in UTC: `Sat, 29 Nov 2025 10:56:00 +0000`.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (H. Hinnant's
/// algorithm, for days on or after the epoch).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, SendmailError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Every LF is preceded by a CR, and the message ends with CRLF.
    fn assert_crlf(bytes: &[u8]) {
        assert!(bytes.ends_with(b"\r\n"), "{:?}", text(bytes));
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert!(
                    i > 0 && bytes[i - 1] == b'\r',
                    "lone LF at {i}: {:?}",
                    text(bytes)
                );
            }
        }
    }

    fn header_values(message: &[u8], name: &str) -> Vec<String> {
        let (headers, _) = parse_headers(message).unwrap();
        headers
            .iter()
            .filter(|h| h.get_key_ref().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
            .collect()
    }

    fn body(message: &[u8]) -> &[u8] {
        let i = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("blank line");
        &message[i + 4..]
    }

    #[test]
    fn parse_args_accepts_what_mail_clients_pass() {
        // mutt
        let a = args(&["-oem", "-oi", "--", "bob@example.org", "carol@example.org"]).unwrap();
        assert!(a.ignore_dots && !a.extract_recipients);
        assert_eq!(a.recipients, ["bob@example.org", "carol@example.org"]);
        // git send-email, thunderbird-ish, php mail()
        let a = args(&["-i", "-t"]).unwrap();
        assert!(a.ignore_dots && a.extract_recipients && a.recipients.is_empty());
        let a = args(&["-ti"]).unwrap();
        assert!(a.ignore_dots && a.extract_recipients);
        let a = args(&["-t", "-falice@example.net"]).unwrap();
        assert_eq!(a.from.as_deref(), Some("alice@example.net"));
        let a = args(&["-f", "alice@example.net", "-F", "Alice Liddell", "x@y.z"]).unwrap();
        assert_eq!(a.from.as_deref(), Some("alice@example.net"));
        assert_eq!(a.full_name.as_deref(), Some("Alice Liddell"));
        assert_eq!(a.recipients, ["x@y.z"]);
        let a = args(&["-r", "bounce@example.net", "x@y.z"]).unwrap();
        assert_eq!(a.from.as_deref(), Some("bounce@example.net"));
        let a = args(&["-tif", "a@b.c"]).unwrap();
        assert!(a.extract_recipients && a.ignore_dots);
        assert_eq!(a.from.as_deref(), Some("a@b.c"));
        // Cron daemons.
        let a = args(&[
            "-FCronDaemon",
            "-i",
            "-odi",
            "-oem",
            "-oi",
            "-t",
            "-f",
            "root",
        ])
        .unwrap();
        assert!(a.ignore_dots && a.extract_recipients);
        assert_eq!(a.from.as_deref(), Some("root"));
        assert_eq!(a.full_name.as_deref(), Some("CronDaemon"));
        let a = args(&["-i", "-B8BITMIME", "-oem", "user@example.org"]).unwrap();
        assert_eq!(a.recipients, ["user@example.org"]);
        let a = args(&[
            "-odb",
            "-oee",
            "-odi",
            "-odq",
            "-om",
            "-oo",
            "-v",
            "-bm",
            "-Ox=y",
            "-O",
            "a=b",
            "-N",
            "success,failure",
            "-R",
            "hdrs",
            "-V",
            "envid",
            "-B",
            "8BITMIME",
            "-X",
            "/tmp/log",
            "-U",
            "-G",
            "-m",
            "-n",
            "-oem",
            "x@y.z",
        ])
        .unwrap();
        assert!(!a.ignore_dots && !a.extract_recipients);
        assert_eq!(a.recipients, ["x@y.z"]);
        assert_eq!(a.from, None);
        assert_eq!(a.mode, Mode::Deliver);
        // -o with a separate value, and -oi spelled that way.
        let a = args(&["-o", "i", "x@y.z"]).unwrap();
        assert!(a.ignore_dots);
        // Options after recipients (GNU getopt permutes), and -- ending options.
        let a = args(&["x@y.z", "-i", "--", "-t", "y@z.x"]).unwrap();
        assert!(a.ignore_dots && !a.extract_recipients);
        assert_eq!(a.recipients, ["x@y.z", "-t", "y@z.x"]);
        assert_eq!(args(&[]).unwrap(), Args::default());
    }

    #[test]
    fn parse_args_usage_errors_name_the_option() {
        for (argv, needle) in [
            (&["-bd"][..], "-bd"),
            (&["-b", "v", "x@y.z"][..], "-bv"),
            (&["-bi"][..], "-bi"),
            (&["-N", "sometimes"][..], "-N sometimes"),
            (&["-Nnever,success"][..], "-N never,success"),
            (&["-R", "all"][..], "-R all"),
            (&["-V", "two words"][..], "-V"),
            (&["-I"][..], "-I"),
            (&["-Z"][..], "-Z"),
            (&["-tZ"][..], "-Z"),
            (&["--help"][..], "--help"),
            (&["-f"][..], "-f"),
            (&["x@y.z", "-F"][..], "-F"),
        ] {
            match args(argv) {
                Err(e @ SendmailError::Usage(_)) => {
                    assert!(e.to_string().contains(needle), "{argv:?}: {e}");
                    assert_eq!(e.exit_code(), 64);
                }
                other => panic!("{argv:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn modes_are_chosen_by_b_and_q() {
        assert_eq!(args(&["-bs"]).unwrap().mode, Mode::Smtp);
        assert_eq!(args(&["-b", "p"]).unwrap().mode, Mode::Print);
        assert_eq!(args(&["-bm", "x@y.z"]).unwrap().mode, Mode::Deliver);
        for q in ["-q", "-q30m", "-qIabc", "-qRexample.org"] {
            assert_eq!(args(&[q]).unwrap().mode, Mode::Flush, "{q}");
        }
    }

    #[test]
    fn dsn_flags_become_the_envelopes_dsn_requests() {
        let a = args(&["-N", "success,failure", "-R", "hdrs", "-V", "cron.42", "-t"]).unwrap();
        let (env, _) = prepare(
            &a,
            b"From: a@b.example\nTo: c@d.example, e@f.example\n\nhi\n",
            "me@localhost",
        )
        .unwrap();
        let dsn = env.dsn.unwrap();
        assert_eq!(dsn.ret, Some(Ret::Hdrs));
        assert_eq!(dsn.envid.as_deref(), Some("cron.42"));
        let params: Vec<String> = dsn
            .rcpt_params("e@f.example")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(params, ["NOTIFY=SUCCESS,FAILURE"]);
        assert_eq!(dsn.recipients.len(), 2);
        let (env, _) = prepare(&args(&["x@y.z"]).unwrap(), b"Subject: x\n\n", "me@h").unwrap();
        assert_eq!(env.dsn, None, "no flag, no DSN request");
        let never = args(&["-Nnever"]).unwrap();
        assert_eq!(never.notify, Some(Notify::NEVER));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(SendmailError::Usage("x".into()).exit_code(), 64);
        assert_eq!(SendmailError::DataErr("x".into()).exit_code(), 65);
        let e = prepare(&Args::default(), b"Subject: x\n\nhi\n", "me@example.net").unwrap_err();
        assert_eq!(e, SendmailError::DataErr("no recipients".into()));
        assert_eq!(e.exit_code(), 65);
    }

    #[test]
    fn extract_recipients_and_strip_bcc() {
        let input = b"From: Alice <alice@example.net>\n\
            To: Bob <bob@example.org>, \"Carol, C.\" <carol@example.org>\n\
            Cc: friends: dave@example.org, Erin <erin@example.org>;, BOB@example.org\n\
            Bcc: secret@example.org,\n\
            \tother-secret@example.org\n\
            Subject: hello\n\
            bcc: third@example.org\n\
            X-After: kept\n\
            \n\
            Bcc: this is body text and stays\n";
        let a = args(&["-t", "-i", "first@example.com", "bob@EXAMPLE.org"]).unwrap();
        let (env, msg) = prepare(&a, input, "default@example.net").unwrap();
        assert_eq!(env.from, "alice@example.net");
        assert_eq!(
            env.recipients,
            [
                "first@example.com",
                "bob@EXAMPLE.org",
                "carol@example.org",
                "dave@example.org",
                "erin@example.org",
                "secret@example.org",
                "other-secret@example.org",
                "third@example.org",
            ]
        );
        let s = text(&msg);
        assert!(!s.contains("secret@"), "{s}");
        assert!(!s.contains("third@"), "{s}");
        assert!(s.contains("Subject: hello\r\nX-After: kept\r\n"), "{s}");
        assert!(header_values(&msg, "bcc").is_empty());
        assert!(
            s.ends_with("\r\n\r\nBcc: this is body text and stays\r\n"),
            "{s}"
        );
        assert_eq!(header_values(&msg, "To").len(), 1);
        assert_crlf(&msg);
    }

    #[test]
    fn bcc_is_stripped_without_t_too_and_recipients_are_the_arguments() {
        let input =
            b"From: alice@example.net\nTo: bob@example.org\nBcc: hidden@example.org\n\nbody\n";
        let a = args(&["carol@example.org"]).unwrap();
        let (env, msg) = prepare(&a, input, "x@example.net").unwrap();
        assert_eq!(env.recipients, ["carol@example.org"]);
        assert!(!text(&msg).contains("hidden@"));
    }

    #[test]
    fn dot_ends_input_without_i() {
        let input = b"Subject: dots\n\nline\n..two dots stay\n.\nafter the dot\n";
        let a = args(&["bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, input, "me@example.net").unwrap();
        assert_eq!(body(&msg), b"line\r\n..two dots stay\r\n");
        // CRLF dot line, and a final dot without newline.
        let (_, msg) = prepare(&a, b"Subject: x\r\n\r\nA\r\n.\r\nB\r\n", "me@example.net").unwrap();
        assert_eq!(body(&msg), b"A\r\n");
        let (_, msg) = prepare(&a, b"Subject: x\n\nA\n.", "me@example.net").unwrap();
        assert_eq!(body(&msg), b"A\r\n");
        // " ." and ". " are not the end.
        let (_, msg) = prepare(&a, b"Subject: x\n\n .\n. \nend\n", "me@example.net").unwrap();
        assert_eq!(body(&msg), b" .\r\n. \r\nend\r\n");
    }

    #[test]
    fn dot_is_data_with_i() {
        let input = b"Subject: dots\n\nline\n.\nafter the dot\n";
        let a = args(&["-i", "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, input, "me@example.net").unwrap();
        assert_eq!(body(&msg), b"line\r\n.\r\nafter the dot\r\n");
        let a = args(&["-oi", "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, input, "me@example.net").unwrap();
        assert_eq!(body(&msg), b"line\r\n.\r\nafter the dot\r\n");
    }

    #[test]
    fn line_ends_become_crlf() {
        let input = b"Subject: mixed\r\nX-A: 1\n\nlf\ncrlf\r\nlast line without newline";
        let a = args(&["-i", "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, input, "me@example.net").unwrap();
        assert_crlf(&msg);
        assert!(!msg.windows(3).any(|w| w == b"\r\r\n"));
        assert_eq!(body(&msg), b"lf\r\ncrlf\r\nlast line without newline\r\n");
        // A lone CR is a line end too: no bare CR reaches a relay (SMTP smuggling).
        let (_, msg) = prepare(&a, b"Subject: x\n\na\rb\n", "me@example.net").unwrap();
        assert_eq!(body(&msg), b"a\r\nb\r\n");
    }

    #[test]
    fn eight_bit_body_passes_untouched() {
        let mut input =
            b"Subject: caf\xc3\xa9 \xe9t\xe9\nContent-Type: text/plain; charset=latin1\n\n"
                .to_vec();
        let body_bytes: Vec<u8> = (0x80..=0xffu8).chain(*b"\xff\xfe\x00\x01 end").collect();
        input.extend_from_slice(&body_bytes);
        input.extend_from_slice(b"\r\n");
        let a = args(&["-i", "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, &input, "me@example.net").unwrap();
        assert_eq!(body(&msg), [&body_bytes[..], b"\r\n"].concat());
        assert!(msg.starts_with(b"Subject: caf\xc3\xa9 \xe9t\xe9\r\n"));
    }

    #[test]
    fn missing_from_date_message_id_are_added() {
        let a = args(&["bob@example.org"]).unwrap();
        let (env, msg) = prepare(&a, b"Subject: hi\n\nbody\n", "me@example.net").unwrap();
        assert_eq!(env.from, "me@example.net");
        assert_eq!(header_values(&msg, "From"), ["me@example.net"]);
        let date = &header_values(&msg, "Date")[0];
        let when = mailparse::dateparse(date).unwrap();
        assert!((when - now_secs() as i64).abs() < 100, "{date}");
        let id = &header_values(&msg, "Message-ID")[0];
        assert!(id.starts_with('<') && id.ends_with("@example.net>"), "{id}");
        assert!(mailparse::msgidparse(id).is_ok());
        assert_eq!(body(&msg), b"body\r\n");
        assert_crlf(&msg);

        // Present ones are not touched or doubled; -F is ignored when From: exists.
        let input = b"From: Alice <alice@example.net>\nDate: Sat, 29 Nov 2025 10:56:00 +0000\n\
            Message-ID: <x@y>\nSubject: hi\n\nbody\n";
        let a = args(&["-F", "Ignored", "bob@example.org"]).unwrap();
        let (env, msg) = prepare(&a, input, "me@example.net").unwrap();
        assert_eq!(env.from, "alice@example.net");
        assert_eq!(msg, normalize(input, false));

        // Header-only message: still ends with CRLF, headers appended.
        let (_, msg) = prepare(&a, b"Subject: only headers", "me@example.net").unwrap();
        assert_crlf(&msg);
        assert!(
            text(&msg).starts_with("Subject: only headers\r\nFrom: Ignored <me@example.net>\r\n")
        );

        // An empty message gets the headers only.
        let (_, msg) = prepare(&a, b"", "me@example.net").unwrap();
        assert_eq!(header_values(&msg, "From").len(), 1);
        assert_crlf(&msg);
    }

    #[test]
    fn full_name_and_envelope_sender() {
        let a = args(&[
            "-f",
            "alice@example.net",
            "-F",
            "Alice Liddell",
            "bob@example.org",
        ])
        .unwrap();
        let (env, msg) = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap();
        assert_eq!(env.from, "alice@example.net");
        assert!(text(&msg).contains("\r\nFrom: Alice Liddell <alice@example.net>\r\n"));

        let a = args(&["-F", "A. \"Al\" Liddell", "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap();
        assert!(
            text(&msg).contains("From: \"A. \\\"Al\\\" Liddell\" <me@example.net>\r\n"),
            "{}",
            text(&msg)
        );
        let (headers, _) = parse_headers(&msg).unwrap();
        let from = headers.iter().find(|h| h.get_key() == "From").unwrap();
        match &addrparse_header(from).unwrap()[0] {
            MailAddr::Single(info) => {
                assert_eq!(info.display_name.as_deref(), Some("A. \"Al\" Liddell"));
                assert_eq!(info.addr, "me@example.net");
            }
            other => panic!("{other:?}"),
        }

        // Non-ASCII names are RFC 2047 encoded, long ones folded into words under 76.
        let name = "Zoë Ångström-Łukasiewicz, Ärztin für Ökologie und Übersetzung";
        let a = args(&["-F", name, "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap();
        assert!(msg.is_ascii());
        let (headers, _) = parse_headers(&msg).unwrap();
        let from = headers.iter().find(|h| h.get_key() == "From").unwrap();
        for word in text(from.get_value_raw()).split_whitespace() {
            assert!(word.len() <= 75, "{word}");
        }
        match &addrparse_header(from).unwrap()[0] {
            MailAddr::Single(info) => {
                assert_eq!(info.display_name.as_deref(), Some(name));
                assert_eq!(info.addr, "me@example.net");
            }
            other => panic!("{other:?}"),
        }

        // A control character in -F cannot inject a header.
        let a = args(&["-F", "Evil\r\nBcc: x@evil.example", "bob@example.org"]).unwrap();
        let (_, msg) = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap();
        assert!(header_values(&msg, "Bcc").is_empty());
        assert_eq!(header_values(&msg, "From").len(), 1);

        // Sender: beats From: for the envelope; -f beats both.
        let input = b"From: boss@example.com\nSender: alice@example.net\n\nb\n";
        let a = args(&["bob@example.org"]).unwrap();
        assert_eq!(
            prepare(&a, input, "me@x.y").unwrap().0.from,
            "alice@example.net"
        );
        let a = args(&["-f", "<other@example.net>", "bob@example.org"]).unwrap();
        assert_eq!(
            prepare(&a, input, "me@x.y").unwrap().0.from,
            "other@example.net"
        );

        // Null sender: the From: header falls back to default_from.
        for null in ["", "<>"] {
            let a = args(&["-f", null, "bob@example.org"]).unwrap();
            let (env, msg) = prepare(&a, b"Subject: bounce\n\nb\n", "me@example.net").unwrap();
            assert_eq!(env.from, "");
            assert_eq!(header_values(&msg, "From"), ["me@example.net"]);
        }

        // A bad -f is a data error naming it.
        let a = args(&["-f", "not an address", "bob@example.org"]).unwrap();
        let e = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap_err();
        assert!(
            matches!(&e, SendmailError::DataErr(m) if m.contains("not an address")),
            "{e}"
        );
    }

    #[test]
    fn bad_recipients_are_data_errors_naming_them() {
        for bad in [
            "bob",
            "bob@",
            "@example.org",
            "bo b@example.org",
            "bob\u{7}@example.org",
        ] {
            let a = Args {
                recipients: vec![bad.to_owned()],
                ..Args::default()
            };
            match prepare(&a, b"Subject: x\n\nb\n", "me@example.net") {
                Err(e @ SendmailError::DataErr(_)) => {
                    assert!(e.to_string().contains(&format!("{bad:?}")), "{bad:?}: {e}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // From headers, with -t.
        let a = args(&["-t"]).unwrap();
        let e = prepare(&a, b"To: nobody\n\nb\n", "me@example.net").unwrap_err();
        assert!(matches!(e, SendmailError::DataErr(_)), "{e}");
        // No recipients at all: -t and only an empty group.
        let e = prepare(&a, b"To: undisclosed-recipients:;\n\nb\n", "me@example.net").unwrap_err();
        assert_eq!(e, SendmailError::DataErr("no recipients".into()));
        // <addr> on the command line is fine.
        let a = args(&["<bob@example.org>"]).unwrap();
        let (env, _) = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap();
        assert_eq!(env.recipients, ["bob@example.org"]);
    }

    /// What Debian's cron pipes to `sendmail -FCronDaemon -i -B8BITMIME -oem alice`.
    const CRON_MAIL: &[u8] =
        b"From: root (Cron Daemon)\nTo: alice\nSubject: Cron <alice@laptop> backup\n\
        MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\nbackup done\n";

    fn cron_args(local: Option<&str>) -> Args {
        let mut a = args(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "alice"]).unwrap();
        a.local_names = local.map(str::to_owned);
        a
    }

    #[test]
    fn cron_mail_to_a_local_name_goes_to_your_own_address_with_headers_a_relay_takes() {
        let a = cron_args(Some("alice@isp-a.example"));
        let (env, msg) = prepare(&a, CRON_MAIL, "alice@laptop").unwrap();
        assert_eq!(env.from, "alice@isp-a.example");
        assert_eq!(env.recipients, ["alice@isp-a.example"]);
        assert_eq!(
            header_values(&msg, "from"),
            ["Cron Daemon <alice@isp-a.example>"]
        );
        assert_eq!(header_values(&msg, "to"), ["alice@isp-a.example"]);
        assert_eq!(
            header_values(&msg, "subject"),
            ["Cron <alice@laptop> backup"]
        );
        assert_eq!(body(&msg), b"backup done\r\n");
        // The same with -t, and with the streamed reader.
        let mut t = args(&["-t", "-i"]).unwrap();
        t.local_names = Some("alice@isp-a.example".into());
        let (env, _) = prepare(&t, CRON_MAIL, "alice@laptop").unwrap();
        assert_eq!(env.recipients, ["alice@isp-a.example"]);
        let dated = [
            b"Date: Sun, 06 Dec 2026 01:00:00 +0000\nMessage-ID: <1@laptop>\n".as_slice(),
            CRON_MAIL,
        ]
        .concat();
        let (_, whole) = prepare(&a, &dated, "alice@laptop").unwrap();
        let mut streamed = prepare_stream(&a, dated.as_slice(), "alice@laptop").unwrap();
        let mut bytes = Vec::new();
        streamed.read_to_end(&mut bytes).unwrap();
        assert_eq!(text(&bytes), text(&whole));
    }

    #[test]
    fn a_local_name_without_an_address_for_it_says_how_to_give_one() {
        let e = prepare(&cron_args(None), CRON_MAIL, "alice@laptop").unwrap_err();
        assert!(matches!(e, SendmailError::DataErr(_)), "{e}");
        assert!(e.to_string().contains("recipient \"alice\""), "{e}");
        assert!(
            e.to_string().contains("`from` address without wildcards"),
            "{e}"
        );
        let mut t = args(&["-t"]).unwrap();
        let e = prepare(&t, b"To: alice (me)\n\nb\n", "me@example.net").unwrap_err();
        assert!(e.to_string().contains("the To: header"), "{e}");
        assert!(e.to_string().contains("--user"), "{e}");
        // Qualified addresses are left alone; a list that mixes both is not guessed at.
        t.local_names = Some("alice@isp-a.example".into());
        let (env, msg) = prepare(
            &t,
            b"From: Bob <bob@example.org>\nTo: carol@example.org\n\nb\n",
            "me@example.net",
        )
        .unwrap();
        assert_eq!(env.from, "bob@example.org");
        assert_eq!(env.recipients, ["carol@example.org"]);
        assert_eq!(header_values(&msg, "from"), ["Bob <bob@example.org>"]);
        let e = prepare(&t, b"To: carol@example.org, dave\n\nb\n", "me@example.net").unwrap_err();
        assert!(matches!(e, SendmailError::DataErr(_)), "{e}");
    }

    #[test]
    fn a_comma_list_on_the_command_line_is_several_recipients_as_sendmail_takes_it() {
        let a = args(&[
            "a@b.example,c@d.example",
            "e@f.example, <g@h.example>,",
            "\"x,y\"@quoted.example",
        ])
        .unwrap();
        let (env, _) = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap();
        assert_eq!(
            env.recipients,
            [
                "a@b.example",
                "c@d.example",
                "e@f.example",
                "g@h.example",
                "\"x,y\"@quoted.example"
            ]
        );
        // A bad address in a list is named on its own.
        let a = args(&["a@b.example,bob"]).unwrap();
        let e = prepare(&a, b"Subject: x\n\nb\n", "me@example.net").unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert!(e.to_string().contains("\"bob\""), "{e}");
    }

    #[test]
    fn invalid_header_sections_are_data_errors() {
        let a = args(&["bob@example.org"]).unwrap();
        for input in [
            &b"hello world, no headers here\n\nbody\n"[..],
            b" starts with a space\n\n",
            b": no name\n\n",
            b"Subject: fine\nthis line is no header\n\nbody\n",
            b"Bad Name: x\n\n",
            b"\x00\x01\x02\xff\xfe binary junk",
        ] {
            match prepare(&a, input, "me@example.net") {
                Err(e @ SendmailError::DataErr(_)) => {
                    assert!(e.to_string().contains("header section"), "{e}");
                    assert_eq!(e.exit_code(), 65);
                }
                other => panic!("{:?}: {other:?}", text(input)),
            }
        }
        // An mbox From_ line is dropped, not an error.
        let (_, msg) = prepare(
            &a,
            b"From alice@example.net Sat Nov 29 10:56:00 2025\nSubject: x\n\nb\n",
            "me@example.net",
        )
        .unwrap();
        assert!(msg.starts_with(b"Subject: x\r\n"));
        // Obsolete white space before the colon is tolerated.
        let a = args(&["-t"]).unwrap();
        let (env, _) = prepare(&a, b"To : bob@example.org\n\nb\n", "me@example.net").unwrap();
        assert_eq!(env.recipients, ["bob@example.org"]);
    }

    #[test]
    fn envelope_from_headers_for_new_files() {
        let input =
            b"From: Alice <alice@example.net>\nTo: bob@example.org\nBcc: carol@example.org\n\
            Subject: dropped in new/\n\nline\n.\nafter a dot line\n";
        let (env, msg) = envelope_from_headers(input).unwrap();
        assert_eq!(env.from, "alice@example.net");
        assert_eq!(env.recipients, ["bob@example.org", "carol@example.org"]);
        assert!(!text(&msg).contains("carol"));
        assert_eq!(body(&msg), b"line\r\n.\r\nafter a dot line\r\n");
        assert_eq!(header_values(&msg, "Date").len(), 1);
        assert_eq!(header_values(&msg, "Message-ID").len(), 1);
        assert_crlf(&msg);

        let (env, _) =
            envelope_from_headers(b"From: a@example.net\nSender: s@example.net\nCc: c@x.y\n\n")
                .unwrap();
        assert_eq!(env.from, "s@example.net");
        assert_eq!(env.recipients, ["c@x.y"]);

        let e = envelope_from_headers(b"To: bob@example.org\n\nno sender\n").unwrap_err();
        assert!(
            matches!(&e, SendmailError::DataErr(m) if m.contains("From")),
            "{e}"
        );
        let e = envelope_from_headers(b"From: a@example.net\n\nno recipient\n").unwrap_err();
        assert_eq!(e, SendmailError::DataErr("no recipients".into()));
        let e = envelope_from_headers(b"just some text\n").unwrap_err();
        assert!(e.to_string().contains("header section"), "{e}");
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let alphabet: &[u8] = b"ab:@<>\",; \t\r\n.=?\x80\xff()\\[]";
        let a = args(&["-t", "bob@example.org"]).unwrap();
        for _ in 0..5000 {
            let len = rng.random_range(0..120);
            let input: Vec<u8> = if rng.random_bool(0.5) {
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut v = b"To: ".to_vec();
                v.extend((0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]));
                v
            };
            let _ = prepare(&a, &input, "me@example.net");
            let _ = envelope_from_headers(&input);
        }
    }

    /// The normalisation of a whole input as it was done before the streaming one, line by
    /// line: the reference the streaming normaliser must match.
    fn normalize_reference(input: &[u8], dot_ends: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            let content = line.strip_suffix(b"\r").unwrap_or(line);
            if dot_ends && content == b"." {
                break;
            }
            for part in content.split(|&b| b == b'\r') {
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
            rest = next;
        }
        out
    }

    /// A reader that hands out its bytes a few at a time, at random.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        rng: rand::rngs::StdRng,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            use rand::Rng;
            let n = self
                .rng
                .random_range(1..=9)
                .min(buf.len())
                .min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn the_streamed_message_is_byte_for_byte_the_one_prepare_makes_whatever_the_pieces() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x57ea);
        let alphabet: &[u8] = b"ab. \r\n\r\n\n.:Bcc To:x@y.example\n";
        let fixed = b"From: a@b.example\nDate: now\nMessage-ID: <1@b.example>\n";
        for i in 0..3000 {
            let dot_ends = i % 2 == 0;
            let tail: Vec<u8> = (0..rng.random_range(0..200))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            assert_eq!(
                normalize(&tail, dot_ends),
                normalize_reference(&tail, dot_ends),
                "{:?}",
                String::from_utf8_lossy(&tail)
            );
            let input = [fixed.as_slice(), &tail].concat();
            let a = if dot_ends {
                args(&["-t", "c@d.example"]).unwrap()
            } else {
                args(&["-t", "-i", "c@d.example"]).unwrap()
            };
            let whole = prepare(&a, &input, "me@example.net");
            let trickle = Trickle {
                data: input.clone(),
                pos: 0,
                rng: rand::rngs::StdRng::seed_from_u64(i),
            };
            let streamed = prepare_stream(&a, trickle, "me@example.net").map(|mut m| {
                let mut out = Vec::new();
                m.read_to_end(&mut out).unwrap();
                (m.envelope, out)
            });
            match (whole, streamed) {
                (Ok(w), Ok(s)) => assert_eq!(w, s, "{:?}", String::from_utf8_lossy(&input)),
                (Err(w), Err(ReadError::Message(s))) => assert_eq!(w, s),
                (w, s) => panic!("{:?}: {w:?} / {s:?}", String::from_utf8_lossy(&input)),
            }
        }
    }

    #[test]
    fn a_header_section_without_end_is_refused_after_a_mebibyte() {
        let endless = std::io::repeat(b'X').take(8 << 20);
        let input = b"Subject: ".chain(endless);
        let a = args(&["c@d.example"]).unwrap();
        match prepare_stream(&a, input, "me@example.net") {
            Err(ReadError::Message(SendmailError::DataErr(m))) => {
                assert!(
                    m.contains("header section is longer than 1048576 bytes"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_764_413_760),
            "Sat, 29 Nov 2025 10:56:00 +0000"
        );
        assert_eq!(
            rfc5322_date(4_102_444_799),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(message_id_host("a@example.net"), "example.net");
        assert_eq!(message_id_host("a@[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(message_id_host(""), "localhost.localdomain");
        assert_eq!(message_id_host("a@b..c"), "localhost.localdomain");
        assert_eq!(address_problem("a@b"), None);
        assert!(address_problem("a b@c").is_some());
        assert!(address_problem("a@b\r\nRCPT TO:<x@y>").is_some());
        assert!(address_problem("<a@b>").is_some());
    }

    #[test]
    fn a_lone_cr_becomes_a_line_end_so_no_dot_line_hides_behind_it() {
        let a = args(&["-t", "-i"]).unwrap();
        let (_, msg) = prepare(
            &a,
            b"To: r@example.net\n\nA\r.\r\nB\rC\r\n",
            "me@example.net",
        )
        .unwrap();
        assert_crlf(&msg);
        assert!(
            !msg.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'),
            "{:?}",
            text(&msg)
        );
        assert_eq!(body(&msg), b"A\r\n.\r\nB\r\nC\r\n");
    }
}
