//! The ESMTP state machine of one session: bytes in, replies and complete messages out.

use crate::dsn::{Dsn, ENVID_MAX, Notify, Orcpt, RecipientDsn, Ret};
use crate::sendmail::{address_problem, prepare_submitted};
use crate::state::Envelope;

use super::command::{self, Bad, Command, Param};
use super::data::{DataDecoder, Flaw};

/// Who is at the other end, as the kernel tells it (peer credentials of a unix socket, or the
/// owner of a loopback TCP connection's other end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The uid the agent runs as: served without a password.
    Owner,
    /// Another uid: refused.
    Other {
        /// The peer's uid.
        uid: u32,
        /// The uid the listener serves.
        owner: u32,
    },
    /// The kernel could not say: served after `AUTH PLAIN` with the owner's token.
    Unknown,
}

/// The caps of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message, in bytes (announced as `SIZE`).
    pub max_message_size: u64,
    /// The most recipients of one message.
    pub max_recipients: usize,
    /// The longest command line, in bytes, without its line end.
    pub max_line: usize,
    /// After this many refused commands the session is closed.
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_line: 2048,
            max_errors: 20,
        }
    }
}

/// What the dialogue asks of the world around it.
pub trait Policy {
    /// The user whose outbox mail from `sender` (`""`: the null sender) goes to, or why none
    /// takes it.
    fn user_for_sender(&self, sender: &str) -> Result<String, String>;
    /// Whether `password` is the owner's token (`AUTH PLAIN`, when the peer is unknown).
    fn token_matches(&self, password: &str) -> bool;
}

/// A complete message for a user's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The user it belongs to (chosen by the envelope sender).
    pub user: String,
    /// The envelope, with the DSN parameters given.
    pub envelope: Envelope,
    /// The message as it is to be queued.
    pub message: Vec<u8>,
}

/// What became of a [`Submission`]: the reply to the final dot follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Durable in the outbox, with this id.
    Queued(String),
    /// The disk (or quota) is full; nothing was kept.
    NoSpace,
    /// Another error; nothing was kept.
    Failed(String),
}

/// What the I/O around the session does next.
#[derive(Debug)]
pub enum Step {
    /// Send the output, then read more input ([`Session::input`], or [`Session::end_of_input`]).
    Read,
    /// Make this message durable and tell the session with [`Session::committed`].
    Submit(Submission),
    /// Send the output and close the connection.
    Close,
}

/// Where the dialogue is.
#[derive(Debug)]
enum Phase {
    Command,
    /// `AUTH PLAIN` without an initial response: the next line is the response.
    AuthResponse,
    Data(DataDecoder),
    /// A message was handed out with [`Step::Submit`]; waiting for [`Session::committed`].
    Committing,
    Closed,
}

/// One message being put together: `MAIL FROM` onwards.
#[derive(Debug)]
struct Transaction {
    from: String,
    user: String,
    utf8: bool,
    recipients: Vec<String>,
    /// Lower-cased recipients, to drop duplicates as sendmail does.
    seen: std::collections::HashSet<String>,
    dsn: Dsn,
}

/// One SMTP session, without I/O: feed it bytes ([`Session::input`]), ask it what to do
/// ([`Session::next`]) and send what it wrote ([`Session::output`]).
#[derive(Debug)]
pub struct Session {
    host: String,
    limits: Limits,
    peer: Peer,
    phase: Phase,
    greeted: bool,
    esmtp: bool,
    authenticated: bool,
    tx: Option<Transaction>,
    input: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    errors: u32,
    progress: u64,
    /// Inside a command line longer than the limit: its bytes are dropped up to its end.
    overlong: bool,
}

impl Session {
    /// A new session; its greeting is already in the output.
    pub fn new(host: &str, limits: Limits, peer: Peer) -> Session {
        let mut s = Session {
            host: host.to_owned(),
            limits,
            peer,
            phase: Phase::Command,
            greeted: false,
            esmtp: false,
            authenticated: false,
            tx: None,
            input: Vec::new(),
            pos: 0,
            out: Vec::new(),
            errors: 0,
            progress: 0,
            overlong: false,
        };
        let greeting = format!("220 {} ESMTP linkrelay", s.host);
        s.say(&greeting);
        s
    }

