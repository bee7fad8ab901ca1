//! A scripted SMTP relay for tests: enough RFC 5321 for a real client (lettre), with faults at
//! any stage, an ISP-style "is this client on my network?" check, and a record of what it
//! accepted.
//!
//! The relay listens on 127.0.0.1 on a free port. It speaks: a 220 greeting; EHLO (multi-line:
//! `250-<name>`, `250-SIZE 10485760`, `250-8BITMIME` unless [`RelayScript::without_8bitmime`],
//! `250-AUTH PLAIN LOGIN` when credentials are configured (or fewer mechanisms:
//! [`RelayScript::auth_mechanisms`]), `250 HELP`) and HELO; AUTH PLAIN and AUTH LOGIN, each
//! with or without an initial response; MAIL FROM (ESMTP parameters such as `SIZE=` and
//! `BODY=8BITMIME` are accepted; a `SIZE=` over the limit gets 552); RCPT TO; DATA with
//! dot-unstuffing up to the lone ".";
//! RSET; NOOP; HELP; QUIT. Anything else gets `502 5.5.2 Error: command not recognized`.
//! PIPELINING is offered only with [`RelayScript::pipelining`] (commands are read in order
//! either way, so a pipelining client is served the same). With [`RelayScript::tls`] it speaks TLS: STARTTLS (offered in EHLO,
//! then the handshake, then a fresh session as RFC 3207 says) or TLS from the first byte, with
//! a certificate from a [`crate::tls::TestCa`]. Without TLS, the answer to STARTTLS can be
//! scripted ([`RelayScript::starttls`]): a 220 is then followed by a hang-up, which the client
//! sees as a failed handshake. Reply texts follow Postfix's.
//!
//! Every line the client sends outside the data is recorded with whether it came over TLS
//! ([`ScriptedRelay::commands`]), so a test can prove what never went out in clear.
//!
//! Each command reads the current [`RelayScript`], so [`ScriptedRelay::set_script`] takes effect
//! from the next command on, in open connections too.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// The message size limit the relay advertises (`SIZE`) and enforces by default.
pub const MAX_MESSAGE_SIZE: usize = 10_485_760;

/// The longest command line the relay reads; a longer one ends the session with a 500.
const MAX_COMMAND_LINE: usize = 4096;

/// What the relay does at a stage instead of its normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this code and text. A text with `"\n"` is sent as a multi-line reply
    /// (`code-first`, ..., `code last`). A 421 also closes the connection, as servers do.
    /// At stages that can succeed (EHLO, AUTH, MAIL, RCPT, after the dot) a 2xx counts as
    /// success; a 3xx to DATA starts the data phase.
    Reply(u16, String),
    /// Drop the connection without answering (an orderly close: FIN).
    Close,
    /// Reset the connection without answering (an abortive close: RST, as a crashing relay or
    /// a middlebox does).
    Reset,
    /// Stop answering (keep reading and discarding) until the peer closes the connection.
    Stall,
    /// Send these bytes verbatim instead of an answer (for malformed replies: no code, a bad
    /// code, a missing line end, a multi-line reply that never ends), then go on reading
    /// commands.
    Raw(String),
    /// Send `first`, then `then` over and over for as long as the client takes it: a hostile
    /// relay's reply that never ends (`220-hello` and a line with no end, or endless short
    /// lines). The session ends when the client stops reading or hangs up. See
    /// [`Fault::endless`].
    Endless {
        /// Sent once.
        first: String,
        /// Sent again and again after `first`.
        then: String,
    },
}

impl Fault {
    /// `Fault::Reply(code, text.to_owned())`.
    pub fn reply(code: u16, text: &str) -> Fault {
        Fault::Reply(code, text.to_owned())
    }

    /// `Fault::Endless { first, then }`.
    pub fn endless(first: &str, then: &str) -> Fault {
        Fault::Endless {
            first: first.to_owned(),
            then: then.to_owned(),
        }
    }

    fn is_success(&self) -> bool {
        matches!(self, Fault::Reply(code, _) if (200..300).contains(code))
    }
}

/// A gate a test opens when it is ready: a relay holding an answer at it waits until then
/// ([`RelayScript::answer_gate`]). Clones are the same gate.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate: what waits at it goes on, and nothing waits at it any more.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the gate is open.
    async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Whether and how the relay speaks TLS.
#[derive(Clone, Default)]
pub enum RelayTls {
    /// Plain text only; STARTTLS is not offered (`502` if tried).
    #[default]
    Off,
    /// STARTTLS offered in EHLO; this certificate after it.
    Starttls(Arc<ServerConfig>),
    /// TLS from the first byte ("implicit TLS", port 465 style).
    Implicit(Arc<ServerConfig>),
}

impl fmt::Debug for RelayTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RelayTls::Off => "Off",
            RelayTls::Starttls(_) => "Starttls",
            RelayTls::Implicit(_) => "Implicit",
        })
    }
}

/// A line the client sent (a command or an AUTH response), and whether it came over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLine {
    /// Whether the connection was encrypted when it came.
    pub tls: bool,
    /// The line without its terminator (lossy UTF-8).
    pub line: String,
    /// Whether it had already arrived when the relay went to read it: sent along with the
    /// line before it, without waiting for that line's reply (pipelining).
    pub pipelined: bool,
}

/// A per-recipient answer: the fault for an address, or `None` for the normal answer.
pub type RcptScript = Arc<dyn Fn(&str) -> Option<Fault> + Send + Sync>;

/// The ISP's network check of [`RelayScript::allow_client`].
pub type ClientCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// How the relay behaves; [`RelayScript::default`] accepts everything from anyone without AUTH.
#[derive(Clone)]
pub struct RelayScript {
    /// The server's name, used in the greeting and as the first EHLO line.
    pub name: String,
    /// Instead of the 220 greeting. After a non-2xx greeting every command but QUIT gets 503.
    pub greeting: Option<Fault>,
    /// Instead of the answer to EHLO or HELO.
    pub ehlo: Option<Fault>,
    /// When set, EHLO offers STARTTLS and the STARTTLS command gets this answer. A 220 is
    /// followed by closing the connection: the relay has no TLS, so the client's handshake fails.
    pub starttls: Option<Fault>,
    /// Instead of the final answer to AUTH (after the credentials were read).
    pub auth: Option<Fault>,
    /// Instead of the answer to MAIL FROM (after the syntax and sequence checks).
    pub mail: Option<Fault>,
    /// Per recipient address (as given between `<>`): instead of the answer to its RCPT TO.
    pub rcpt: RcptScript,
    /// Instead of the 354 answer to DATA.
    pub data: Option<Fault>,
    /// Instead of the 250 answer after the final dot; the message is recorded only if this
    /// is a 2xx reply, or if `record_before_after_dot` is set.
    pub after_dot: Option<Fault>,
    /// Record the message as soon as its data is in, whatever `after_dot` does: with a Close,
    /// Reset, Stall or 4xx there, this is a relay that took the mail and then lost the
    /// connection or the answer (the client must assume it was not sent, and sends it again).
    pub record_before_after_dot: bool,
    /// Hold the answer after the final dot until this gate opens. The message is recorded as
    /// soon as its data is in (as with `record_before_after_dot`), so that a test can wait for
    /// it ([`ScriptedRelay::wait_for`]) and act while the client waits for the answer.
    pub answer_gate: Option<Gate>,
    /// The ISP's network check, asked at each RCPT TO: when it says false, the recipient gets
    /// Postfix's `554 5.7.1 <rcpt>: Recipient address rejected: Relay access denied`.
    pub allow_client: ClientCheck,
    /// When set, AUTH PLAIN and LOGIN are offered and checked against this (user, password),
    /// and MAIL without a successful AUTH gets `530 5.7.0 Authentication required`.
    pub credentials: Option<(String, String)>,
    /// TLS: off, STARTTLS, or implicit.
    pub tls: RelayTls,
    /// EHLO offers PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// When set, EHLO does not offer 8BITMIME and a MAIL FROM with a `BODY=` parameter gets
    /// this answer instead (Postfix with the extension off says `555 5.5.4 Unsupported
    /// option: BODY=8BITMIME`; other servers say 501). 8-bit data is taken as it comes.
    pub without_8bitmime: Option<Fault>,
    /// The message size limit advertised (`SIZE`) and enforced: [`MAX_MESSAGE_SIZE`] unless a
    /// test sends more.
    pub max_message_size: usize,
    /// The AUTH mechanisms offered (and taken) when there are credentials: `PLAIN LOGIN`
    /// unless a test wants fewer. Another gets `504`.
    pub auth_mechanisms: String,
    /// More extensions EHLO offers (`DSN`, `SMTPUTF8`); their parameters on MAIL and RCPT
    /// are taken as any parameter is, and recorded with the commands.
    pub offers: Vec<String>,
}

