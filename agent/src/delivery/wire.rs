//! The connection to a relay, below the SMTP dialogue: TCP (with `TCP_NODELAY`), TLS (from
//! the first byte, or after STARTTLS) with rustls, replies read through the bounded
//! [`ReplyParser`], commands written as they are, and the message data dot-stuffed and
//! written a piece at a time as it is read from its file.
//!
//! The agent opens every connection and does every TLS handshake itself, so that nothing a
//! relay sends is read by code that does not bound it. (lettre, which did this before, read
//! reply lines without a bound; see [`crate::delivery::reply`].) lettre still formats the
//! commands and checks the addresses in them.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::delivery::message::{Message, PIECE};
use crate::delivery::reply::{Reply, ReplyError, ReplyParser};

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// What came was not a reply within the bounds.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// The relay closed the connection (in the middle of a reply, or before it).
    #[error("the relay closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed (the certificate, most often).
    #[error("{0}")]
    Tls(String),
    /// The message could not be read from its file while it was being sent.
    #[error("cannot read the message: {0}")]
    Message(io::Error),
    /// Bytes followed the relay's go-ahead to STARTTLS before the handshake: anyone on the
    /// path could have put them there, to be taken for the relay's replies inside TLS.
    #[error("the relay sent more after its answer to STARTTLS, before TLS began")]
    AfterStarttls,
}

/// A byte stream to a relay: TCP, or TLS over it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between the two, and after a failed handshake.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is gone")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// An open connection to a relay.
pub struct Connection {
    stream: BufReader<Transport>,
}

impl Connection {
    /// Connects to the first of `peers` that answers. `TCP_NODELAY` is set: a command or the
    /// data's last piece must not wait for the relay's delayed ACK (40 ms a message).
    pub async fn connect(peers: &[SocketAddr]) -> io::Result<Connection> {
        let tcp = TcpStream::connect(peers).await?;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Ok(Connection {
            stream: BufReader::new(Transport::Plain(tcp)),
        })
    }

    /// Whether the connection is encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.stream.get_ref(), Transport::Tls(_))
    }

    /// Does the TLS handshake for `host` (its certificate must be valid for that name): right
    /// after connecting for implicit TLS, or after the relay's go-ahead to STARTTLS.
    pub async fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<(), WireError> {
        if !self.stream.buffer().is_empty() {
            return Err(WireError::AfterStarttls);
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| WireError::Tls(format!("{host:?} is not a name TLS can check")))?;
        let stream = std::mem::replace(&mut self.stream, BufReader::new(Transport::Gone));
        let Transport::Plain(tcp) = stream.into_inner() else {
            return Err(WireError::Tls("TLS is already on".into()));
        };
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| WireError::Tls(e.to_string()))?;
        self.stream = BufReader::new(Transport::Tls(Box::new(tls)));
        Ok(())
    }

    /// Writes `bytes` (one command, or several when pipelining) and flushes them.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    }

    /// Reads one reply, within the bounds of [`ReplyParser`].
    pub async fn read_reply(&mut self) -> Result<Reply, WireError> {
        let mut parser = ReplyParser::default();
        loop {
            let buf = self.stream.fill_buf().await?;
            if buf.is_empty() {
                return Err(WireError::Closed);
            }
            let fed = parser.feed(buf);
            self.stream.consume(fed.consumed);
            if let Some(done) = fed.done {
                let reply = done?;
                tracing::trace!(code = reply.code, text = %reply.text(), "reply");
                return Ok(reply);
            }
        }
    }

    /// Sends a message's data after the relay's 354: dot-stuffed (RFC 5321 4.5.2), a piece
    /// of at most [`PIECE`] bytes at a time read from the message's file, then the final `.`
    /// line. The message's last line end is the one before the dot ([`Message::data_len`]).
    ///
    /// `ending` is set just before the last write, the one with the final dot, begins: from
    /// then on the relay may have the whole message, and may take it whatever happens to the
    /// connection on our side.
    pub async fn send_data(
        &mut self,
        message: &Message,
        ending: &AtomicBool,
    ) -> Result<(), WireError> {
        let mut stuffer = DotStuffer::default();
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(PIECE + PIECE / 8);
        let mut offset = 0;
        loop {
            let piece = message
                .piece(offset, &mut buf)
                .await
                .map_err(WireError::Message)?;
            offset += piece.len() as u64;
            out.clear();
            stuffer.stuff(piece, &mut out);
            let last = offset >= message.data_len();
            if last {
                out.extend_from_slice(b"\r\n.\r\n");
                ending.store(true, Ordering::SeqCst);
            }
            self.stream.get_mut().write_all(&out).await?;
            if last {
                break;
            }
        }
        self.stream.get_mut().flush().await?;
        Ok(())
    }
}