    /// Bytes read from the client.
    pub fn input(&mut self, bytes: &[u8]) {
        // Drop what was handled: at most a partial command line is left.
        self.input.drain(..self.pos);
        self.pos = 0;
        self.input.extend_from_slice(bytes);
    }

    /// The client closed its side: whatever message was being sent is dropped.
    pub fn end_of_input(&mut self) {
        self.tx = None;
        self.phase = Phase::Closed;
    }

    /// The client was too slow (the I/O's time limits): says so, and the session ends.
    pub fn timed_out(&mut self) {
        self.tx = None;
        let text = format!("421 4.4.2 {} Timeout exceeded; closing", self.host);
        self.say(&text);
        self.phase = Phase::Closed;
    }

    /// The replies written so far and not yet taken.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output (once it was sent).
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// True while the message's data is being read (the I/O's DATA time limit applies).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// Counts the commands (and messages) handled so far: the I/O starts a command's time
    /// limit again whenever it changes.
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// How many bytes of input the session holds room for (its memory while idle).
    pub fn buffered(&self) -> usize {
        self.input.capacity()
    }

    /// The result of the [`Step::Submit`] handed out last.
    pub fn committed(&mut self, result: Committed) {
        if !matches!(self.phase, Phase::Committing) {
            return;
        }
        self.phase = Phase::Command;
        match result {
            Committed::Queued(id) => self.say(&format!("250 2.0.0 Ok: queued as {id}")),
            Committed::NoSpace => {
                self.say("452 4.3.1 Insufficient system storage; nothing was kept, try again later")
            }
            Committed::Failed(why) => self.say(&format!(
                "451 4.3.0 Message not queued ({}); nothing was kept, try again later",
                one_line(&why)
            )),
        }
    }

    /// Handles the input there is, and says what to do next.
    pub fn next(&mut self, policy: &dyn Policy) -> Step {
        loop {
            match &mut self.phase {
                Phase::Closed => return Step::Close,
                Phase::Committing => return Step::Read,
                Phase::Data(decoder) => {
                    let (used, done) = decoder.feed(&self.input[self.pos..]);
                    self.pos += used;
                    if !done {
                        return Step::Read;
                    }
                    self.progress += 1;
                    if let Phase::Data(decoder) = std::mem::replace(&mut self.phase, Phase::Command)
                        && let Some(submission) = self.end_of_data(decoder)
                    {
                        self.phase = Phase::Committing;
                        return Step::Submit(submission);
                    }
                }
                Phase::Command | Phase::AuthResponse => {
                    let Some(line) = self.take_line() else {
                        return Step::Read;
                    };
                    self.progress += 1;
                    self.line(&line, policy);
                }
            }
        }
    }