impl Default for RelayScript {
    fn default() -> Self {
        RelayScript {
            name: "relay.test".to_owned(),
            greeting: None,
            ehlo: None,
            starttls: None,
            auth: None,
            mail: None,
            rcpt: Arc::new(|_| None),
            data: None,
            after_dot: None,
            record_before_after_dot: false,
            answer_gate: None,
            allow_client: Arc::new(|| true),
            credentials: None,
            tls: RelayTls::Off,
            pipelining: false,
            without_8bitmime: None,
            max_message_size: MAX_MESSAGE_SIZE,
            auth_mechanisms: "PLAIN LOGIN".to_owned(),
            offers: Vec::new(),
        }
    }
}

impl fmt::Debug for RelayScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayScript")
            .field("name", &self.name)
            .field("greeting", &self.greeting)
            .field("ehlo", &self.ehlo)
            .field("starttls", &self.starttls)
            .field("auth", &self.auth)
            .field("mail", &self.mail)
            .field("rcpt", &"<fn>")
            .field("data", &self.data)
            .field("after_dot", &self.after_dot)
            .field("record_before_after_dot", &self.record_before_after_dot)
            .field("answer_gate", &self.answer_gate.is_some())
            .field("allow_client", &(self.allow_client)())
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .field("tls", &self.tls)
            .field("pipelining", &self.pipelining)
            .field("without_8bitmime", &self.without_8bitmime)
            .field("max_message_size", &self.max_message_size)
            .field("auth_mechanisms", &self.auth_mechanisms)
            .field("offers", &self.offers)
            .finish()
    }
}

impl RelayScript {
    /// The default script with this server name.
    pub fn named(name: &str) -> Self {
        RelayScript {
            name: name.to_owned(),
            ..RelayScript::default()
        }
    }

    /// Require AUTH with these credentials.
    pub fn with_credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Answer RCPT TO with `fault(address)` when it returns one.
    pub fn with_rcpt<F>(mut self, fault: F) -> Self
    where
        F: Fn(&str) -> Option<Fault> + Send + Sync + 'static,
    {
        self.rcpt = Arc::new(fault);
        self
    }

    /// Use `check` as the ISP's network check (e.g. a closure reading an `AtomicBool` that the
    /// test flips when it changes the fake link).
    pub fn with_allow_client<F>(mut self, check: F) -> Self
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        self.allow_client = Arc::new(check);
        self
    }

    /// Offer STARTTLS with this certificate.
    pub fn with_starttls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = RelayTls::Starttls(config);
        self
    }

    /// Speak TLS from the first byte with this certificate.
    pub fn with_implicit_tls(mut self, config: Arc<ServerConfig>) -> Self {
        self.tls = RelayTls::Implicit(config);
        self
    }

    /// Hold the answer after each message's final dot until `gate` opens
    /// ([`RelayScript::answer_gate`]).
    pub fn with_answer_gate(mut self, gate: Gate) -> Self {
        self.answer_gate = Some(gate);
        self
    }

    /// Refuse every recipient with "Relay access denied", as an ISP's relay does for a client
    /// on another ISP's network.
    pub fn refusing_relay(self) -> Self {
        self.with_allow_client(|| false)
    }
}

/// A message the relay accepted (its final dot was answered with a 2xx).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// The argument of the last EHLO/HELO.
    pub helo: String,
    /// The MAIL FROM address, without `<>` (empty for the null sender).
    pub from: String,
    /// The accepted RCPT TO addresses, in order.
    pub rcpts: Vec<String>,
    /// The data, dot-unstuffed, with line endings as sent, without the final dot line.
    pub data: Vec<u8>,
    /// The user that authenticated on this connection, if any.
    pub authenticated_as: Option<String>,
    /// Whether the message came over TLS.
    pub tls: bool,
}

impl Received {
    /// The data as text (lossy).
    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

struct Shared {
    script: Mutex<RelayScript>,
    received: Mutex<Vec<Received>>,
    received_count: watch::Sender<usize>,
    connections: AtomicUsize,
    queue_ids: AtomicU64,
    lines: Mutex<Vec<ClientLine>>,
    /// Bytes written by [`Fault::Endless`], all sessions together.
    endless_bytes: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn script(&self) -> RelayScript {
        lock(&self.script).clone()
    }
}

/// A running scripted relay; dropping it stops the listener and every open connection.
pub struct ScriptedRelay {
    /// Where it listens (127.0.0.1 and a free port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for ScriptedRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedRelay")
            .field("addr", &self.addr)
            .field("connections", &self.connections())
            .field("received", &lock(&self.shared.received).len())
            .finish_non_exhaustive()
    }
}

impl ScriptedRelay {
    /// Listen on 127.0.0.1:0 and serve `script` (needs a tokio runtime).
    pub async fn start(script: RelayScript) -> anyhow::Result<ScriptedRelay> {
        ScriptedRelay::start_at("127.0.0.1:0".parse()?, script).await
    }

