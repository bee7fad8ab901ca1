//! One SMTP session with a relay, driven with lettre's low-level connection so that every
//! recipient gets its own verdict (lettre's high-level `send` aborts at the first bad RCPT).

use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use linkrelay_config::{Relay, TlsMode};
use tokio::net::TcpStream;
use tracing::debug;

use crate::delivery::outcome::{Outcome, Stage, classify};

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

    fn from_error(stage: Stage, err: &lettre::transport::smtp::Error) -> Self {
        let code = err.status().map(u16::from);
        // A TLS failure during an implicit-TLS connect is a TLS problem, not a connect problem.
        let stage = if err.is_tls() { Stage::Tls } else { stage };
        let text = match std::error::Error::source(err) {
            Some(source) if code.is_some() => source.to_string(),
            _ => err.to_string(),
        };
        let text = crate::delivery::tls_hint::explain(&text.replace(['\r', '\n'], " "));
        let mut v = Self::new(stage, code, text);
        if err.is_timeout() {
            v.text = "timed out".into();
        }
        v
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
    conn: AsyncSmtpConnection,
    timeout: Duration,
    /// Set once the connection is out of step with the server (transport trouble, a timeout
    /// in the middle of a command, a 421): it must not carry another command. lettre's own
    /// flag only covers the errors of its high-level calls.
    broken: bool,
    /// The relay offers PIPELINING (RFC 2920): MAIL, the RCPTs and DATA go in one write.
    pipelining: bool,
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

fn tls_parameters(relay: &Relay) -> Result<TlsParameters, Verdict> {
    let mut builder = TlsParameters::builder(relay.host.clone());
    if let Some(ca) = &relay.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            Verdict::local(
                Stage::Tls,
                Outcome::Deferred,
                format!("cannot read ca_file {}: {e}", ca.display()),
            )
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            Verdict::local(
                Stage::Tls,
                Outcome::Deferred,
                format!("bad ca_file {}: {e}", ca.display()),
            )
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| Verdict::from_error(Stage::Tls, &e))
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

/// A reply's text, its lines joined by spaces.
fn reply_text(reply: &Response) -> String {
    reply.message().collect::<Vec<_>>().join(" ")
}

/// The verdict of a recipient whose address does not parse: it fails, nothing is asked.
fn bad_address(rcpt: &str, error: &str) -> Verdict {
    Verdict::local(
        Stage::Rcpt,
        Outcome::Failed,
        format!("bad recipient address {rcpt:?}: {error}"),
    )
}

/// Runs one stage with a time limit. lettre's async connection has no timeout of its own
/// beyond the TCP connect, so every stage is bounded here.
async fn timed<T>(
    stage: Stage,
    limit: Duration,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Verdict> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Verdict::from_error(stage, &e)),
        Err(_) => Err(Verdict::timeout(stage, limit)),
    }
}

/// How long the message data may take: the stage timeout plus one second per 16 KiB, so that
/// a large message on a slow link is not cut off (at least 16 KiB/s is expected).
pub fn data_timeout(limit: Duration, size: usize) -> Duration {
    limit + Duration::from_secs((size / 16_384) as u64)
}

