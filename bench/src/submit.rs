//! Submission over SMTP: Postfix's smtp-source (`-d`: one session reused for every message)
//! hands the 4 KB message to a local submission server, with one session and with four at
//! once. A message counts once its final dot got 250, which each server sends only when the
//! message is on disk: linkrelay's listener (group commit into the outbox's spool), Postfix's
//! own smtpd -> cleanup -> queue (a private instance, queue file fsync'd), and msmtpd piping
//! each message to msmtpq (a shell script that writes a queue file, not fsync'd). Each server
//! passes the mail on to the one smtp-sink meanwhile (msmtpq's relay is down: it queues).
//! Also: the memory one idle session costs linkrelay's agent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::run;
use linkrelay_tests::world::World;

use crate::env::{RCPT, Settings, free_port, sender};
use crate::ours::Agent;
use crate::peers::{Msmtp, Postfix};

/// Where msmtpq lives in Debian's msmtp package.
const MSMTPQ: &str = "/usr/libexec/msmtp/msmtpq/msmtpq";

/// Idle sessions opened to measure what one costs.
const IDLE_SESSIONS: usize = 200;

/// msg/s with one session and with four, per repetition.
#[derive(Debug, Default)]
pub struct Rates {
    pub one: Vec<f64>,
    pub four: Vec<f64>,
}

/// linkrelay's figures.
pub struct Figures {
    pub rates: Rates,
    /// KiB of agent RSS per idle session (after EHLO).
    pub idle_session_kib: f64,
    /// ms per append + fdatasync of 4 KB on the outbox's disk, measured during the run: the
    /// floor under one session's rate.
    pub fdatasync_ms: f64,
}

/// smtp-source with session reuse against `server` (`127.0.0.1:PORT` or `unix:PATH`):
/// `sessions` at once, `n` 4 KB messages: msg/s.
fn smtp_source(server: &str, sessions: usize, n: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    run(Command::new("/usr/sbin/smtp-source")
        .args(["-d", "-s", &sessions.to_string(), "-m", &n.to_string()])
        .args([
            "-l",
            "4096",
            "-M",
            "bench.localdomain",
            "-f",
            &sender(1),
            "-t",
            RCPT,
        ])
        .arg(server))?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn rates(s: &Settings, server: &str, n: usize) -> anyhow::Result<Rates> {
    let mut r = Rates::default();
    for _ in 0..s.reps {
        r.one.push(smtp_source(server, 1, n)?);
        r.four.push(smtp_source(server, 4, n)?);
    }
    Ok(r)
}

/// The ms an append and `fdatasync` of 4 KB take in `dir` now (median of 50).
fn fdatasync_ms(dir: &Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path)?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        f.write_all(&[b'x'; 4096])?;
        f.sync_data()?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    crate::stats::median(&times).context("no samples")
}

/// linkrelay: the agent with its listener on a loopback port, the office link up, sending
/// to the sink.
pub async fn ours(s: &Settings, sink: u16) -> anyhow::Result<Figures> {
    let port = free_port()?;
    let w = World::new()?;
    let config = Config::new()
        .agent("debounce", "300ms")
        .submission("listen", [format!("127.0.0.1:{port}").as_str()])
        // Room for the idle sessions measured below (the default is 32).
        .submission("max_sessions", 256u16)
        .link(Link::new("office").id("Office"))
        .relay(
            Relay::local("office-relay", sink)
                .set("helo", "bench.localdomain")
                .timeout("30s"),
        )
        .user(
            User::new("u1")
                .from(["*"])
                .route("office", ["office-relay"]),
        );
    w.write_config(&config.to_string())?;
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await?;
    let (agent, _) = Agent::start(&w, &w.dir().join("linkrelayd.log")).await?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the listener never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fdatasync_ms = fdatasync_ms(&w.data_dir)?;
    let rates = rates(s, &format!("127.0.0.1:{port}"), s.submit_n)?;
    let idle_session_kib = idle_cost(&agent, port).await?;
    Ok(Figures {
        rates,
        idle_session_kib,
        fdatasync_ms,
    })
}

/// KiB of the agent's RSS per idle session: RSS with [`IDLE_SESSIONS`] sessions open (each
/// greeted and past EHLO), less RSS before, divided by their number.
async fn idle_cost(agent: &Agent, port: u16) -> anyhow::Result<f64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = agent.sample().rss_kib;
    let mut sessions = Vec::with_capacity(IDLE_SESSIONS);
    let open = async {
        for _ in 0..IDLE_SESSIONS {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let mut io = BufReader::new(stream);
            let mut line = String::new();
            io.read_line(&mut line).await?;
            ensure!(line.starts_with("220 "), "greeting {line:?}");
            io.get_mut().write_all(b"EHLO idle\r\n").await?;
            loop {
                line.clear();
                io.read_line(&mut line).await?;
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    break;
                }
            }
            sessions.push(io);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(60), open)
        .await
        .context("the idle sessions were not all served within 60 s")??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = agent.sample().rss_kib;
    drop(sessions);
    Ok(after.saturating_sub(before) as f64 / IDLE_SESSIONS as f64)
}

/// Postfix: a private instance whose smtpd listens on a loopback port (smtpd -> cleanup ->
/// incoming/, then qmgr to the sink).
pub fn postfix(s: &Settings, work: &Path, sink: u16) -> anyhow::Result<Rates> {
    let port = free_port()?;
    let mut pf = Postfix::with_smtpd(&work.join("submit"), sink, port)?;
    pf.start()?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            pf.stop();
            bail!("Postfix's smtpd never listened on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = rates(s, &format!("127.0.0.1:{port}"), s.submit_n);
    pf.stop();
    r
}

/// msmtpd (extracted from Debian's msmtp-mta, which conflicts with postfix as a package),
/// piping each message to msmtpq, whose relay is down (so it queues).
pub fn msmtpd(s: &Settings, root: &Path, work: &Path) -> anyhow::Result<Rates> {
    let msmtp = Msmtp::new(&work.join("msmtpd"), free_port()?)?;
    let port = free_port()?;
    let mut cmd = msmtp.command(root.join("usr/bin/msmtpd"), false);
    cmd.args(["--interface=127.0.0.1", &format!("--port={port}")])
        .arg(format!("--command={MSMTPQ} -f %F --"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Daemon(cmd.spawn().context("starting msmtpd")?);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "msmtpd never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let n = s.peer_n;
    let r = rates(s, &format!("127.0.0.1:{port}"), n)?;
    ensure!(
        msmtp.queued() == 2 * s.reps * n,
        "msmtpq queued {} of {}",
        msmtp.queued(),
        2 * s.reps * n
    );
    drop(child);
    Ok(r)
}

/// A child killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