    /// Listen on `addr` (port 0: a free one) and serve `script`.
    pub async fn start_at(addr: SocketAddr, script: RelayScript) -> anyhow::Result<ScriptedRelay> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the scripted relay to {addr}"))?;
        ScriptedRelay::serve(listener, script)
    }

    /// Serve `script` on a listener made elsewhere (e.g. in another network namespace with
    /// [`crate::netns::pair::NetnsPair::listen_in_relay`]); it must be non-blocking.
    pub fn start_with(
        listener: std::net::TcpListener,
        script: RelayScript,
    ) -> anyhow::Result<ScriptedRelay> {
        let listener = TcpListener::from_std(listener).context("adopting the listener")?;
        ScriptedRelay::serve(listener, script)
    }

    /// [`ScriptedRelay::start_with`], arguments the other way round (for a listener bound on a
    /// test network namespace's loopback, [`crate::netns::NetNs::loopback_listener`]).
    pub fn start_on(
        script: RelayScript,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<ScriptedRelay> {
        ScriptedRelay::start_with(listener, script)
    }

    fn serve(listener: TcpListener, script: RelayScript) -> anyhow::Result<ScriptedRelay> {
        let addr = listener
            .local_addr()
            .context("reading the scripted relay's address")?;
        let (received_count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
            received_count,
            connections: AtomicUsize::new(0),
            queue_ids: AtomicU64::new(1),
            lines: Mutex::new(Vec::new()),
            endless_bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(ScriptedRelay { addr, shared, task })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The messages accepted so far, in order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Every line clients sent outside the message data (commands, AUTH responses), in order,
    /// with whether it came over TLS.
    pub fn commands(&self) -> Vec<ClientLine> {
        lock(&self.shared.lines).clone()
    }

    /// How many bytes [`Fault::Endless`] replies have sent so far (the client took them, or
    /// they wait in the socket buffers).
    pub fn endless_bytes(&self) -> u64 {
        self.shared.endless_bytes.load(Ordering::SeqCst)
    }

    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Replace the script, from the next command (and connection) on.
    pub fn set_script(&self, script: RelayScript) {
        *lock(&self.shared.script) = script;
    }

    /// Wait until at least `count` messages were accepted and return them all; after
    /// `timeout`, fail with what was received.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let mut rx = self.shared.received_count.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= count)).await;
        let received = self.received();
        match reached {
            Ok(Ok(_)) => Ok(received),
            // (One lock at a time: a guard held across the format arguments would deadlock.)
            _ => bail!(
                "the relay at {} accepted {} of the {count} expected messages within {timeout:?} \
                 ({} connections): {received:#?}",
                self.addr,
                received.len(),
                self.connections(),
            ),
        }
    }
}

impl Drop for ScriptedRelay {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every session.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    sessions.spawn(async move {
                        if let Err(e) = session(stream, shared).await {
                            tracing::debug!("scripted relay: session with {peer} ended: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("scripted relay: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Whether a session goes on after a step.
enum Flow {
    Continue,
    End,
    /// STARTTLS was accepted: the TLS handshake comes next.
    StartTls(Arc<ServerConfig>),
}

/// A byte stream the relay talks over: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Io {
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
    tls: bool,
    lines: Option<Arc<Shared>>,
    /// The TCP socket, to make [`Fault::Reset`] an abortive close (RST).
    socket: Option<std::os::fd::OwnedFd>,
    /// Set once the connection was reset: nothing more is written.
    reset: bool,
}

impl Io {
    fn new(stream: Box<dyn Stream>, tls: bool, shared: Arc<Shared>) -> Io {
        let (reader, writer) = tokio::io::split(stream);
        Io {
            reader: BufReader::new(reader),
            writer,
            tls,
            lines: Some(shared),
            socket: None,
            reset: false,
        }
    }

    fn writer(&mut self) -> anyhow::Result<&mut WriteHalf<Box<dyn Stream>>> {
        if self.reset {
            bail!("the connection was reset");
        }
        Ok(&mut self.writer)
    }

    /// The stream back, for the TLS handshake; an error if the client sent more after
    /// STARTTLS (RFC 3207: such bytes would be injected into the TLS session).
    fn into_stream(self) -> anyhow::Result<Box<dyn Stream>> {
        if !self.reader.buffer().is_empty() {
            bail!("the client sent data after STARTTLS before the handshake");
        }
        Ok(self.reader.into_inner().unsplit(self.writer))
    }

    async fn reply(&mut self, code: u16, text: &str) -> anyhow::Result<()> {
        let mut out = String::new();
        let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            if line.is_empty() && i == last {
                out.push_str(&format!("{code}\r\n"));
            } else {
                out.push_str(&format!("{code}{sep}{line}\r\n"));
            }
        }
        self.writer()?
            .write_all(out.as_bytes())
            .await
            .context("writing a reply")
    }

    async fn fault(&mut self, fault: &Fault) -> anyhow::Result<Flow> {
        match fault {
            Fault::Reply(code, text) => {
                self.reply(*code, text).await?;
                Ok(if *code == 421 {
                    Flow::End
                } else {
                    Flow::Continue
                })
            }
            Fault::Close => Ok(Flow::End),
            Fault::Reset => {
                // Linger 0 makes the close an RST; the socket closes, with the RST, when the
                // session ends and drops its stream (which does not shut down first).
                if let Some(socket) = &self.socket {
                    rustix::net::sockopt::set_socket_linger(socket, Some(Duration::ZERO))
                        .context("setting SO_LINGER to 0")?;
                }
                self.reset = true;
                Ok(Flow::End)
            }
            Fault::Raw(bytes) => {
                self.writer()?
                    .write_all(bytes.as_bytes())
                    .await
                    .context("writing a raw reply")?;
                Ok(Flow::Continue)
            }
            Fault::Endless { first, then } => {
                self.endless(first, then).await;
                Ok(Flow::End)
            }
            Fault::Stall => {
                let mut sink = [0u8; 4096];
                loop {
                    match self.reader.read(&mut sink).await {
                        Ok(0) | Err(_) => return Ok(Flow::End),
                        Ok(_) => {}
                    }
                }
            }
        }
    }

    /// Writes `first`, then `then` again and again until the client stops taking it.
    async fn endless(&mut self, first: &str, then: &str) {
        let counter = self.lines.clone();
        let Ok(writer) = self.writer() else { return };
        if writer.write_all(first.as_bytes()).await.is_err() {
            return;
        }
        let count = |n: usize| {
            if let Some(shared) = &counter {
                shared.endless_bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
        };
        count(first.len());
        if then.is_empty() {
            return;
        }
        let chunk = then.repeat(65_536 / then.len() + 1);
        // A client that stops reading without hanging up leaves this write waiting: the
        // session ends when it closes.
        while writer.write_all(chunk.as_bytes()).await.is_ok() {
            count(chunk.len());
        }
    }

    /// One line with its terminator; `None` at end of stream; an error when longer than `max`.
    async fn read_line(&mut self, max: usize) -> anyhow::Result<Option<Vec<u8>>> {
        let pipelined = !self.reader.buffer().is_empty();
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .context("reading from the client")?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            if line.len() > max {
                bail!("line longer than {max} bytes");
            }
            // End of stream in the middle of a line.
            return Ok(None);
        }
        if let Some(shared) = &self.lines {
            lock(&shared.lines).push(ClientLine {
                tls: self.tls,
                pipelined,
                line: String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            });
        }
        Ok(Some(line))
    }
}

/// The state of one SMTP session.
#[derive(Default)]
struct Session {
    helo: Option<String>,
    user: Option<String>,
    from: Option<String>,
    rcpts: Vec<String>,
}

impl Session {
    fn reset_transaction(&mut self) {
        self.from = None;
        self.rcpts.clear();
    }
}

async fn session(stream: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let script = shared.script();
    // A second handle on the socket, so that Fault::Reset can make the close abortive whatever
    // stream (plain or TLS) the session speaks over.
    let socket = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
    let mut io = match &script.tls {
        RelayTls::Implicit(config) => {
            let tls = TlsAcceptor::from(config.clone())
                .accept(stream)
                .await
                .context("TLS handshake")?;
            Io::new(Box::new(tls), true, shared.clone())
        }
        _ => Io::new(Box::new(stream), false, shared.clone()),
    };
    io.socket = socket;
    let shared = &*shared;
    let greeted = match &script.greeting {
        None => {
            io.reply(220, &format!("{} ESMTP linkrelay-tests", script.name))
                .await?;
            true
        }
        Some(fault) => {
            if let Flow::End = io.fault(fault).await? {
                return Ok(());
            }
            fault.is_success()
        }
    };
    let mut s = Session::default();
    loop {
        let raw = match io.read_line(MAX_COMMAND_LINE).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Postfix answers an over-long line with 500 and hangs up; so do we.
                tracing::debug!("scripted relay: {e:#}");
                io.reply(500, "5.5.0 Error: line too long").await?;
                return Ok(());
            }
        };
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        let script = shared.script();
        if !greeted && verb != "QUIT" {
            io.reply(503, "5.5.0 Error: service unavailable").await?;
            continue;
        }
        let flow = match verb.as_str() {
            "EHLO" | "HELO" => ehlo(&mut io, &script, &mut s, &verb, arg).await?,
            "AUTH" => auth(&mut io, &script, &mut s, arg).await?,
            "MAIL" => mail(&mut io, &script, &mut s, arg).await?,
            "RCPT" => rcpt(&mut io, &script, &mut s, arg).await?,
            "DATA" => data(&mut io, shared, &mut s, arg).await?,
            "STARTTLS" => match (&script.tls, &script.starttls) {
                (RelayTls::Off, Some(fault)) => {
                    let flow = io.fault(fault).await?;
                    if matches!(fault, Fault::Reply(220, _)) {
                        // No TLS here: the client starts a handshake nobody answers.
                        Flow::End
                    } else {
                        flow
                    }
                }
                _ => starttls(&mut io, &script, arg).await?,
            },
            "RSET" => {
                s.reset_transaction();
                io.reply(250, "2.0.0 Ok").await?;
                Flow::Continue
            }
            "NOOP" => {
                io.reply(250, "2.0.0 Ok").await?;
                Flow::Continue
            }
            "HELP" => {
                io.reply(
                    214,
                    "2.0.0 Commands: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP HELP QUIT",
                )
                .await?;
                Flow::Continue
            }
            "QUIT" => {
                io.reply(221, "2.0.0 Bye").await?;
                Flow::End
            }
            "" => {
                io.reply(500, "5.5.2 Error: bad syntax").await?;
                Flow::Continue
            }
            _ => {
                io.reply(502, "5.5.2 Error: command not recognized").await?;
                Flow::Continue
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::End => return Ok(()),
            Flow::StartTls(config) => {
                let shared_lines = io.lines.clone();
                let socket = io.socket.take();
                let stream = io.into_stream()?;
                let tls = TlsAcceptor::from(config)
                    .accept(stream)
                    .await
                    .context("TLS handshake after STARTTLS")?;
                io = Io::new(Box::new(tls), true, shared_lines.context("shared state")?);
                io.socket = socket;
                // RFC 3207: the client starts over with EHLO and forgets what it knew.
                s = Session::default();
            }
        }
    }
}

async fn starttls(io: &mut Io, script: &RelayScript, arg: &str) -> anyhow::Result<Flow> {
    let RelayTls::Starttls(config) = &script.tls else {
        io.reply(502, "5.5.2 Error: command not recognized").await?;
        return Ok(Flow::Continue);
    };
    if io.tls {
        io.reply(554, "5.5.1 Error: TLS already active").await?;
        return Ok(Flow::Continue);
    }
    if !arg.is_empty() {
        io.reply(501, "5.5.4 Syntax: STARTTLS").await?;
        return Ok(Flow::Continue);
    }
    if let Some(fault) = &script.starttls {
        return io.fault(fault).await;
    }
    io.reply(220, "2.0.0 Ready to start TLS").await?;
    Ok(Flow::StartTls(config.clone()))
}

async fn ehlo(
    io: &mut Io,
    script: &RelayScript,
    s: &mut Session,
    verb: &str,
    arg: &str,
) -> anyhow::Result<Flow> {
    if arg.is_empty() {
        io.reply(501, &format!("5.5.4 Syntax: {verb} hostname"))
            .await?;
        return Ok(Flow::Continue);
    }
    if let Some(fault) = &script.ehlo {
        let flow = io.fault(fault).await?;
        if fault.is_success() {
            s.helo = Some(arg.to_owned());
            s.reset_transaction();
        }
        return Ok(flow);
    }
    s.helo = Some(arg.to_owned());
    s.reset_transaction();
    if verb == "HELO" {
        io.reply(250, &script.name).await?;
    } else {
        let mut lines = vec![
            script.name.clone(),
            format!("SIZE {}", script.max_message_size),
        ];
        if script.without_8bitmime.is_none() {
            lines.push("8BITMIME".to_owned());
        }
        if (matches!(script.tls, RelayTls::Starttls(_)) && !io.tls) || script.starttls.is_some() {
            lines.push("STARTTLS".to_owned());
        }
        if script.credentials.is_some() {
            lines.push(format!("AUTH {}", script.auth_mechanisms));
        }
        if script.pipelining {
            lines.push("PIPELINING".to_owned());
        }
        lines.extend(script.offers.iter().cloned());
        lines.push("HELP".to_owned());
        io.reply(250, &lines.join("\n")).await?;
    }
    Ok(Flow::Continue)
}

/// Read one AUTH response line; `None` when the client cancelled with "*" (already answered)
/// or the stream ended.
async fn auth_response(io: &mut Io) -> anyhow::Result<Option<String>> {
    let Some(raw) = io.read_line(MAX_COMMAND_LINE).await? else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&raw)
        .trim_end_matches(['\r', '\n'])
        .to_owned();
    if line == "*" {
        io.reply(501, "5.7.0 Authentication aborted").await?;
        return Ok(None);
    }
    Ok(Some(line))
}

async fn auth(
    io: &mut Io,
    script: &RelayScript,
    s: &mut Session,
    arg: &str,
) -> anyhow::Result<Flow> {
    let Some((user, password)) = &script.credentials else {
        io.reply(503, "5.5.1 Error: authentication not enabled")
            .await?;
        return Ok(Flow::Continue);
    };
    if s.helo.is_none() {
        io.reply(503, "5.5.1 Error: send HELO/EHLO first").await?;
        return Ok(Flow::Continue);
    }
    if s.user.is_some() {
        io.reply(503, "5.5.1 Error: already authenticated").await?;
        return Ok(Flow::Continue);
    }
    if s.from.is_some() {
        io.reply(503, "5.5.1 Error: MAIL transaction in progress")
            .await?;
        return Ok(Flow::Continue);
    }
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((mechanism, initial)) => (mechanism.to_ascii_uppercase(), Some(initial.trim())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let offered = script
        .auth_mechanisms
        .split_whitespace()
        .any(|m| m.eq_ignore_ascii_case(&mechanism));
    if !offered && !mechanism.is_empty() {
        io.reply(504, "5.5.4 Unsupported authentication mechanism")
            .await?;
        return Ok(Flow::Continue);
    }
    let decode = |text: &str| -> Option<Vec<u8>> {
        if text == "=" {
            Some(Vec::new())
        } else {
            base64_decode(text)
        }
    };
    let given: (String, String) = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(initial) => initial.to_owned(),
                None => {
                    io.reply(334, "").await?;
                    match auth_response(io).await? {
                        Some(response) => response,
                        None => return Ok(Flow::Continue),
                    }
                }
            };
            let Some(decoded) = decode(&response) else {
                io.reply(501, "5.5.2 Cannot decode response").await?;
                return Ok(Flow::Continue);
            };
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            if parts.len() != 3 {
                io.reply(501, "5.5.2 Invalid PLAIN response").await?;
                return Ok(Flow::Continue);
            }
            (
                String::from_utf8_lossy(parts[1]).into_owned(),
                String::from_utf8_lossy(parts[2]).into_owned(),
            )
        }
        "LOGIN" => {
            let user_b64 = match initial {
                Some(initial) => initial.to_owned(),
                None => {
                    io.reply(334, &base64_encode(b"Username:")).await?;
                    match auth_response(io).await? {
                        Some(response) => response,
                        None => return Ok(Flow::Continue),
                    }
                }
            };
            let Some(given_user) = decode(&user_b64) else {
                io.reply(501, "5.5.2 Cannot decode response").await?;
                return Ok(Flow::Continue);
            };
            io.reply(334, &base64_encode(b"Password:")).await?;
            let Some(password_b64) = auth_response(io).await? else {
                return Ok(Flow::Continue);
            };
            let Some(given_password) = decode(&password_b64) else {
                io.reply(501, "5.5.2 Cannot decode response").await?;
                return Ok(Flow::Continue);
            };
            (
                String::from_utf8_lossy(&given_user).into_owned(),
                String::from_utf8_lossy(&given_password).into_owned(),
            )
        }
        "" => {
            io.reply(501, "5.5.4 Syntax: AUTH mechanism").await?;
            return Ok(Flow::Continue);
        }
        _ => {
            io.reply(504, "5.5.4 Unsupported authentication mechanism")
                .await?;
            return Ok(Flow::Continue);
        }
    };
    if let Some(fault) = &script.auth {
        if fault.is_success() {
            s.user = Some(given.0);
        }
        return io.fault(fault).await;
    }
    if given.0 == *user && given.1 == *password {
        s.user = Some(given.0);
        io.reply(235, "2.7.0 Authentication successful").await?;
    } else {
        io.reply(
            535,
            "5.7.8 Error: authentication failed: authentication failure",
        )
        .await?;
    }
    Ok(Flow::Continue)
}

