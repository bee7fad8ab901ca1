//! One SMTP session with a relay, driven with lettre's low-level connection so that every
//! recipient gets its own verdict (lettre's high-level `send` aborts at the first bad RCPT).

use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};
use linkrelay_config::{Relay, TlsMode};

use crate::outcome::{Outcome, Stage, classify};

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
    fn new(stage: Stage, code: Option<u16>, text: String) -> Self {
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

    fn from_error(stage: Stage, err: &lettre::transport::smtp::Error) -> Self {
        let code = err.status().map(u16::from);
        let text = match std::error::Error::source(err) {
            Some(source) if code.is_some() => source.to_string(),
            _ => err.to_string(),
        };
        let text = crate::tls_hint::explain(&text.replace(['\r', '\n'], " "));
        let mut v = Self::new(stage, code, text);
        if err.is_timeout() {
            v.text = format!("timed out at {}", stage.as_str());
        }
        v
    }

    /// "554 5.7.1 ... (at rcpt to)" for status output.
    pub fn describe(&self) -> String {
        match self.code {
            Some(code) => format!("{code} {}", self.text),
            None => format!("{} ({})", self.text, self.stage.as_str()),
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

async fn timed<T>(
    stage: Stage,
    limit: Duration,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Verdict> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Verdict::from_error(stage, &e)),
        Err(_) => Err(Verdict::local(
            stage,
            Outcome::Deferred,
            format!("timed out after {}s at {}", limit.as_secs(), stage.as_str()),
        )),
    }
}

impl Session {
    /// Connects, greets, secures (never downgrading STARTTLS) and authenticates.
    /// `password` comes from the relay's password source ([`crate::password::fetch`]).
    pub async fn open(relay: &Relay, password: Option<String>) -> Result<Session, Verdict> {
        let limit = relay.timeout;
        let hello = helo_name(relay);
        let implicit = match relay.tls {
            TlsMode::Tls => Some(tls_parameters(relay)?),
            _ => None,
        };
        // Resolve first: whether a password may go in clear depends on where the host is.
        let peers = resolve(relay, limit).await?;
        let mut conn = timed(
            Stage::Connect,
            limit,
            AsyncSmtpConnection::connect_tokio1(&peers[..], Some(limit), &hello, implicit, None),
        )
        .await?;
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
        if let Some(user) = &relay.username {
            if !conn.is_encrypted() {
                match crate::plaintext::allow(relay, &peers) {
                    Ok(crate::plaintext::PlainAuth::Loopback) => {}
                    Ok(crate::plaintext::PlainAuth::Dangerous) => tracing::warn!(
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
            let creds = Credentials::new(user.clone(), password);
            timed(
                Stage::Auth,
                limit,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await?;
        }
        Ok(Session {
            conn,
            timeout: limit,
        })
    }

    /// Whether the connection can take another transaction.
    pub fn is_usable(&self) -> bool {
        !self.conn.has_broken()
    }

    /// Sends one message to `recipients`. An `Err` means the transaction as a whole did not
    /// happen (MAIL refused, connection lost before the data was accepted).
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        data: &[u8],
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
        timed(
            Stage::Mail,
            limit,
            self.conn.command(Mail::new(sender, params)),
        )
        .await?;

        let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(recipients.len());
        let mut accepted = Vec::new();
        for rcpt in recipients {
            let verdict = match rcpt.parse::<Address>() {
                Err(e) => Verdict::local(
                    Stage::Rcpt,
                    Outcome::Failed,
                    format!("bad recipient address {rcpt:?}: {e}"),
                ),
                Ok(addr) => {
                    match timed(
                        Stage::Rcpt,
                        limit,
                        self.conn.command(Rcpt::new(addr, vec![])),
                    )
                    .await
                    {
                        Ok(reply) => {
                            accepted.push(verdicts.len());
                            let text = reply.message().collect::<Vec<_>>().join(" ");
                            Verdict::new(Stage::Rcpt, Some(u16::from(reply.code())), text)
                        }
                        Err(v) if v.code.is_none() => return Err(v), // connection trouble
                        Err(v) => v,
                    }
                }
            };
            verdicts.push((rcpt.clone(), verdict));
        }
        if accepted.is_empty() {
            // Nothing to send to: end the transaction so the connection stays usable.
            let _ = timed(Stage::Data, limit, self.conn.command("RSET\r\n")).await;
            return Ok(Transaction {
                recipients: verdicts,
            });
        }
        timed(Stage::Data, limit, self.conn.command(Data)).await?;
        // lettre writes CRLF . CRLF after the data: without this the message would gain an
        // empty last line.
        let body = data.strip_suffix(b"\r\n").unwrap_or(data);
        let end = match timed(Stage::Message, limit, self.conn.message(body)).await {
            Ok(reply) => {
                let text = reply.message().collect::<Vec<_>>().join(" ");
                Verdict::new(Stage::Message, Some(u16::from(reply.code())), text)
            }
            Err(v) => v,
        };
        for i in accepted {
            verdicts[i].1 = end.clone();
        }
        Ok(Transaction {
            recipients: verdicts,
        })
    }

    /// Says goodbye politely; errors do not matter any more.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.quit()).await;
    }
}

/// Runs a relay's `password_command` with `sh -c` and returns the first line of its output.
/// The password is never logged; a failing command is reported without its output.
pub async fn run_password_command(command: &str) -> Result<String, String> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run password_command: {e}"))?;
    if !out.status.success() {
        return Err(format!("password_command exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err("password_command printed nothing".into());
    }
    Ok(line)
}