impl Session {
    /// Connects, greets, secures (never downgrading STARTTLS) and authenticates, each stage
    /// within the relay's `timeout`. `password` comes from the relay's password source
    /// ([`crate::delivery::credentials::fetch`]).
    pub async fn open(relay: &Relay, password: Option<String>) -> Result<Session, Verdict> {
        let limit = relay.timeout;
        let hello = helo_name(relay);
        let host = relay.host.as_str();
        // Resolve first: whether a password may go in clear depends on where the host is.
        let peers = resolve(relay, limit).await?;
        let mut conn = match relay.tls {
            TlsMode::Tls => {
                // Connect, handshake, greeting and EHLO happen in one call of lettre's.
                let params = tls_parameters(relay)?;
                timed(
                    Stage::Connect,
                    limit,
                    AsyncSmtpConnection::connect_tokio1(
                        &peers[..],
                        Some(limit),
                        &hello,
                        Some(params),
                        None,
                    ),
                )
                .await?
            }
            TlsMode::Starttls | TlsMode::None => {
                let tcp = match tokio::time::timeout(limit, TcpStream::connect(&peers[..])).await {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(e)) => {
                        return Err(Verdict::local(
                            Stage::Connect,
                            Outcome::Deferred,
                            format!("cannot connect to {host}:{}: {e}", relay.port),
                        ));
                    }
                    Err(_) => return Err(Verdict::timeout(Stage::Connect, limit)),
                };
                // lettre writes the data and the final dot separately: with Nagle's algorithm
                // the dot waits for the server's delayed ACK, 40 ms per message.
                if let Err(e) = tcp.set_nodelay(true) {
                    debug!(error = %e, "cannot set TCP_NODELAY");
                }
                timed(
                    Stage::Greeting,
                    limit,
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello),
                )
                .await?
            }
        };
        if relay.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(Verdict::local(
                    Stage::Tls,
                    Outcome::RelayRefused,
                    "relay does not offer STARTTLS (tls = \"starttls\" never falls back to plain text)",
                ));
            }
            let params = tls_parameters(relay)?;
            timed(Stage::Tls, limit, conn.starttls(params, &hello)).await?;
        }
        // lettre keeps only the EHLO keywords it knows, and PIPELINING is not one of them: ask
        // again (RFC 5321 allows EHLO at any point; before AUTH it changes nothing).
        let pipelining = match timed(
            Stage::Greeting,
            limit,
            conn.command(Ehlo::new(hello.clone())),
        )
        .await
        {
            Ok(reply) => reply.message().skip(1).any(|kw| {
                kw.split_whitespace()
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
            }),
            Err(v) if v.breaks_connection() => {
                conn.abort().await;
                return Err(v);
            }
            Err(_) => false,
        };
        if let Some(auth) = &relay.auth {
            if !conn.is_encrypted() {
                match crate::delivery::plaintext::allow(relay, &peers) {
                    Ok(crate::delivery::plaintext::PlainAuth::Loopback) => {}
                    Ok(crate::delivery::plaintext::PlainAuth::Dangerous) => tracing::warn!(
                        relay = %relay.name,
                        "sending the password UNENCRYPTED over the network (dangerous_plaintext_auth = true)"
                    ),
                    Err(text) => {
                        conn.abort().await;
                        return Err(Verdict::local(Stage::Auth, Outcome::RelayRefused, text));
                    }
                }
            }
            let Some(password) = password else {
                conn.abort().await;
                return Err(Verdict::local(
                    Stage::Auth,
                    Outcome::Deferred,
                    "no password: the relay's password source gave nothing",
                ));
            };
            let creds = Credentials::new(auth.username.clone(), password);
            let mechanisms: &[Mechanism] = match auth.mechanism {
                linkrelay_config::Mechanism::Password => &[Mechanism::Plain, Mechanism::Login],
                linkrelay_config::Mechanism::Xoauth2 => &[Mechanism::Xoauth2],
                linkrelay_config::Mechanism::OAuthBearer => &[],
            };
            timed(Stage::Auth, limit, conn.auth(mechanisms, &creds)).await?;
        }
        Ok(Session {
            conn,
            timeout: limit,
            broken: false,
            pipelining,
        })
    }

    /// Whether the connection can take another transaction.
    pub fn is_usable(&self) -> bool {
        !self.broken && !self.conn.has_broken()
    }

    /// A RCPT's verdict from its reply, and whether the recipient was accepted; `Err` when
    /// the connection cannot go on.
    fn rcpt_verdict(&mut self, r: Result<Response, Verdict>) -> Result<(Verdict, bool), Verdict> {
        self.note(&r);
        match r {
            Ok(reply) => Ok((
                Verdict::new(
                    Stage::Rcpt,
                    Some(u16::from(reply.code())),
                    reply_text(&reply),
                ),
                true,
            )),
            Err(v) if v.breaks_connection() => Err(v),
            Err(v) => Ok((v, false)),
        }
    }

    /// Notes what a stage's result means for the connection.
    fn note<T>(&mut self, result: &Result<T, Verdict>) {
        if let Err(v) = result
            && v.breaks_connection()
        {
            self.broken = true;
        }
    }

    /// Ends an open transaction (after MAIL was accepted and something later went wrong) so
    /// that the connection can carry the next one; if that fails, the connection is done.
    async fn reset(&mut self) {
        let r = timed(Stage::Mail, self.timeout, self.conn.command("RSET\r\n")).await;
        if r.is_err() {
            self.broken = true;
        }
    }

    /// Sends one message to `recipients`. An `Err` means the transaction as a whole did not
    /// happen (MAIL refused, connection lost before the data was accepted).
    ///
    /// `before_data` is awaited once the relay has said go ahead with the data (354) and before
    /// the data goes: the flusher makes the previous message's outcome durable there, so that
    /// its disk flush overlaps this message's MAIL, RCPT and DATA round trips, and yet no
    /// message is handed over before the one ahead of it is recorded.
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        data: &[u8],
        before_data: impl Future<Output = ()>,
    ) -> Result<Transaction, Verdict> {
        let limit = self.timeout;
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
        let mut params = Vec::new();
        if !data.is_ascii() {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        let mail = Mail::new(sender, params);
        let addresses: Vec<Result<Address, String>> = recipients
            .iter()
            .map(|r| r.parse::<Address>().map_err(|e| e.to_string()))
            .collect();
        if self.pipelining && addresses.iter().any(Result::is_ok) {
            return self
                .send_pipelined(mail, recipients, &addresses, data, before_data)
                .await;
        }
        let r = timed(Stage::Mail, limit, self.conn.command(mail)).await;
        self.note(&r);
        r?;

        let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(recipients.len());
        let mut accepted = Vec::new();
        for (rcpt, addr) in recipients.iter().zip(addresses) {
            let verdict = match addr {
                Err(e) => bad_address(rcpt, &e),
                Ok(addr) => {
                    let r = timed(
                        Stage::Rcpt,
                        limit,
                        self.conn.command(Rcpt::new(addr, vec![])),
                    )
                    .await;
                    let (verdict, ok) = self.rcpt_verdict(r)?;
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
        let r = timed(Stage::Data, limit, self.conn.command(Data)).await;
        self.note(&r);
        self.data(r, before_data, data, verdicts, &accepted).await
    }

    /// [`Session::send`] with PIPELINING: MAIL, each RCPT and DATA in one write, then their
    /// replies in order, so a message costs two round trips instead of three plus one per
    /// recipient. Every reply is read even after a refusal, to stay in step with the relay.
    async fn send_pipelined(
        &mut self,
        mail: Mail,
        recipients: &[String],
        addresses: &[Result<Address, String>],
        data: &[u8],
        before_data: impl Future<Output = ()>,
    ) -> Result<Transaction, Verdict> {
        let limit = self.timeout;
        let mut batch = mail.to_string();
        for addr in addresses.iter().flatten() {
            batch.push_str(&Rcpt::new(addr.clone(), vec![]).to_string());
        }
        batch.push_str(&Data.to_string());
        // Writes the whole batch, then reads the first reply (MAIL's).
        let mail_reply = timed(Stage::Mail, limit, self.conn.command(batch)).await;
        self.note(&mail_reply);
        if let Err(v) = &mail_reply
            && v.breaks_connection()
        {
            return Err(v.clone());
        }
        let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(recipients.len());
        let mut accepted = Vec::new();
        for (rcpt, addr) in recipients.iter().zip(addresses) {
            let verdict = match addr {
                Err(e) => bad_address(rcpt, e),
                Ok(_) => {
                    let r = timed(Stage::Rcpt, limit, self.conn.read_response()).await;
                    let (verdict, ok) = self.rcpt_verdict(r)?;
                    if ok {
                        accepted.push(verdicts.len());
                    }
                    verdict
                }
            };
            verdicts.push((rcpt.clone(), verdict));
        }
        let data_reply = timed(Stage::Data, limit, self.conn.read_response()).await;
        self.note(&data_reply);
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
        self.data(data_reply, before_data, data, verdicts, &accepted)
            .await
    }

    /// After the relay's answer to DATA: a refusal ends the transaction (RSET) and is the
    /// result; a 354 waits for `before_data`, sends the data and gives each accepted recipient
    /// the final reply.
    async fn data(
        &mut self,
        data_reply: Result<Response, Verdict>,
        before_data: impl Future<Output = ()>,
        data: &[u8],
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
        let r = timed(
            Stage::Message,
            data_timeout(self.timeout, data.len()),
            self.conn.message(without_last_eol(data)),
        )
        .await;
        self.note(&r);
        let end = match r {
            Ok(reply) => {
                let text = reply_text(&reply);
                Verdict::new(Stage::Message, Some(u16::from(reply.code())), text)
            }
            Err(v) => v,
        };
        for &i in accepted {
            verdicts[i].1 = end.clone();
        }
        Ok(Transaction {
            recipients: verdicts,
        })
    }

    /// The name the relay gave in its EHLO reply.
    pub fn server_name(&self) -> String {
        self.conn.server_info().name().to_string()
    }

    /// Whether the connection is encrypted (implicit TLS or STARTTLS).
    pub fn is_encrypted(&self) -> bool {
        self.conn.is_encrypted()
    }

    /// Says EHLO again and returns what the relay offers on this connection, one extension
    /// per line as it wrote them (`SIZE 10485760`, `AUTH PLAIN LOGIN`, ...).
    pub async fn offers(&mut self, relay: &Relay) -> Result<Vec<String>, Verdict> {
        let ehlo = lettre::transport::smtp::commands::Ehlo::new(helo_name(relay));
        let reply = timed(Stage::Greeting, self.timeout, self.conn.command(ehlo)).await?;
        Ok(reply.message().skip(1).map(str::to_string).collect())
    }

    /// MAIL FROM and RCPT TO, then RSET: the relay's answers say whether it would take mail
    /// for `to` from us, and nothing is sent. The RCPT verdict is `None` when MAIL was refused.
    pub async fn probe(&mut self, from: &str, to: &str) -> (Verdict, Option<Verdict>) {
        let limit = self.timeout;
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
        let mail = match timed(
            Stage::Mail,
            limit,
            self.conn.command(Mail::new(sender, vec![])),
        )
        .await
        {
            Ok(reply) => {
                let text = reply_text(&reply);
                Verdict::new(Stage::Mail, Some(u16::from(reply.code())), text)
            }
            Err(v) => return (v, None),
        };
        let rcpt = match to.parse::<Address>() {
            Err(e) => Verdict::local(
                Stage::Rcpt,
                Outcome::Failed,
                format!("bad recipient {to:?}: {e}"),
            ),
            Ok(addr) => match timed(
                Stage::Rcpt,
                limit,
                self.conn.command(Rcpt::new(addr, vec![])),
            )
            .await
            {
                Ok(reply) => {
                    let text = reply_text(&reply);
                    Verdict::new(Stage::Rcpt, Some(u16::from(reply.code())), text)
                }
                Err(v) => v,
            },
        };
        let _ = timed(Stage::Data, limit, self.conn.command("RSET\r\n")).await;
        (mail, Some(rcpt))
    }

    /// Says goodbye politely when the connection is healthy; errors do not matter any more.
    pub async fn close(mut self) {
        if self.is_usable() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.quit()).await;
        }
    }
}

/// The message without its final line end. lettre ends the data with `CRLF . CRLF` whatever
/// the message ends with, and our messages end with CRLF: passed whole, every message would
/// reach the relay with a blank line added at its end (a patch, a signed part, changed).
fn without_last_eol(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\r\n")
        .or_else(|| data.strip_suffix(b"\n"))
        .unwrap_or(data)
}

#[cfg(test)]
mod tests {
    use super::without_last_eol;

    #[test]
    fn the_final_line_end_is_left_to_the_data_terminator() {
        assert_eq!(without_last_eol(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(without_last_eol(b"a\r\n\r\n"), b"a\r\n");
        assert_eq!(without_last_eol(b"a\nb\n"), b"a\nb");
        assert_eq!(without_last_eol(b"no end"), b"no end");
        assert_eq!(without_last_eol(b""), b"");
    }
}