/// Split `FROM:<addr> PARAMS` / `TO:<addr> PARAMS` after the keyword: the address without
/// `<>` and the parameters.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(String, Vec<&'a str>)> {
    if arg.len() < keyword.len() || !arg[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        let address = inner[..end].to_owned();
        let params = inner[end + 1..].split_whitespace().collect();
        Some((address, params))
    } else {
        let mut words = rest.split_whitespace();
        let address = words.next()?.to_owned();
        Some((address, words.collect()))
    }
}

async fn mail(
    io: &mut Io,
    script: &RelayScript,
    s: &mut Session,
    arg: &str,
) -> anyhow::Result<Flow> {
    let Some((from, params)) = parse_path(arg, "FROM:") else {
        io.reply(501, "5.5.4 Syntax: MAIL FROM:<address>").await?;
        return Ok(Flow::Continue);
    };
    if s.helo.is_none() {
        io.reply(503, "5.5.1 Error: send HELO/EHLO first").await?;
        return Ok(Flow::Continue);
    }
    if s.from.is_some() {
        io.reply(503, "5.5.1 Error: nested MAIL command").await?;
        return Ok(Flow::Continue);
    }
    let esmtp: HashMap<String, &str> = params
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect();
    if let Some(size) = esmtp.get("SIZE").and_then(|v| v.parse::<usize>().ok())
        && size > script.max_message_size
    {
        io.reply(552, "5.3.4 Message size exceeds fixed limit")
            .await?;
        return Ok(Flow::Continue);
    }
    if let Some(fault) = &script.without_8bitmime
        && esmtp.contains_key("BODY")
    {
        return io.fault(fault).await;
    }
    if let Some(fault) = &script.mail {
        if fault.is_success() {
            s.from = Some(from);
            s.rcpts.clear();
        }
        return io.fault(fault).await;
    }
    if script.credentials.is_some() && s.user.is_none() {
        io.reply(530, "5.7.0 Authentication required").await?;
        return Ok(Flow::Continue);
    }
    s.from = Some(from);
    s.rcpts.clear();
    io.reply(250, "2.1.0 Ok").await?;
    Ok(Flow::Continue)
}

