//! What every measurement shares: the settings (full or smoke), the 4 KB message, and the one
//! Postfix smtp-sink on 127.0.0.1 that linkrelay and every peer send to.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use linkrelay_tests::postfix::TestCa;

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Smoke mode: tiny counts, one repetition; proves the bench runs, measures nothing.
    pub smoke: bool,
    /// Repetitions of each throughput measurement (the table shows the median).
    pub reps: usize,
    /// Messages per flush run, one user.
    pub flush_n: usize,
    /// Messages per user per flush run, four users at once.
    pub flush4_n: usize,
    /// Messages per run of smtp-source at concurrency 1 (four times as many at 4).
    pub source_n: usize,
    /// Messages per enqueue run (one process each).
    pub enqueue_n: usize,
    /// Messages per submission run over SMTP (one session, and four).
    pub submit_n: usize,
    /// Messages per run for the slow peers (msmtp, msmtpq, nullmailer).
    pub peer_n: usize,
    /// Samples of each reaction.
    pub reaction_n: usize,
    /// How long to count wake-ups while idle.
    pub idle: Duration,
    /// Messages queued for the scale measurement.
    pub scale_n: usize,
    /// Messages timed in the flush at scale.
    pub scale_flush_n: usize,
    /// Body bytes of the big message (the memory rows).
    pub big_message: usize,
}

impl Settings {
    /// The full run: about ten minutes on a 2-core machine.
    pub fn full() -> Settings {
        Settings {
            smoke: false,
            reps: 5,
            flush_n: 2000,
            flush4_n: 1000,
            source_n: 5000,
            enqueue_n: 200,
            submit_n: 2000,
            peer_n: 100,
            reaction_n: 21,
            idle: Duration::from_secs(60),
            scale_n: 100_000,
            scale_flush_n: 2000,
            big_message: 100 << 20,
        }
    }

    /// The smoke run: seconds.
    pub fn smoke() -> Settings {
        Settings {
            smoke: true,
            reps: 1,
            flush_n: 20,
            flush4_n: 10,
            source_n: 50,
            enqueue_n: 5,
            submit_n: 20,
            peer_n: 5,
            reaction_n: 3,
            idle: Duration::from_secs(1),
            scale_n: 300,
            scale_flush_n: 20,
            big_message: 2 << 20,
        }
    }
}

/// The envelope sender of user `n` (1-based) in every config of the bench.
pub fn sender(n: usize) -> String {
    format!("u{n}@bench.example")
}

/// The one envelope recipient.
pub const RCPT: &str = "rcpt@bench.example";

/// The message every tool sends: exactly 4096 bytes with LF line ends, as a mail client pipes
/// it into sendmail.
pub fn message() -> Vec<u8> {
    let mut m = format!(
        "From: {}\nTo: {RCPT}\nSubject: linkrelay bench\nMessage-ID: <bench@bench.example>\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n",
        sender(1)
    )
    .into_bytes();
    let line = [b"x".repeat(71), b"\n".to_vec()].concat();
    while m.len() + line.len() <= 4096 - 2 {
        m.extend_from_slice(&line);
    }
    while m.len() < 4095 {
        m.push(b'y');
    }
    m.push(b'\n');
    m
}

/// `text` with CRLF line ends (how the outbox stores a message).
pub fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 50);
    for &b in text {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Postfix's smtp-sink on 127.0.0.1: accepts everything, stores nothing.
pub struct Sink {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Sink {
    /// Starts it with a listen backlog of 256, dropping privileges to `nobody`.
    pub fn start() -> anyhow::Result<Sink> {
        let port = free_port()?;
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "nobody"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting /usr/sbin/smtp-sink (package postfix; run bench/install-deps)")?;
        let sink = Sink { child, port };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sink);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("smtp-sink never listened on 127.0.0.1:{port}")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS in front of the sink: stunnel (OpenSSL) on two loopback ports, one speaking TLS from
/// the first byte (port 465 style) and one offering STARTTLS (its `protocol = smtp`), both
/// passing the cleartext on to smtp-sink. The certificate names 127.0.0.1 and is signed by a
/// CA of the run, which the clients are told to trust.
pub struct TlsSink {
    child: Child,
    /// The implicit-TLS port.
    pub implicit: u16,
    /// The STARTTLS port.
    pub starttls: u16,
    /// The CA certificate (PEM), for the relay's `ca_file` and msmtp's `tls_trust_file`.
    pub ca: PathBuf,
}

impl TlsSink {
    /// Starts stunnel in front of the sink on `sink`, its files in `dir`.
    pub fn start(dir: &Path, sink: u16) -> anyhow::Result<TlsSink> {
        let dir = dir.join("tls-sink");
        std::fs::create_dir_all(&dir)?;
        let ca = TestCa::generate(&dir, &["IP:127.0.0.1".to_string()])?;
        let (implicit, starttls) = (free_port()?, free_port()?);
        let service = |name: &str, port: u16, extra: &str| {
            format!(
                "[{name}]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{sink}\n\
                 cert = {}\nkey = {}\n{extra}",
                ca.cert_pem.display(),
                ca.key_pem.display()
            )
        };
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = err\noutput = {}\n{}{}",
                dir.join("stunnel.log").display(),
                service("implicit", implicit, ""),
                service("starttls", starttls, "protocol = smtp\n")
            ),
        )?;
        let child = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting stunnel4 (package stunnel4; run bench/install-deps)")?;
        let sink = TlsSink {
            child,
            implicit,
            starttls,
            ca: ca.ca_pem,
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", implicit)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", starttls)).is_ok()
            {
                return Ok(sink);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("stunnel never listened on 127.0.0.1:{implicit} and :{starttls}")
    }
}

impl Drop for TlsSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `path` with mode `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_4_kib() {
        let m = message();
        assert_eq!(m.len(), 4096);
        assert!(m.ends_with(b"\n"));
        assert_eq!(crlf(b"a\nb\n"), b"a\r\nb\r\n");
    }
}
