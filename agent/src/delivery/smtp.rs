//! One SMTP session with a relay: every recipient gets its own verdict, every stage its
//! time limit. The bytes go through [`crate::delivery::wire`], which reads replies with
//! bounds; lettre formats the commands and checks the addresses in them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{
    ClientId, MailBodyParameter, MailParameter, RcptParameter,
};
use linkrelay_config::{Relay, TlsMode};
use linkrelay_outbox::dsn::Dsn;

use crate::delivery::message::Message;
use crate::delivery::outcome::{Outcome, Stage, classify};
use crate::delivery::reply::{Offers, Reply};
use crate::delivery::wire::{Connection, WireError};

/// A reply or transport error at some stage, already classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Where it happened.
    pub stage: Stage,
    /// The reply code, `None` for transport errors.
    pub code: Option<u16>,
    /// The server's text (or the error), one line.
    pub text: String,
    /// What it means.
    pub outcome: Outcome,
}

impl Verdict {
    /// A reply at `stage`, classified ([`classify`]).
    pub fn new(stage: Stage, code: Option<u16>, text: String) -> Self {
        let outcome = classify(stage, code, &text);
        Self {
            stage,
            code,
            text,
            outcome,
        }
    }

    fn local(stage: Stage, outcome: Outcome, text: impl Into<String>) -> Self {
        Self {
            stage,
            code: None,
            text: text.into(),
            outcome,
        }
    }

    fn timeout(stage: Stage, limit: Duration) -> Self {
        Self::local(
            stage,
            Outcome::Deferred,
            format!("timed out after {}", humantime::format_duration(limit)),
        )
    }

    /// A reply, positive or not, at `stage`.
    fn reply(stage: Stage, reply: &Reply) -> Self {
        Self::new(stage, Some(reply.code), reply.text())
    }

    /// Transport trouble at `stage`: the connection, TLS or a reply that is none.
    fn wire(stage: Stage, err: &WireError) -> Self {
        let text = match err {
            WireError::Tls(text) => crate::delivery::tls_hint::explain(text, None),
            other => other.to_string(),
        };
        Self::new(stage, None, text)
    }

    /// Whether this verdict means the connection cannot carry another command: transport
    /// trouble (no reply code: dropped, reset, timed out, malformed reply) or a 421 (the
    /// server is closing the connection).
    pub fn breaks_connection(&self) -> bool {
        self.code.is_none_or(|c| c == 421)
    }

    /// Whether the relay did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.code.is_none() && self.text.starts_with("timed out")
    }

    /// "554 5.7.1 ..." for a reply, "timed out after 5s (at greeting)" for the rest; for
    /// status output.
    pub fn describe(&self) -> String {
        match self.code {
            Some(code) => format!("{code} {}", self.text),
            None => format!("{} (at {})", self.text, self.stage.as_str()),
        }
    }
}

/// What one message transaction did.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Per recipient: the RCPT verdict, or the end-of-data verdict for accepted ones.
    pub recipients: Vec<(String, Verdict)>,
}

/// An open, greeted, secured and authenticated session.
pub struct Session {
    conn: Connection,
    timeout: Duration,
    /// Set once the connection is out of step with the server (transport trouble, a timeout
    /// in the middle of a command, a 421): it must not carry another command.
    broken: bool,
    /// What the relay offered in its last EHLO reply.
    offers: Offers,
    /// See [`Session::past_the_dot`].
    past_the_dot: Arc<AtomicBool>,
}

fn helo_name(relay: &Relay) -> ClientId {
    let name = relay.helo.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into())
    });
    ClientId::Domain(name)
}