async fn rcpt(
    io: &mut Io,
    script: &RelayScript,
    s: &mut Session,
    arg: &str,
) -> anyhow::Result<Flow> {
    let Some((to, _params)) = parse_path(arg, "TO:") else {
        io.reply(501, "5.5.4 Syntax: RCPT TO:<address>").await?;
        return Ok(Flow::Continue);
    };
    if s.from.is_none() {
        io.reply(503, "5.5.1 Error: need MAIL command").await?;
        return Ok(Flow::Continue);
    }
    if let Some(fault) = (script.rcpt)(&to) {
        if fault.is_success() {
            s.rcpts.push(to);
        }
        return io.fault(&fault).await;
    }
    if !(script.allow_client)() {
        io.reply(
            554,
            &format!("5.7.1 <{to}>: Recipient address rejected: Relay access denied"),
        )
        .await?;
        return Ok(Flow::Continue);
    }
    s.rcpts.push(to);
    io.reply(250, "2.1.5 Ok").await?;
    Ok(Flow::Continue)
}

async fn data(io: &mut Io, shared: &Shared, s: &mut Session, arg: &str) -> anyhow::Result<Flow> {
    if !arg.is_empty() {
        io.reply(501, "5.5.4 Syntax: DATA").await?;
        return Ok(Flow::Continue);
    }
    if s.from.is_none() {
        io.reply(503, "5.5.1 Error: need RCPT command").await?;
        return Ok(Flow::Continue);
    }
    if s.rcpts.is_empty() {
        io.reply(554, "5.5.1 Error: no valid recipients").await?;
        return Ok(Flow::Continue);
    }
    let script = shared.script();
    match &script.data {
        Some(fault @ Fault::Reply(code, _)) if (300..400).contains(code) => {
            io.fault(fault).await?;
        }
        Some(fault) => return io.fault(fault).await,
        None => {
            io.reply(354, "End data with <CR><LF>.<CR><LF>").await?;
        }
    }

    let mut body = Vec::new();
    let mut too_big = false;
    loop {
        let mut line = Vec::new();
        let n = io
            .reader
            .read_until(b'\n', &mut line)
            .await
            .context("reading message data")?;
        if n == 0 || !line.ends_with(b"\n") {
            // The client went away in the middle of the data: nothing is accepted.
            return Ok(Flow::End);
        }
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let content = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        if body.len() + content.len() > script.max_message_size {
            too_big = true;
        } else {
            body.extend_from_slice(content);
        }
    }

    // The script may have changed while the data came in.
    let script = shared.script();
    if (script.record_before_after_dot || script.answer_gate.is_some()) && !too_big {
        record(shared, s, std::mem::take(&mut body), io.tls);
        if let Some(gate) = &script.answer_gate {
            gate.passed().await;
        }
        return match &script.after_dot {
            Some(fault) => io.fault(fault).await,
            None => {
                let id = shared.queue_ids.fetch_add(1, Ordering::Relaxed);
                io.reply(250, &format!("2.0.0 Ok: queued as {id:010X}"))
                    .await?;
                Ok(Flow::Continue)
            }
        };
    }
    let accepted = match &script.after_dot {
        Some(fault) => {
            let flow = io.fault(fault).await?;
            if !fault.is_success() {
                s.reset_transaction();
                return Ok(flow);
            }
            Some(flow)
        }
        None if too_big => {
            io.reply(552, "5.3.4 Error: message file too big").await?;
            s.reset_transaction();
            return Ok(Flow::Continue);
        }
        None => None,
    };
    record(shared, s, body, io.tls);
    match accepted {
        Some(flow) => Ok(flow),
        None => {
            let id = shared.queue_ids.fetch_add(1, Ordering::Relaxed);
            io.reply(250, &format!("2.0.0 Ok: queued as {id:010X}"))
                .await?;
            Ok(Flow::Continue)
        }
    }
}