    /// The next complete line, without its line end (an overlong one comes back empty with
    /// `overlong` set); `None` when the input holds no line end yet.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let rest = &self.input[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > self.limits.max_line {
                self.overlong = true;
                self.pos = self.input.len();
            }
            return None;
        };
        let mut line = &rest[..nl];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.len() > self.limits.max_line {
            self.overlong = true;
        }
        let line = if self.overlong {
            Vec::new()
        } else {
            line.to_vec()
        };
        self.pos += nl + 1;
        Some(line)
    }

    fn line(&mut self, line: &[u8], policy: &dyn Policy) {
        if std::mem::take(&mut self.overlong) {
            return self.refuse("500 5.5.2 Line too long");
        }
        if line.iter().any(|&b| b == b'\r' || b == 0) {
            return self.refuse("500 5.5.2 Bare CR or NUL in a command");
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return self.refuse("500 5.5.2 A command that is not UTF-8 text");
        };
        if matches!(self.phase, Phase::AuthResponse) {
            self.phase = Phase::Command;
            return self.auth_response(text, policy);
        }
        match command::parse(text) {
            Ok(cmd) => self.command(cmd, policy),
            Err(Bad::Http) => {
                let text = format!(
                    "421 4.7.0 {} This is a mail submission port, not a web server; closing",
                    self.host
                );
                self.say(&text);
                self.phase = Phase::Closed;
            }
            Err(Bad::Unknown) => self.refuse("500 5.5.2 Command not recognized"),
            Err(Bad::Syntax(help)) => self.refuse(&format!("501 5.5.4 Syntax: {help}")),
            Err(Bad::Param(why)) => self.refuse(&format!("501 5.5.4 {why}")),
        }
    }

    fn command(&mut self, cmd: Command<'_>, policy: &dyn Policy) {
        if let Peer::Other { uid, owner } = self.peer {
            if cmd == Command::Quit {
                return self.quit();
            }
            let text = format!(
                "530 5.7.0 This linkrelay serves uid {owner} only; you are uid {uid}. Closing"
            );
            self.say(&text);
            self.phase = Phase::Closed;
            return;
        }
        match cmd {
            Command::Ehlo(_) => self.ehlo(),
            Command::Helo(_) => {
                self.tx = None;
                self.greeted = true;
                let text = format!("250 {}", self.host);
                self.say(&text);
            }
            Command::Mail { path, params } => self.mail(path, &params, policy),
            Command::Rcpt { path, params } => self.rcpt(path, &params),
            Command::Data => self.data(),
            Command::Rset => {
                self.tx = None;
                self.say("250 2.0.0 Ok");
            }
            Command::Noop => self.say("250 2.0.0 Ok"),
            Command::Quit => self.quit(),
            Command::Vrfy => self.say("252 2.5.0 Cannot VRFY; send the message and it will be tried"),
            Command::Expn => self.refuse("502 5.5.1 EXPN is not offered"),
            Command::Help => self.say(
                "214 2.0.0 linkrelay: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, AUTH PLAIN",
            ),
            Command::Starttls => self.refuse(
                "502 5.5.1 STARTTLS is not offered: this listener takes mail only from this machine",
            ),
            Command::Bdat => self.refuse("502 5.5.1 BDAT (CHUNKING) is not offered; use DATA"),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial, policy),
        }
    }

    fn quit(&mut self) {
        let text = format!("221 2.0.0 {} Bye", self.host);
        self.say(&text);
        self.phase = Phase::Closed;
    }

    fn ehlo(&mut self) {
        self.tx = None;
        self.greeted = true;
        self.esmtp = true;
        let mut lines = vec![
            self.host.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.limits.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "DSN".to_owned(),
        ];
        if self.peer == Peer::Owner || self.peer == Peer::Unknown {
            lines.push("AUTH PLAIN".to_owned());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
    }

    fn mail(&mut self, path: &str, params: &[Param<'_>], policy: &dyn Policy) {
        if !self.greeted {
            return self.refuse("503 5.5.1 Send EHLO (or HELO) first");
        }
        if self.tx.is_some() {
            return self.refuse("503 5.5.1 A message is already started (RSET to start again)");
        }
        if self.peer == Peer::Unknown && !self.authenticated {
            return self.refuse(
                "530 5.7.0 Authentication required: AUTH PLAIN with the token `linkrelay token` prints",
            );
        }
        let mut utf8 = false;
        let mut size = None;
        let mut dsn = Dsn::default();
        for p in params {
            let key = p.key.to_ascii_uppercase();
            let result = match (key.as_str(), p.value) {
                ("SIZE", Some(v)) => v
                    .parse::<u64>()
                    .map(|n| size = Some(n))
                    .map_err(|_| format!("SIZE={v} is not a number")),
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") =>
                {
                    Ok(())
                }
                ("SMTPUTF8", None) => {
                    utf8 = true;
                    Ok(())
                }
                ("RET", Some(v)) if dsn.ret.is_none() => Ret::parse(v)
                    .map(|r| dsn.ret = Some(r))
                    .ok_or_else(|| format!("RET={v}: write RET=FULL or RET=HDRS")),
                ("ENVID", Some(v)) if dsn.envid.is_none() => crate::dsn::unxtext(v)
                    .and_then(|id| {
                        if id.chars().count() > ENVID_MAX {
                            Err(format!("longer than {ENVID_MAX} characters"))
                        } else {
                            dsn.envid = Some(id);
                            Ok(())
                        }
                    })
                    .map_err(|why| format!("ENVID: {why}")),
                // RFC 4954: who authorised the message elsewhere; nothing to do with it here.
                ("AUTH", Some(_)) => Ok(()),
                _ => {
                    return self.refuse(&format!(
                        "555 5.5.4 MAIL parameter {} is not known or not valid here",
                        p.key
                    ));
                }
            };
            if let Err(why) = result {
                return self.refuse(&format!("501 5.5.4 {}", one_line(&why)));
            }
        }
        if let Some(problem) = self.address_problem(path, utf8, true) {
            return self.refuse(&problem);
        }
        if size.is_some_and(|n| n > self.limits.max_message_size) {
            let text = format!(
                "552 5.3.4 Message size exceeds the limit of {} bytes",
                self.limits.max_message_size
            );
            return self.say(&text);
        }
        let user = match policy.user_for_sender(path) {
            Ok(user) => user,
            Err(why) => return self.say(&format!("550 5.7.1 {}", one_line(&why))),
        };
        self.tx = Some(Transaction {
            from: path.to_owned(),
            user,
            utf8,
            recipients: Vec::new(),
            seen: Default::default(),
            dsn,
        });
        self.say("250 2.1.0 Ok");
    }

    fn rcpt(&mut self, path: &str, params: &[Param<'_>]) {
        let Some(tx) = &self.tx else {
            return self.refuse("503 5.5.1 Send MAIL FROM first");
        };
        let utf8 = tx.utf8;
        let mut notify = None;
        let mut orcpt = None;
        for p in params {
            let key = p.key.to_ascii_uppercase();
            let result = match (key.as_str(), p.value) {
                ("NOTIFY", Some(v)) if notify.is_none() => {
                    Notify::parse(v).map(|n| notify = Some(n))
                }
                ("ORCPT", Some(v)) if orcpt.is_none() => Orcpt::parse(v).map(|o| orcpt = Some(o)),
                _ => {
                    return self.refuse(&format!(
                        "555 5.5.4 RCPT parameter {} is not known or not valid here",
                        p.key
                    ));
                }
            };
            if let Err(why) = result {
                return self.refuse(&format!("501 5.5.4 {key}: {}", one_line(&why)));
            }
        }
        if path.is_empty() {
            return self.refuse("553 5.1.3 A recipient is needed: RCPT TO:<address>");
        }
        if let Some(problem) = self.address_problem(path, utf8, false) {
            return self.refuse(&problem);
        }
        let max = self.limits.max_recipients;
        let Some(tx) = &mut self.tx else {
            return;
        };
        if !tx.seen.contains(&path.to_lowercase()) {
            if tx.recipients.len() >= max {
                return self.say(&format!("452 4.5.3 Too many recipients (at most {max})"));
            }
            tx.seen.insert(path.to_lowercase());
            tx.recipients.push(path.to_owned());
            if notify.is_some() || orcpt.is_some() {
                tx.dsn.recipients.push(RecipientDsn {
                    addr: path.to_owned(),
                    notify,
                    orcpt,
                });
            }
        }
        self.say("250 2.1.5 Ok");
    }

    /// The reply for an address that cannot be used, if it cannot.
    fn address_problem(&self, addr: &str, utf8: bool, sender: bool) -> Option<String> {
        let code = if sender { "553 5.1.7" } else { "553 5.1.3" };
        if sender && addr.is_empty() {
            return None;
        }
        if !addr.is_ascii() && !utf8 {
            return Some(format!(
                "553 5.6.7 {addr:?} is not ASCII: give SMTPUTF8 on MAIL FROM"
            ));
        }
        address_problem(addr).map(|p| format!("{code} {}: {p}", one_line(addr)))
    }

    fn data(&mut self) {
        let Some(tx) = &self.tx else {
            return self.refuse("503 5.5.1 Send MAIL FROM first");
        };
        if tx.recipients.is_empty() {
            return self.refuse("554 5.5.1 No valid recipients");
        }
        self.say("354 End data with <CR><LF>.<CR><LF>");
        self.phase = Phase::Data(DataDecoder::new(self.limits.max_message_size));
    }

    /// The data ended: the message to submit, or the reply that refuses it (the transaction
    /// is over either way).
    fn end_of_data(&mut self, decoder: DataDecoder) -> Option<Submission> {
        let tx = self.tx.take()?;
        let data = match decoder.finish() {
            Ok(data) => data,
            Err(Flaw::TooBig) => {
                let text = format!(
                    "552 5.3.4 Message size exceeds the limit of {} bytes",
                    self.limits.max_message_size
                );
                self.say(&text);
                return None;
            }
            Err(Flaw::BareLineEnd) => {
                self.say("550 5.5.2 Message refused: a bare CR or LF; end every line with CR LF");
                return None;
            }
            Err(Flaw::Nul) => {
                self.say("554 5.6.0 Message refused: it contains NUL bytes");
                return None;
            }
        };
        let envelope = Envelope {
            from: tx.from,
            recipients: tx.recipients,
            dsn: (!tx.dsn.is_empty()).then_some(tx.dsn),
        };
        match prepare_submitted(&envelope, &data) {
            Ok(message) => Some(Submission {
                user: tx.user,
                envelope,
                message,
            }),
            Err(e) => {
                self.say(&format!(
                    "554 5.6.0 Message refused: {}",
                    one_line(&e.to_string())
                ));
                None
            }
        }
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>, policy: &dyn Policy) {
        if !self.esmtp {
            return self.refuse("503 5.5.1 Send EHLO first");
        }
        if self.authenticated {
            return self.refuse("503 5.5.1 Already authenticated");
        }
        if self.tx.is_some() {
            return self.refuse("503 5.5.1 AUTH is not allowed during a message");
        }
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            return self.refuse("504 5.5.4 Only AUTH PLAIN is offered");
        }
        match initial {
            Some(response) => self.auth_response(response, policy),
            None => {
                self.say("334 ");
                self.phase = Phase::AuthResponse;
            }
        }
    }

    fn auth_response(&mut self, response: &str, policy: &dyn Policy) {
        if response == "*" {
            return self.refuse("501 5.7.0 Authentication cancelled");
        }
        let decoded = if response == "=" {
            Some(Vec::new())
        } else {
            base64_decode(response)
        };
        let Some(decoded) = decoded else {
            return self.refuse("501 5.5.2 Cannot decode the AUTH response (base64)");
        };
        // authzid NUL authcid NUL password; the token alone decides.
        let mut parts = decoded.split(|&b| b == 0);
        let password = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(password), None) => std::str::from_utf8(password).ok(),
            _ => None,
        };
        // The owner needs no password (the kernel vouches for it), so a client set up with
        // one works all the same.
        if self.peer == Peer::Owner || password.is_some_and(|p| policy.token_matches(p)) {
            self.authenticated = true;
            self.say("235 2.7.0 Authentication successful");
        } else {
            self.refuse("535 5.7.8 Authentication credentials invalid (the password is the token `linkrelay token` prints)");
        }
    }

    /// A reply that counts as an error: too many of them end the session.
    fn refuse(&mut self, reply: &str) {
        self.say(reply);
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            let text = format!("421 4.7.0 {} Too many errors; closing", self.host);
            self.say(&text);
            self.tx = None;
            self.phase = Phase::Closed;
        }
    }

    fn say(&mut self, reply: &str) {
        self.out.extend_from_slice(reply.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
}

/// Text for a reply line: control characters (a line end from a reason) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Standard base64 with padding; `None` for anything else.
pub(super) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3 - pad]);
    }
    Some(out)
}