/// Doubles a dot that starts a line, so that no line of the message is taken for the end of
/// the data. Keeps its place between pieces.
#[derive(Debug)]
pub struct DotStuffer {
    /// The next byte starts a line: at the start, or after CR LF.
    line_start: bool,
    /// The last byte was a CR.
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            after_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends `piece`, stuffed, to `out`.
    pub fn stuff(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        for &b in piece {
            if self.line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.line_start = self.after_cr && b == b'\n';
            self.after_cr = b == b'\r';
        }
    }
}

/// The TLS settings for a relay: rustls with the system's CA store (as OpenSSL finds it:
/// `SSL_CERT_FILE`, `SSL_CERT_DIR`, the distribution's bundle) plus the relay's `ca_file`.
/// The error is the text for the queue.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 && ca_file.is_none() {
        tracing::warn!(errors = ?native.errors, "no CA certificate found on this machine");
    }
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad ca_file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "bad ca_file {}: no PEM certificate in it",
                ca.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("bad ca_file {}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(pieces: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        for p in pieces {
            s.stuff(p, &mut out);
        }
        out
    }

    #[test]
    fn a_dot_that_starts_a_line_is_doubled_wherever_the_pieces_split() {
        let want = b"..a\r\n..b\r\nc.d\r\n...\r\n".to_vec();
        assert_eq!(stuffed(&[b".a\r\n.b\r\nc.d\r\n..\r\n"]), want);
        assert_eq!(
            stuffed(&[b".a\r", b"\n", b".b\r\nc.", b"d\r\n..\r\n"]),
            want
        );
        // Only CR LF ends a line (a lone LF or CR is no line end in SMTP).
        assert_eq!(stuffed(&[b"a\n.b\r.c"]), b"a\n.b\r.c");
    }

    #[tokio::test]
    async fn the_data_goes_out_stuffed_and_ends_with_one_dot_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
                .await
                .unwrap();
            got
        });
        let mut big = b".first\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', PIECE * 2));
        big.extend_from_slice(b"\r\n.last\r\n");
        let mut conn = Connection::connect(&[addr]).await.unwrap();
        let ending = AtomicBool::new(false);
        conn.send_data(&Message::in_memory(big), &ending)
            .await
            .unwrap();
        assert!(ending.load(Ordering::SeqCst), "the dot is on its way");
        conn.send_data(&Message::in_memory(Vec::new()), &ending)
            .await
            .unwrap();
        drop(conn);
        let got = server.await.unwrap();
        let mut want = b"..first\r\n".to_vec();
        want.extend(std::iter::repeat_n(b'x', PIECE * 2));
        want.extend_from_slice(b"\r\n..last\r\n.\r\n\r\n.\r\n");
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn bytes_behind_the_go_ahead_to_starttls_stop_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // A man in the middle answers STARTTLS and adds a reply of his own behind it.
            s.write_all(b"220 2.0.0 Ready to start TLS\r\n250 AUTH PLAIN\r\n")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let mut conn = Connection::connect(&[addr]).await.unwrap();
        let reply = conn.read_reply().await.unwrap();
        assert_eq!(reply.code, 220);
        let config = tls_config(None).unwrap();
        let e = conn.start_tls(config, "localhost").await.unwrap_err();
        assert!(matches!(e, WireError::AfterStarttls), "{e}");
        assert!(!conn.is_encrypted());
    }
}