/// Records the transaction of `s` with `body` as received, and ends the transaction.
fn record(shared: &Shared, s: &mut Session, body: Vec<u8>, tls: bool) {
    let received = Received {
        helo: s.helo.clone().unwrap_or_default(),
        from: s.from.take().unwrap_or_default(),
        rcpts: std::mem::take(&mut s.rcpts),
        data: body,
        authenticated_as: s.user.clone(),
        tls,
    };
    let count = {
        let mut all = lock(&shared.received);
        all.push(received);
        all.len()
    };
    shared.received_count.send_replace(count);
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; `None` when malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let value = BASE64_ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 6 bits left over means a truncated group.
    if bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lettre::address::Envelope;
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    use tokio::io::AsyncWriteExt;
    use tokio::net::tcp::OwnedReadHalf;

    const MESSAGE: &str = "From: alice@isp-a.example\r\n\
        To: bob@example.org\r\n\
        Subject: hello\r\n\
        \r\n\
        Hi Bob,\r\n\
        .a line that starts with a dot\r\n\
        ..two dots\r\n\
        bye\r\n";

    fn address(text: &str) -> Address {
        text.parse().expect("address")
    }

    fn envelope(from: &str, to: &[&str]) -> Envelope {
        Envelope::new(Some(address(from)), to.iter().map(|t| address(t)).collect())
            .expect("envelope")
    }

    fn transport(relay: &ScriptedRelay) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(relay.port())
            .hello_name(ClientId::Domain("laptop.test".to_owned()))
            .timeout(Some(Duration::from_secs(5)))
            .build()
    }

    async fn connection(relay: &ScriptedRelay) -> AsyncSmtpConnection {
        AsyncSmtpConnection::connect_tokio1(
            relay.addr,
            Some(Duration::from_secs(5)),
            &ClientId::Domain("laptop.test".to_owned()),
            None,
            None,
        )
        .await
        .expect("connect")
    }

    /// A raw client for exact protocol checks: sends `lines` one by one and returns every
    /// reply line read after each.
    /// What to give lettre for `message` to arrive as it is: lettre writes CRLF . CRLF after
    /// the data, so a message that ends with CRLF would gain an empty line.
    fn wire_body(message: &str) -> &[u8] {
        message.strip_suffix("\r\n").unwrap_or(message).as_bytes()
    }

    async fn raw_session(relay: &ScriptedRelay, lines: &[&str]) -> Vec<String> {
        let stream = TcpStream::connect(relay.addr).await.expect("connect");
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut replies = Vec::new();
        async fn read_reply(r: &mut BufReader<OwnedReadHalf>, replies: &mut Vec<String>) {
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.expect("read") == 0 {
                    replies.push("<eof>".to_owned());
                    return;
                }
                let line = line.trim_end().to_owned();
                let more = line.as_bytes().get(3) == Some(&b'-');
                replies.push(line);
                if !more {
                    return;
                }
            }
        }
        read_reply(&mut r, &mut replies).await;
        for line in lines {
            w.write_all(format!("{line}\r\n").as_bytes())
                .await
                .expect("write");
            read_reply(&mut r, &mut replies).await;
        }
        // After QUIT the server hangs up: show that as "<eof>".
        if lines.last().is_some_and(|l| l.eq_ignore_ascii_case("QUIT")) {
            read_reply(&mut r, &mut replies).await;
        }
        replies
    }

    #[tokio::test]
    async fn lettre_sends_a_message_and_it_is_recorded_unstuffed() {
        let relay = ScriptedRelay::start(RelayScript::named("relay.isp-a.test"))
            .await
            .unwrap();
        let response = transport(&relay)
            .send_raw(
                &envelope(
                    "alice@isp-a.example",
                    &["bob@example.org", "carol@example.org"],
                ),
                wire_body(MESSAGE),
            )
            .await
            .expect("send");
        assert!(response.is_positive());
        assert!(
            response
                .first_line()
                .unwrap_or_default()
                .contains("queued as"),
            "{response:?}"
        );
        let received = relay.wait_for(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        assert_eq!(got.helo, "laptop.test");
        assert_eq!(got.from, "alice@isp-a.example");
        assert_eq!(got.rcpts, ["bob@example.org", "carol@example.org"]);
        assert_eq!(got.data_text(), MESSAGE);
        assert_eq!(got.authenticated_as, None);
        assert_eq!(relay.connections(), 1);
    }

    #[tokio::test]
    async fn ehlo_advertises_exactly_the_documented_extensions() {
        let relay = ScriptedRelay::start(RelayScript::named("relay.test"))
            .await
            .unwrap();
        let replies = raw_session(&relay, &["EHLO me", "QUIT"]).await;
        assert_eq!(
            replies,
            [
                "220 relay.test ESMTP linkrelay-tests",
                "250-relay.test",
                "250-SIZE 10485760",
                "250-8BITMIME",
                "250 HELP",
                "221 2.0.0 Bye",
                "<eof>"
            ]
            .map(String::from)
        );
        relay.set_script(RelayScript::named("relay.test").with_credentials("u", "p"));
        let replies = raw_session(&relay, &["EHLO me"]).await;
        assert!(
            replies.contains(&"250-AUTH PLAIN LOGIN".to_owned()),
            "{replies:?}"
        );
    }

    #[tokio::test]
    async fn without_8bitmime_the_extension_is_not_offered_and_body_is_refused() {
        let relay = ScriptedRelay::start(RelayScript {
            without_8bitmime: Some(Fault::reply(555, "5.5.4 Unsupported option: BODY=8BITMIME")),
            ..RelayScript::named("relay.test")
        })
        .await
        .unwrap();
        let replies = raw_session(
            &relay,
            &[
                "EHLO me",
                "MAIL FROM:<a@b.example> BODY=8BITMIME",
                "MAIL FROM:<a@b.example>",
            ],
        )
        .await;
        assert_eq!(
            replies[1..],
            [
                "250-relay.test",
                "250-SIZE 10485760",
                "250 HELP",
                "555 5.5.4 Unsupported option: BODY=8BITMIME",
                "250 2.1.0 Ok",
            ]
            .map(String::from)
        );
    }

    #[tokio::test]
    async fn protocol_errors_and_simple_commands() {
        let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
        let replies = raw_session(
            &relay,
            &[
                "MAIL FROM:<a@b.example>",
                "HELO client",
                "RCPT TO:<c@d.example>",
                "DATA",
                "MAIL FROM:<a@b.example> SIZE=99999999999",
                "MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME",
                "MAIL FROM:<a@b.example>",
                "DATA",
                "NOOP",
                "RSET",
                "VRFY root",
                "STARTTLS",
                "AUTH PLAIN",
                "QUIT",
            ],
        )
        .await;
        assert_eq!(
            replies,
            [
                "220 relay.test ESMTP linkrelay-tests",
                "503 5.5.1 Error: send HELO/EHLO first",
                "250 relay.test",
                "503 5.5.1 Error: need MAIL command",
                "503 5.5.1 Error: need RCPT command",
                "552 5.3.4 Message size exceeds fixed limit",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: nested MAIL command",
                "554 5.5.1 Error: no valid recipients",
                "250 2.0.0 Ok",
                "250 2.0.0 Ok",
                "502 5.5.2 Error: command not recognized",
                "502 5.5.2 Error: command not recognized",
                "503 5.5.1 Error: authentication not enabled",
                "221 2.0.0 Bye",
                "<eof>",
            ]
            .map(String::from)
        );
        assert!(relay.received().is_empty());
    }

    #[tokio::test]
    async fn a_rcpt_fault_rejects_one_recipient_and_the_others_get_the_mail() {
        let relay = ScriptedRelay::start(RelayScript::default().with_rcpt(|to| {
            (to == "nobody@example.org").then(|| {
                Fault::reply(
                    550,
                    "5.1.1 <nobody@example.org>: Recipient address rejected",
                )
            })
        }))
        .await
        .unwrap();

        // The high-level API gives up on the whole send at the first rejected RCPT.
        let err = transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["nobody@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect_err("rejected recipient");
        assert!(err.is_permanent(), "{err:?}");
        assert!(err.to_string().contains("5.1.1"), "{err}");

        // Per recipient with the low-level connection.
        let mut conn = connection(&relay).await;
        conn.command(Mail::new(Some(address("alice@isp-a.example")), vec![]))
            .await
            .expect("MAIL");
        conn.command(Rcpt::new(address("bob@example.org"), vec![]))
            .await
            .expect("RCPT bob");
        let refused = conn
            .command(Rcpt::new(address("nobody@example.org"), vec![]))
            .await
            .expect_err("RCPT nobody");
        assert!(refused.is_permanent());
        assert_eq!(refused.status().map(u16::from), Some(550));
        conn.command(Rcpt::new(address("carol@example.org"), vec![]))
            .await
            .expect("RCPT carol");
        conn.command(Data).await.expect("DATA");
        let done = conn.message(wire_body(MESSAGE)).await.expect("message");
        assert!(done.is_positive());
        conn.quit().await.expect("QUIT");

        let received = relay.wait_for(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(received[0].rcpts, ["bob@example.org", "carol@example.org"]);
        assert_eq!(received[0].data_text(), MESSAGE);
    }

    #[tokio::test]
    async fn a_foreign_client_gets_postfix_relay_access_denied() {
        let relay = ScriptedRelay::start(RelayScript::named("smtp.isp-b.test").refusing_relay())
            .await
            .unwrap();
        let err = transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect_err("relay access denied");
        assert!(err.is_permanent(), "{err:?}");
        assert_eq!(err.status().map(u16::from), Some(554));
        let text = err.to_string();
        assert!(
            text.contains(
                "5.7.1 <bob@example.org>: Recipient address rejected: Relay access denied"
            ),
            "{text}"
        );
        assert!(relay.received().is_empty());

        // The same relay accepts once the client is on its network.
        let on_network = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = on_network.clone();
        relay.set_script(
            RelayScript::named("smtp.isp-b.test")
                .with_allow_client(move || flag.load(Ordering::SeqCst)),
        );
        on_network.store(true, Ordering::SeqCst);
        transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect("accepted on the ISP's network");
        assert_eq!(
            relay
                .wait_for(1, Duration::from_secs(5))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn auth_plain_and_login_with_credentials() {
        let relay =
            ScriptedRelay::start(RelayScript::default().with_credentials("alice", "s3cret"))
                .await
                .unwrap();
        let env = envelope("alice@isp-a.example", &["bob@example.org"]);

        // Without AUTH: 530.
        let err = transport(&relay)
            .send_raw(&env, MESSAGE.as_bytes())
            .await
            .expect_err("530");
        assert_eq!(err.status().map(u16::from), Some(530), "{err}");

        for mechanism in [Mechanism::Plain, Mechanism::Login] {
            let good = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(relay.port())
                .credentials(Credentials::new("alice".to_owned(), "s3cret".to_owned()))
                .authentication(vec![mechanism])
                .timeout(Some(Duration::from_secs(5)))
                .build();
            good.send_raw(&env, MESSAGE.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));

            let bad = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(relay.port())
                .credentials(Credentials::new("alice".to_owned(), "wrong".to_owned()))
                .authentication(vec![mechanism])
                .timeout(Some(Duration::from_secs(5)))
                .build();
            let err = bad
                .send_raw(&env, MESSAGE.as_bytes())
                .await
                .expect_err("bad password");
            assert_eq!(err.status().map(u16::from), Some(535), "{err}");
        }
        let received = relay.wait_for(2, Duration::from_secs(5)).await.unwrap();
        assert_eq!(received.len(), 2);
        assert!(
            received
                .iter()
                .all(|r| r.authenticated_as.as_deref() == Some("alice"))
        );
    }

    #[tokio::test]
    async fn auth_challenge_forms_and_cancel() {
        let relay = ScriptedRelay::start(RelayScript::default().with_credentials("u", "p"))
            .await
            .unwrap();
        let plain = base64_encode(b"\0u\0p");
        let replies = raw_session(
            &relay,
            &["EHLO me", "AUTH PLAIN", &plain, "MAIL FROM:<a@b>"],
        )
        .await;
        assert_eq!(
            replies[replies.len() - 3..],
            ["334", "235 2.7.0 Authentication successful", "250 2.1.0 Ok"].map(String::from)
        );
        let replies = raw_session(
            &relay,
            &[
                "EHLO me",
                "AUTH LOGIN",
                &base64_encode(b"u"),
                &base64_encode(b"p"),
            ],
        )
        .await;
        assert_eq!(
            replies[replies.len() - 3..],
            [
                "334 VXNlcm5hbWU6",
                "334 UGFzc3dvcmQ6",
                "235 2.7.0 Authentication successful"
            ]
            .map(String::from)
        );
        let replies = raw_session(
            &relay,
            &[
                "EHLO me",
                &format!("AUTH LOGIN {}", base64_encode(b"u")),
                &base64_encode(b"p"),
            ],
        )
        .await;
        assert_eq!(
            replies[replies.len() - 2..],
            ["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"].map(String::from)
        );
        let replies = raw_session(&relay, &["EHLO me", "AUTH PLAIN", "*", "AUTH CRAM-MD5"]).await;
        assert_eq!(
            replies[replies.len() - 3..],
            [
                "334",
                "501 5.7.0 Authentication aborted",
                "504 5.5.4 Unsupported authentication mechanism"
            ]
            .map(String::from)
        );
    }

    #[tokio::test]
    async fn a_multi_line_fault_reply_reaches_the_client_whole() {
        let relay = ScriptedRelay::start(RelayScript {
            mail: Some(Fault::reply(
                451,
                "4.3.0 Temporary failure\nplease try again later\nsee https://relay.test/help",
            )),
            ..RelayScript::default()
        })
        .await
        .unwrap();
        let err = transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect_err("451");
        assert!(err.is_transient(), "{err:?}");
        let text = err.to_string();
        for part in [
            "4.3.0 Temporary failure",
            "please try again later",
            "see https://relay.test/help",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        let replies = raw_session(&relay, &["EHLO me", "MAIL FROM:<a@b>"]).await;
        assert_eq!(
            replies[replies.len() - 3..],
            [
                "451-4.3.0 Temporary failure",
                "451-please try again later",
                "451 see https://relay.test/help"
            ]
            .map(String::from)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_relay_makes_a_client_with_a_1_s_timeout_time_out() {
        let relay = ScriptedRelay::start(RelayScript {
            rcpt: Arc::new(|_| Some(Fault::Stall)),
            ..RelayScript::default()
        })
        .await
        .unwrap();
        // lettre's tokio transport applies its timeout to the connect only: a stalled reply
        // hangs it for ever. The agent bounds every stage itself (tokio::time::timeout), and so
        // does this client.
        let client = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(relay.port())
            .timeout(Some(Duration::from_secs(1)))
            .build();
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            client.send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            ),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(sent.is_err(), "the stalled relay answered: {sent:?}");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );

        assert!(relay.received().is_empty());
        assert_eq!(relay.connections(), 1);
    }

    #[tokio::test]
    async fn greeting_close_and_after_dot_faults() {
        let relay = ScriptedRelay::start(RelayScript {
            greeting: Some(Fault::reply(554, "5.3.2 relay.test Service unavailable")),
            ..RelayScript::default()
        })
        .await
        .unwrap();
        let replies = raw_session(&relay, &["EHLO me", "QUIT"]).await;
        assert_eq!(
            replies,
            [
                "554 5.3.2 relay.test Service unavailable",
                "503 5.5.0 Error: service unavailable",
                "221 2.0.0 Bye",
                "<eof>"
            ]
            .map(String::from)
        );

        relay.set_script(RelayScript {
            data: Some(Fault::Close),
            ..RelayScript::default()
        });
        let err = transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect_err("connection closed");
        assert!(!err.is_permanent(), "{err:?}");

        relay.set_script(RelayScript {
            after_dot: Some(Fault::reply(552, "5.3.4 Error: message file too big")),
            ..RelayScript::default()
        });
        let err = transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect_err("552 after the dot");
        assert_eq!(err.status().map(u16::from), Some(552));
        assert!(relay.received().is_empty());

        relay.set_script(RelayScript {
            after_dot: Some(Fault::reply(250, "2.0.0 Ok: queued as CUSTOM")),
            ..RelayScript::default()
        });
        transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect("custom 250");
        assert_eq!(relay.received().len(), 1);
        assert_eq!(relay.connections(), 4);
    }

    #[tokio::test]
    async fn starttls_is_offered_only_when_scripted() {
        let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
        let replies = raw_session(&relay, &["EHLO me", "STARTTLS"]).await;
        assert!(
            !replies.iter().any(|l| l.contains("STARTTLS")),
            "{replies:?}"
        );
        assert_eq!(
            replies.last().map(String::as_str),
            Some("502 5.5.2 Error: command not recognized")
        );

        relay.set_script(RelayScript {
            starttls: Some(Fault::reply(
                454,
                "4.7.0 TLS not available due to local problem",
            )),
            ..RelayScript::default()
        });
        let replies = raw_session(&relay, &["EHLO me", "STARTTLS", "QUIT"]).await;
        assert!(replies.contains(&"250-STARTTLS".to_owned()), "{replies:?}");
        assert_eq!(
            replies[replies.len() - 3..],
            [
                "454 4.7.0 TLS not available due to local problem",
                "221 2.0.0 Bye",
                "<eof>"
            ]
            .map(String::from)
        );

        // A 220 is followed by a hang-up: there is no TLS to negotiate.
        relay.set_script(RelayScript {
            starttls: Some(Fault::reply(220, "2.0.0 Ready to start TLS")),
            ..RelayScript::default()
        });
        let replies = raw_session(&relay, &["EHLO me", "STARTTLS"]).await;
        assert_eq!(
            replies.last().map(String::as_str),
            Some("220 2.0.0 Ready to start TLS")
        );
    }

    #[tokio::test]
    async fn raw_replies_are_sent_verbatim_and_the_session_goes_on() {
        let relay = ScriptedRelay::start(RelayScript {
            mail: Some(Fault::Raw("hello there\r\n".to_owned())),
            ..RelayScript::default()
        })
        .await
        .unwrap();
        let replies = raw_session(&relay, &["EHLO me", "MAIL FROM:<a@b>", "NOOP"]).await;
        assert_eq!(
            replies[replies.len() - 2..],
            ["hello there", "250 2.0.0 Ok"].map(String::from)
        );
    }

    #[tokio::test]
    async fn an_endless_reply_goes_on_until_the_client_hangs_up() {
        let relay = ScriptedRelay::start(RelayScript {
            greeting: Some(Fault::endless("220-hello ", "x")),
            ..RelayScript::default()
        })
        .await
        .unwrap();
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        let mut got = vec![0u8; 1 << 20];
        stream.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"220-hello xxx"));
        assert!(!got.contains(&b'\n'), "no line end, ever");
        assert!(relay.endless_bytes() >= 1 << 20);
        drop(stream);
        // The relay stops writing once the client is gone.
        let mut last = relay.endless_bytes();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = relay.endless_bytes();
            if now == last {
                break;
            }
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(relay.endless_bytes(), last);
    }

    #[tokio::test]
    async fn reset_aborts_the_connection() {
        let relay = ScriptedRelay::start(RelayScript {
            rcpt: Arc::new(|_| Some(Fault::Reset)),
            ..RelayScript::default()
        })
        .await
        .unwrap();
        let mut stream = BufReader::new(TcpStream::connect(relay.addr).await.unwrap());
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        stream
            .get_mut()
            .write_all(b"HELO me\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let err = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the relay hangs up")
            .expect_err("reset, not an orderly close");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }

    #[tokio::test]
    async fn a_relay_can_take_the_mail_and_lose_the_answer() {
        let relay = ScriptedRelay::start(RelayScript {
            after_dot: Some(Fault::Reset),
            record_before_after_dot: true,
            ..RelayScript::default()
        })
        .await
        .unwrap();
        let err = transport(&relay)
            .send_raw(
                &envelope("alice@isp-a.example", &["bob@example.org"]),
                MESSAGE.as_bytes(),
            )
            .await
            .expect_err("no answer after the dot");
        assert!(!err.is_permanent(), "{err:?}");
        let received = relay.received();
        assert_eq!(received.len(), 1, "the relay kept it");
        assert_eq!(received[0].rcpts, ["bob@example.org"]);
        // lettre's CRLF.CRLF after data that already ends in CRLF.
        assert_eq!(received[0].data_text(), format!("{MESSAGE}\r\n"));
    }

    #[tokio::test]
    async fn wait_for_fails_with_what_was_received() {
        let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
        let err = relay
            .wait_for(1, Duration::from_millis(100))
            .await
            .expect_err("nothing arrives");
        assert!(err.to_string().contains("accepted 0 of the 1"), "{err}");
    }

    #[tokio::test]
    async fn drop_stops_the_listener_and_open_connections() {
        let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
        let addr = relay.addr;
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut r = BufReader::new(stream);
        let mut greeting = String::new();
        r.read_line(&mut greeting).await.expect("greeting");
        assert!(greeting.starts_with("220 "));
        drop(relay);
        let mut rest = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut rest))
            .await
            .expect("the open connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "{rest:?}");
        // Give the aborted accept loop a moment to drop its listener.
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the listener still accepts");
    }

    fn tls_params(
        ca: &crate::tls::TestCa,
        host: &str,
    ) -> lettre::transport::smtp::client::TlsParameters {
        use lettre::transport::smtp::client::{Certificate, TlsParameters};
        TlsParameters::builder(host.to_owned())
            .add_root_certificate(Certificate::from_pem(ca.pem().as_bytes()).expect("CA pem"))
            .build_rustls()
            .expect("TLS parameters")
    }

    #[tokio::test]
    async fn starttls_upgrades_and_the_session_starts_over() {
        let ca = crate::tls::TestCa::new("test CA").unwrap();
        let relay = ScriptedRelay::start(
            RelayScript::default()
                .with_credentials("alice", "s3cret")
                .with_starttls(ca.server_config(&["localhost", "127.0.0.1"]).unwrap()),
        )
        .await
        .unwrap();
        let hello = ClientId::Domain("laptop.test".to_owned());
        let mut conn = connection(&relay).await;
        assert!(conn.can_starttls());
        conn.starttls(tls_params(&ca, "127.0.0.1"), &hello)
            .await
            .expect("STARTTLS with the test CA");
        assert!(conn.is_encrypted());
        assert!(!conn.can_starttls(), "STARTTLS is not offered twice");
        conn.auth(
            &[Mechanism::Plain],
            &Credentials::new("alice".into(), "s3cret".into()),
        )
        .await
        .expect("AUTH over TLS");
        conn.command(Mail::new(Some(address("alice@isp-a.example")), vec![]))
            .await
            .expect("MAIL");
        conn.command(Rcpt::new(address("bob@example.org"), vec![]))
            .await
            .expect("RCPT");
        conn.command(Data).await.expect("DATA");
        conn.message(MESSAGE.as_bytes()).await.expect("message");
        conn.quit().await.expect("QUIT");
        let received = relay.wait_for(1, Duration::from_secs(5)).await.unwrap();
        assert!(received[0].tls);
        assert_eq!(received[0].authenticated_as.as_deref(), Some("alice"));
        let lines = relay.commands();
        let clear: Vec<&str> = lines
            .iter()
            .filter(|l| !l.tls)
            .map(|l| l.line.as_str())
            .collect();
        assert_eq!(clear, ["EHLO laptop.test", "STARTTLS"]);
        assert!(
            lines
                .iter()
                .any(|l| l.tls && l.line.starts_with("AUTH PLAIN"))
        );
    }

    #[tokio::test]
    async fn implicit_tls_and_an_unknown_ca_or_wrong_name_is_refused() {
        let ca = crate::tls::TestCa::new("test CA").unwrap();
        let relay = ScriptedRelay::start(
            RelayScript::default().with_implicit_tls(ca.server_config(&["127.0.0.1"]).unwrap()),
        )
        .await
        .unwrap();
        let hello = ClientId::Domain("laptop.test".to_owned());
        let conn = AsyncSmtpConnection::connect_tokio1(
            relay.addr,
            Some(Duration::from_secs(5)),
            &hello,
            Some(tls_params(&ca, "127.0.0.1")),
            None,
        )
        .await
        .expect("implicit TLS with the test CA");
        assert!(conn.is_encrypted());

        let other = crate::tls::TestCa::new("another CA").unwrap();
        let err = AsyncSmtpConnection::connect_tokio1(
            relay.addr,
            Some(Duration::from_secs(5)),
            &hello,
            Some(tls_params(&other, "127.0.0.1")),
            None,
        )
        .await
        .err()
        .expect("a certificate from an unknown CA");
        assert!(
            err.is_tls() || err.to_string().contains("certificate"),
            "{err}"
        );

        let err = AsyncSmtpConnection::connect_tokio1(
            relay.addr,
            Some(Duration::from_secs(5)),
            &hello,
            Some(tls_params(&ca, "localhost")),
            None,
        )
        .await
        .err()
        .expect("a certificate for another name");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn starttls_is_not_recognised_without_tls_and_pipelined_bytes_end_the_session() {
        let replies = {
            let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
            raw_session(&relay, &["EHLO me", "STARTTLS"]).await
        };
        assert!(
            !replies.iter().any(|r| r.contains("STARTTLS")),
            "{replies:?}"
        );
        assert_eq!(
            replies.last().map(String::as_str),
            Some("502 5.5.2 Error: command not recognized")
        );
        // A client that sends a command right behind STARTTLS (the injection of CVE-2011-0411)
        // gets no TLS session: the relay hangs up.
        let ca = crate::tls::TestCa::new("test CA").unwrap();
        let relay = ScriptedRelay::start(
            RelayScript::default().with_starttls(ca.server_config(&["127.0.0.1"]).unwrap()),
        )
        .await
        .unwrap();
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        let mut greeting = [0u8; 512];
        let _ = stream.read(&mut greeting).await.unwrap();
        stream.write_all(b"EHLO me\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stream.read(&mut greeting).await.unwrap();
        stream
            .write_all(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert_eq!(rest, "220 2.0.0 Ready to start TLS\r\n");
    }

    #[test]
    fn base64_round_trips() {
        for input in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            b"\0u\0p",
        ] {
            let encoded = base64_encode(input);
            assert_eq!(base64_decode(&encoded).as_deref(), Some(input), "{encoded}");
        }
        assert_eq!(base64_encode(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("not base64!"), None);
        assert_eq!(base64_decode("Zm9vY"), None);
    }
}