/// The addresses of the relay's host, resolved within the stage timeout.
async fn resolve(relay: &Relay, limit: Duration) -> Result<Vec<std::net::SocketAddr>, Verdict> {
    let lookup = tokio::net::lookup_host((relay.host.as_str(), relay.port));
    match tokio::time::timeout(limit, lookup).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err(Verdict::local(
                    Stage::Connect,
                    Outcome::Deferred,
                    format!("{} has no address", relay.host),
                ))
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(Verdict::local(
            Stage::Connect,
            Outcome::Deferred,
            format!("cannot resolve {}: {e}", relay.host),
        )),
        Err(_) => Err(Verdict::local(
            Stage::Connect,
            Outcome::Deferred,
            format!("timed out resolving {}", relay.host),
        )),
    }
}

/// Connects to the relay's first address that answers, within the stage timeout.
async fn connect(
    relay: &Relay,
    peers: &[std::net::SocketAddr],
    limit: Duration,
) -> Result<Connection, Verdict> {
    match tokio::time::timeout(limit, Connection::connect(peers)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Verdict::local(
            Stage::Connect,
            Outcome::Deferred,
            format!("cannot connect to {}:{}: {e}", relay.host, relay.port),
        )),
        Err(_) => Err(Verdict::timeout(Stage::Connect, limit)),
    }
}

/// The TLS handshake with the relay, within the stage timeout.
async fn secure(conn: &mut Connection, relay: &Relay, limit: Duration) -> Result<(), Verdict> {
    let config = crate::delivery::wire::tls_config(relay.ca_file.as_deref())
        .map_err(|text| Verdict::local(Stage::Tls, Outcome::Deferred, text))?;
    match tokio::time::timeout(limit, conn.start_tls(config, &relay.host)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(WireError::Tls(text))) => {
            let text = crate::delivery::tls_hint::explain(&text, relay.ca_file.as_deref());
            Err(Verdict::new(Stage::Tls, None, text))
        }
        Ok(Err(e)) => Err(Verdict::wire(Stage::Tls, &e)),
        Err(_) => Err(Verdict::timeout(Stage::Tls, limit)),
    }
}

/// Writes `command` (unless empty: the reply to what was written before is due) and reads
/// the reply, within `limit`. A reply that is not positive (4xx, 5xx) is an `Err`.
async fn exchange(
    conn: &mut Connection,
    stage: Stage,
    limit: Duration,
    command: &[u8],
) -> Result<Reply, Verdict> {
    let io = async {
        if !command.is_empty() {
            conn.write(command).await?;
        }
        conn.read_reply().await
    };
    match tokio::time::timeout(limit, io).await {
        Ok(Ok(reply)) if reply.is_positive() => Ok(reply),
        Ok(Ok(reply)) => Err(Verdict::reply(stage, &reply)),
        Ok(Err(e)) => Err(Verdict::wire(stage, &e)),
        Err(_) => Err(Verdict::timeout(stage, limit)),
    }
}

/// The verdict of a recipient whose address does not parse: it fails, nothing is asked.
fn bad_address(rcpt: &str, error: &str) -> Verdict {
    Verdict::local(
        Stage::Rcpt,
        Outcome::Failed,
        format!("bad recipient address {rcpt:?}: {error}"),
    )
}

/// How long the message data may take: the stage timeout plus one second per 16 KiB, so that
/// a large message on a slow link is not cut off (at least 16 KiB/s is expected).
pub fn data_timeout(limit: Duration, size: u64) -> Duration {
    limit + Duration::from_secs(size / 16_384)
}

/// A password refused because the relay wants OAuth2 (Microsoft's `550 5.7.30`, Google's
/// `534 5.7.9`): the verdict says so, and what to write in the config.
fn with_oauth2_hint(mut v: Verdict) -> Verdict {
    if crate::delivery::outcome::wants_oauth2(v.code, &v.text) {
        v.text.push_str(OAUTH2_HINT);
    }
    v
}

/// What [`with_oauth2_hint`] adds.
pub const OAUTH2_HINT: &str = " (this relay needs OAuth2, not a password: give it auth = \"xoauth2\" and a [relay.oauth2] table, then run `linkrelay login`; see docs/oauth2.md)";

/// An AUTH mechanism the agent speaks.
#[derive(Debug, Clone, Copy)]
enum Mechanism {
    Plain,
    Login,
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Session {
    /// Connects, greets, secures (never downgrading STARTTLS) and authenticates, each stage
    /// within the relay's `timeout`. `password` comes from the relay's password source
    /// ([`crate::delivery::credentials::fetch`]).
    pub async fn open(relay: &Relay, password: Option<String>) -> Result<Session, Verdict> {
        let limit = relay.timeout;
        let hello = helo_name(relay);
        // Resolve first: whether a password may go in clear depends on where the host is.
        let peers = resolve(relay, limit).await?;
        let mut conn = connect(relay, &peers, limit).await?;
        if relay.tls == TlsMode::Tls {
            secure(&mut conn, relay, limit).await?;
        }
        let mut session = Session {
            conn,
            timeout: limit,
            broken: false,
            offers: Offers::default(),
            past_the_dot: Arc::default(),
        };
        match session.begin(relay, &hello, &peers, password).await {
            Ok(()) => Ok(session),
            Err(v) => {
                session.note_verdict(&v);
                session.close().await;
                Err(v)
            }
        }
    }

    /// Greeting, EHLO, STARTTLS and AUTH as the relay's settings say.
    async fn begin(
        &mut self,
        relay: &Relay,
        hello: &ClientId,
        peers: &[std::net::SocketAddr],
        password: Option<String>,
    ) -> Result<(), Verdict> {
        exchange(&mut self.conn, Stage::Greeting, self.timeout, b"").await?;
        self.ehlo(hello).await?;
        if relay.tls == TlsMode::Starttls {
            if !self.offers.has("STARTTLS") {
                return Err(Verdict::local(
                    Stage::Tls,
                    Outcome::RelayRefused,
                    "relay does not offer STARTTLS (tls = \"starttls\" never falls back to plain text)",
                ));
            }
            exchange(&mut self.conn, Stage::Tls, self.timeout, b"STARTTLS\r\n").await?;
            secure(&mut self.conn, relay, self.timeout).await?;
            // RFC 3207: forget what was offered in clear, and ask again.
            self.ehlo(hello).await?;
        }
        let Some(auth) = &relay.auth else {
            return Ok(());
        };
        if !self.conn.is_encrypted() {
            match crate::delivery::plaintext::allow(relay, peers) {
                Ok(crate::delivery::plaintext::PlainAuth::Loopback) => {}
                Ok(crate::delivery::plaintext::PlainAuth::Dangerous) => tracing::warn!(
                    relay = %relay.name,
                    "sending the password UNENCRYPTED over the network (dangerous_plaintext_auth = true)"
                ),
                Err(text) => {
                    return Err(Verdict::local(Stage::Auth, Outcome::RelayRefused, text));
                }
            }
        }
        let Some(password) = password else {
            return Err(Verdict::local(
                Stage::Auth,
                Outcome::Deferred,
                "no password: the relay's password source gave nothing",
            ));
        };
        if auth.mechanism.is_bearer() {
            return self
                .bearer_auth(relay, auth.mechanism, &auth.username, &password)
                .await;
        }
        self.auth(&auth.username, &password)
            .await
            .map_err(with_oauth2_hint)
    }

    /// AUTH XOAUTH2 or OAUTHBEARER with an access token, in one command with the initial
    /// response. A refused token comes back as a 334 challenge (the provider's error, in
    /// JSON); the client's answer to it brings the relay's final 5xx, which is the result.
    /// The commands are never logged: they carry the token.
    async fn bearer_auth(
        &mut self,
        relay: &Relay,
        mechanism: linkrelay_config::Mechanism,
        user: &str,
        token: &str,
    ) -> Result<(), Verdict> {
        use crate::delivery::sasl;
        let name = sasl::name(mechanism);
        if !self.offers.has_auth(name) {
            return Err(Verdict::local(
                Stage::Auth,
                Outcome::RelayRefused,
                format!("the relay does not offer AUTH {name} (auth = \"{mechanism}\")"),
            ));
        }
        let Some(command) = sasl::auth_command(mechanism, user, &relay.host, relay.port, token)
        else {
            return Err(Verdict::local(
                Stage::Auth,
                Outcome::Deferred,
                format!("{mechanism} is not a bearer mechanism"),
            ));
        };
        let reply = exchange(
            &mut self.conn,
            Stage::Auth,
            self.timeout,
            command.as_bytes(),
        )
        .await?;
        if reply.code / 100 == 2 {
            return Ok(());
        }
        let answer = sasl::after_refusal(mechanism).as_bytes();
        match exchange(&mut self.conn, Stage::Auth, self.timeout, answer).await {
            Err(v) => Err(v),
            Ok(reply) => {
                // A second challenge, or success after a refusal: out of step.
                self.broken = true;
                Err(Verdict::local(
                    Stage::Auth,
                    Outcome::Deferred,
                    format!(
                        "unexpected reply to AUTH {name}: {} {}",
                        reply.code,
                        reply.text()
                    ),
                ))
            }
        }
    }

    /// Says EHLO and keeps what the relay offers.
    async fn ehlo(&mut self, hello: &ClientId) -> Result<(), Verdict> {
        let command = Ehlo::new(hello.clone()).to_string();
        let reply = exchange(
            &mut self.conn,
            Stage::Greeting,
            self.timeout,
            command.as_bytes(),
        )
        .await?;
        self.offers = Offers::from_ehlo(&reply);
        Ok(())
    }

    /// AUTH PLAIN (RFC 4616, with the initial response) or, when only that is offered, AUTH
    /// LOGIN. The commands are never logged: they carry the password.
    async fn auth(&mut self, user: &str, password: &str) -> Result<(), Verdict> {
        let mechanism = if self.offers.has_auth("PLAIN") {
            Mechanism::Plain
        } else if self.offers.has_auth("LOGIN") {
            Mechanism::Login
        } else {
            return Err(Verdict::local(
                Stage::Auth,
                Outcome::Deferred,
                "the relay offers no AUTH mechanism linkrelay speaks (PLAIN, LOGIN)",
            ));
        };
        let steps = match mechanism {
            Mechanism::Plain => {
                let token = base64(format!("\0{user}\0{password}").as_bytes());
                vec![format!("AUTH PLAIN {token}\r\n")]
            }
            Mechanism::Login => vec![
                "AUTH LOGIN\r\n".to_owned(),
                format!("{}\r\n", base64(user.as_bytes())),
                format!("{}\r\n", base64(password.as_bytes())),
            ],
        };
        let last = steps.len() - 1;
        for (i, step) in steps.iter().enumerate() {
            let reply =
                exchange(&mut self.conn, Stage::Auth, self.timeout, step.as_bytes()).await?;
            let done = reply.code / 100 == 2;
            if done != (i == last) {
                // Done too soon, or a challenge after the password: out of step.
                self.broken = true;
                return Err(Verdict::local(
                    Stage::Auth,
                    Outcome::Deferred,
                    format!(
                        "unexpected reply to AUTH {mechanism:?}: {} {}",
                        reply.code,
                        reply.text()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the connection can take another transaction.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Set while [`Session::send`] has begun to write the end of the message's data (the final
    /// `.`) and waits for the relay's answer to it; cleared when the next `send` begins. From
    /// then on the relay may have taken the message: abandoning the send (dropping its future)
    /// cannot take it back, and would have the message sent again. The caller keeps this to
    /// know, when it wants to give up on a send, whether it still may.
    pub fn past_the_dot(&self) -> Arc<AtomicBool> {
        self.past_the_dot.clone()
    }

    /// Writes `command` and reads its reply at `stage`, noting what it means for the
    /// connection.
    async fn command(&mut self, stage: Stage, command: &str) -> Result<Reply, Verdict> {
        let r = exchange(&mut self.conn, stage, self.timeout, command.as_bytes()).await;
        self.note(&r);
        r
    }

    /// Reads the reply to a command written before (pipelining) at `stage`.
    async fn reply_to_earlier(&mut self, stage: Stage) -> Result<Reply, Verdict> {
        let r = exchange(&mut self.conn, stage, self.timeout, b"").await;
        self.note(&r);
        r
    }

    /// A RCPT's verdict from its reply, and whether the recipient was accepted; `Err` when
    /// the connection cannot go on.
    fn rcpt_verdict(r: Result<Reply, Verdict>) -> Result<(Verdict, bool), Verdict> {
        match r {
            Ok(reply) => Ok((Verdict::reply(Stage::Rcpt, &reply), true)),
            Err(v) if v.breaks_connection() => Err(v),
            Err(v) => Ok((v, false)),
        }
    }

    /// Notes what a stage's result means for the connection.
    fn note<T>(&mut self, result: &Result<T, Verdict>) {
        if let Err(v) = result {
            self.note_verdict(v);
        }
    }

    fn note_verdict(&mut self, v: &Verdict) {
        if v.breaks_connection() {
            self.broken = true;
        }
    }

    /// Ends an open transaction (after MAIL was accepted and something later went wrong) so
    /// that the connection can carry the next one; if that fails, the connection is done.
    async fn reset(&mut self) {
        if self.command(Stage::Mail, "RSET\r\n").await.is_err() {
            self.broken = true;
        }
    }

    /// Sends one message to `recipients`. An `Err` means the transaction as a whole did not
    /// happen (MAIL refused, connection lost before the data was accepted).
    ///
    /// The future may be dropped (the connection is then dropped too) until the end of the data
    /// goes out; after that the relay's answer must be waited for: see
    /// [`Session::past_the_dot`]. The data's time limit bounds that wait.
    ///
    /// `before_data` is awaited once the relay has said go ahead with the data (354) and before
    /// the data goes: the flusher makes the previous message's outcome durable there, so that
    /// its disk flush overlaps this message's MAIL, RCPT and DATA round trips, and yet no
    /// message is handed over before the one ahead of it is recorded.
    ///
    /// `dsn`, the notifications the sender asked for, goes to a relay that offers DSN
    /// (RFC 3461); to one that does not, the request is dropped (linkrelay writes no
    /// notifications itself).
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        dsn: Option<&Dsn>,
        message: &Message,
        before_data: impl Future<Output = ()>,
    ) -> Result<Transaction, Verdict> {
        self.past_the_dot.store(false, Ordering::SeqCst);
        let sender = if from.is_empty() {
            None
        } else {
            Some(from.parse::<Address>().map_err(|e| {
                Verdict::local(
                    Stage::Mail,
                    Outcome::Failed,
                    format!("bad envelope sender {from:?}: {e}"),
                )
            })?)
        };
        // 8-bit data to a relay without 8BITMIME goes as it is, undeclared (RFC 6152 would
        // have it converted, which changes the bytes a signature covers); a relay that never
        // offered BODY= refuses it (555, 501).
        let mut params = Vec::new();
        if message.is_8bit() && self.offers.has("8BITMIME") {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        // Non-ASCII addresses (RFC 6531) are declared where the relay takes them; elsewhere
        // they go as they are, and a relay that cannot take them says so.
        let utf8 = !from.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if utf8 && self.offers.has("SMTPUTF8") {
            params.push(MailParameter::SmtpUtfEight);
        }
        let dsn = dsn.filter(|_| self.offers.has("DSN"));
        params.extend(
            dsn.into_iter()
                .flat_map(Dsn::mail_params)
                .map(|p| MailParameter::Other {
                    keyword: p.keyword.to_owned(),
                    value: Some(p.value),
                }),
        );
        let rcpt = |addr: &Address, rcpt: &str| {
            let params = dsn.into_iter().flat_map(|d| d.rcpt_params(rcpt));
            Rcpt::new(
                addr.clone(),
                params
                    .map(|p| RcptParameter::Other {
                        keyword: p.keyword.to_owned(),
                        value: Some(p.value),
                    })
                    .collect(),
            )
            .to_string()
        };
        let mail = Mail::new(sender, params);
        let addresses: Vec<Result<Address, String>> = recipients
            .iter()
            .map(|r| r.parse::<Address>().map_err(|e| e.to_string()))
            .collect();
        let rcpts: Vec<Result<String, String>> = recipients
            .iter()
            .zip(addresses)
            .map(|(r, a)| a.map(|a| rcpt(&a, r)))
            .collect();
        if self.offers.has("PIPELINING") && rcpts.iter().any(Result::is_ok) {
            return self
                .send_pipelined(mail, recipients, &rcpts, message, before_data)
                .await;
        }
        self.command(Stage::Mail, &mail.to_string()).await?;

        let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(recipients.len());
        let mut accepted = Vec::new();
        for (rcpt, command) in recipients.iter().zip(rcpts) {
            let verdict = match command {
                Err(e) => bad_address(rcpt, &e),
                Ok(command) => {
                    let r = self.command(Stage::Rcpt, &command).await;
                    let (verdict, ok) = Self::rcpt_verdict(r)?;
                    if ok {
                        accepted.push(verdicts.len());
                    }
                    verdict
                }
            };
            verdicts.push((rcpt.clone(), verdict));
        }
        if accepted.is_empty() {
            // Nothing to send to: end the transaction so the connection stays usable.
            self.reset().await;
            return Ok(Transaction {
                recipients: verdicts,
            });
        }
        let r = self.command(Stage::Data, &Data.to_string()).await;
        self.data(r, before_data, message, verdicts, &accepted)
            .await
    }

    /// [`Session::send`] with PIPELINING: MAIL, each RCPT and DATA in one write, then their
    /// replies in order, so a message costs two round trips instead of three plus one per
    /// recipient. Every reply is read even after a refusal, to stay in step with the relay.
    async fn send_pipelined(
        &mut self,
        mail: Mail,
        recipients: &[String],
        rcpts: &[Result<String, String>],
        message: &Message,
        before_data: impl Future<Output = ()>,
    ) -> Result<Transaction, Verdict> {
        let mut batch = mail.to_string();
        for command in rcpts.iter().flatten() {
            batch.push_str(command);
        }
        batch.push_str(&Data.to_string());
        // Writes the whole batch, then reads the first reply (MAIL's).
        let mail_reply = self.command(Stage::Mail, &batch).await;
        if let Err(v) = &mail_reply
            && v.breaks_connection()
        {
            return Err(v.clone());
        }
        let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(recipients.len());
        let mut accepted = Vec::new();
        for (rcpt, command) in recipients.iter().zip(rcpts) {
            let verdict = match command {
                Err(e) => bad_address(rcpt, e),
                Ok(_) => {
                    let r = self.reply_to_earlier(Stage::Rcpt).await;
                    let (verdict, ok) = Self::rcpt_verdict(r)?;
                    if ok {
                        accepted.push(verdicts.len());
                    }
                    verdict
                }
            };
            verdicts.push((rcpt.clone(), verdict));
        }
        let data_reply = self.reply_to_earlier(Stage::Data).await;
        if let Err(v) = mail_reply {
            // The relay refused the sender; the RCPTs and DATA after it were refused too (503).
            if data_reply.is_ok() {
                // It said go ahead all the same: the connection is out of step with us.
                self.broken = true;
            }
            return Err(v);
        }
        if accepted.is_empty() {
            if data_reply.is_ok() {
                // A relay that takes DATA with no recipient (RFC 2920 says it must not): no
                // data will follow, so this connection is done.
                self.broken = true;
            } else if !self.broken {
                self.reset().await;
            }
            return Ok(Transaction {
                recipients: verdicts,
            });
        }
        self.data(data_reply, before_data, message, verdicts, &accepted)
            .await
    }

    /// After the relay's answer to DATA: a refusal ends the transaction (RSET) and is the
    /// result; a 354 waits for `before_data`, sends the data and gives each accepted recipient
    /// the final reply.
    async fn data(
        &mut self,
        data_reply: Result<Reply, Verdict>,
        before_data: impl Future<Output = ()>,
        message: &Message,
        mut verdicts: Vec<(String, Verdict)>,
        accepted: &[usize],
    ) -> Result<Transaction, Verdict> {
        if let Err(v) = data_reply {
            if !self.broken {
                self.reset().await;
            }
            return Err(v);
        }
        before_data.await;
        let limit = data_timeout(self.timeout, message.size());
        let conn = &mut self.conn;
        let ending = &self.past_the_dot;
        let sent = async {
            conn.send_data(message, ending).await?;
            conn.read_reply().await
        };
        let end = match tokio::time::timeout(limit, sent).await {
            Ok(Ok(reply)) => Verdict::reply(Stage::Message, &reply),
            Ok(Err(e)) => Verdict::wire(Stage::Message, &e),
            Err(_) => Verdict::timeout(Stage::Message, limit),
        };
        self.note_verdict(&end);
        for &i in accepted {
            verdicts[i].1 = end.clone();
        }
        Ok(Transaction {
            recipients: verdicts,
        })
    }

    /// The name the relay gave in its EHLO reply.
    pub fn server_name(&self) -> String {
        self.offers.name.clone()
    }

    /// Whether the connection is encrypted (implicit TLS or STARTTLS).
    pub fn is_encrypted(&self) -> bool {
        self.conn.is_encrypted()
    }

    /// Says EHLO again and returns what the relay offers on this connection, one extension
    /// per line as it wrote them (`SIZE 10485760`, `AUTH PLAIN LOGIN`, ...).
    pub async fn offers(&mut self, relay: &Relay) -> Result<Vec<String>, Verdict> {
        let r = self.ehlo(&helo_name(relay)).await;
        self.note(&r);
        r?;
        Ok(self.offers.extensions.clone())
    }

    /// MAIL FROM and RCPT TO, then RSET: the relay's answers say whether it would take mail
    /// for `to` from us, and nothing is sent. The RCPT verdict is `None` when MAIL was refused.
    pub async fn probe(&mut self, from: &str, to: &str) -> (Verdict, Option<Verdict>) {
        let sender = if from.is_empty() {
            None
        } else {
            match from.parse::<Address>() {
                Ok(a) => Some(a),
                Err(e) => {
                    let v = Verdict::local(
                        Stage::Mail,
                        Outcome::Failed,
                        format!("bad sender {from:?}: {e}"),
                    );
                    return (v, None);
                }
            }
        };
        let mail = match self
            .command(Stage::Mail, &Mail::new(sender, vec![]).to_string())
            .await
        {
            Ok(reply) => Verdict::reply(Stage::Mail, &reply),
            Err(v) => return (v, None),
        };
        let rcpt = match to.parse::<Address>() {
            Err(e) => Verdict::local(
                Stage::Rcpt,
                Outcome::Failed,
                format!("bad recipient {to:?}: {e}"),
            ),
            Ok(addr) => match self
                .command(Stage::Rcpt, &Rcpt::new(addr, vec![]).to_string())
                .await
            {
                Ok(reply) => Verdict::reply(Stage::Rcpt, &reply),
                Err(v) => v,
            },
        };
        if self.is_usable() {
            let _ = self.command(Stage::Data, "RSET\r\n").await;
        }
        (mail, Some(rcpt))
    }

    /// Says goodbye politely when the connection is healthy; errors do not matter any more.
    pub async fn close(mut self) {
        if self.is_usable() {
            let _ = exchange(
                &mut self.conn,
                Stage::Data,
                Duration::from_secs(2),
                b"QUIT\r\n",
            )
            .await;
        }
    }
}
