//! The SMTP submission listener as a hostile or unlucky client meets it: another uid, a web
//! page, slow and vanishing clients, too much mail, a full disk, more clients than places, a
//! crash in the middle of a burst. Clients we did not write are in `listener_clients.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::World;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::util::eventually;

/// A desk: the agent with its listener on a loopback port and its unix socket, the office
/// link up, and a relay that records what it gets.
pub struct Desk {
    pub world: World,
    pub relay: ScriptedRelay,
    pub port: u16,
    _nm: FakeNm,
}

/// A free loopback port (free a moment ago).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The desk's config: user `me` for every sender, routed through the relay on the office
/// link, and the listener on `port`.
pub fn desk_config(relay: &ScriptedRelay, port: u16) -> Config {
    Config::new()
        .agent("debounce", "50ms")
        .submission("listen", [format!("127.0.0.1:{port}").as_str()])
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("r", relay.port()).timeout("5s"))
        .user(User::new("me").from(["*"]).route("office", ["r"]))
}

/// A desk with the default config, changed by `adjust`.
pub async fn desk_with(adjust: impl FnOnce(Config) -> Config) -> Desk {
    desk_for(RelayScript::default(), adjust).await
}

/// A desk whose relay plays `script`.
pub async fn desk_for(script: RelayScript, adjust: impl FnOnce(Config) -> Config) -> Desk {
    desk_wrapped(script, adjust, Vec::new()).await
}

/// A desk whose agent runs under the command `prefix` (e.g. tests/tools/without-sock-diag).
pub async fn desk_wrapped(
    script: RelayScript,
    adjust: impl FnOnce(Config) -> Config,
    prefix: Vec<String>,
) -> Desk {
    let relay = ScriptedRelay::start(script).await.unwrap();
    let port = free_port();
    let mut world = World::new().unwrap();
    world
        .write_config(&adjust(desk_config(&relay, port)).to_string())
        .unwrap();
    let nm = FakeNm::start(
        &world.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    world.set_agent_prefix(prefix);
    world.start_agent().await.unwrap();
    wait_listening(&world, port).await;
    Desk {
        world,
        relay,
        port,
        _nm: nm,
    }
}

pub async fn desk() -> Desk {
    desk_with(|c| c).await
}

/// Waits until the agent accepts connections on `port` and on its socket.
pub async fn wait_listening(world: &World, port: u16) {
    let socket = world.submission_socket();
    eventually("the listener is up", world, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A bare SMTP client, to say exactly what a test needs said.
pub struct Smtp {
    io: BufReader<Box<dyn Stream>>,
}

impl Smtp {
    pub async fn tcp(port: u16) -> Smtp {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        Smtp {
            io: BufReader::new(Box::new(stream)),
        }
    }

    pub async fn unix(path: &Path) -> Smtp {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        Smtp {
            io: BufReader::new(Box::new(stream)),
        }
    }

    /// The next whole reply (continuation lines joined with `\n`); `""` when the server
    /// closed the connection.
    pub async fn reply(&mut self) -> String {
        self.reply_within(Duration::from_secs(10))
            .await
            .expect("a reply within 10 s")
    }

    /// The next whole reply, or `None` if none came within `limit`.
    pub async fn reply_within(&mut self, limit: Duration) -> Option<String> {
        let read = async {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                if self.io.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_owned();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    break;
                }
            }
            lines.join("\n")
        };
        tokio::time::timeout(limit, read).await.ok()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// Sends `line` and a CRLF, and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Greeting, EHLO, MAIL, RCPT, DATA: ready for the message.
    pub async fn start_message(&mut self, from: &str, to: &str) {
        assert!(self.reply().await.starts_with("220 "));
        assert!(self.cmd("EHLO laptop").await.starts_with("250-"));
        assert_eq!(
            self.cmd(&format!("MAIL FROM:<{from}>")).await,
            "250 2.1.0 Ok"
        );
        assert_eq!(self.cmd(&format!("RCPT TO:<{to}>")).await, "250 2.1.5 Ok");
        assert!(self.cmd("DATA").await.starts_with("354 "));
    }

    /// True when the server has closed the connection (within 10 s).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A small message with `subject`.
pub fn message(subject: &str) -> String {
    format!(
        "From: me@example.org\r\nTo: you@dest.example\r\nSubject: {subject}\r\n\r\nHello from {subject}.\r\n"
    )
}

/// Whatever the outbox holds in `queue/`, `incoming/` (files and spool records) and `tmp/`.
fn leftovers(world: &World) -> Vec<String> {
    let root = world.data_dir.join("me");
    let mut out = world.outbox_entries("me", "queue");
    out.extend(world.outbox_entries("me", "tmp"));
    out.extend(
        world
            .outbox_entries("me", "incoming")
            .into_iter()
            .filter(|name| name != ".spool"),
    );
    let spool = std::fs::metadata(root.join("incoming/.spool")).map_or(0, |m| m.len());
    if spool > 0 {
        out.push(format!(".spool: {spool} bytes"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_gets_530_and_a_log_line_and_cannot_reach_the_socket() {
    let d = desk().await;
    let w = &d.world;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "swaks"])
        .args(["--server", &format!("127.0.0.1:{}", d.port)])
        .args(["--from", "me@example.org", "--to", "you@dest.example"])
        .output()
        .expect("setpriv and swaks run (scripts/install-test-deps)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("530 5.7.0 This linkrelay serves uid 0 only; you are uid 65534"),
        "{said}"
    );
    eventually("the refusal is logged", w, || {
        w.agent_log()
            .contains("refused a submission from uid 65534: this listener serves uid 0 only")
    })
    .await;
    // The socket lives in a 0700 directory, and is 0600 itself.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "swaks"])
        .arg("--socket")
        .arg(w.submission_socket())
        .args(["--from", "me@example.org", "--to", "you@dest.example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("220 "), "nobody reached the socket: {said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let socket = w.submission_socket();
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert!(leftovers(w).is_empty(), "{:?}", leftovers(w));
    assert!(d.relay.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_posting_through_the_browser_is_cut_off_at_its_first_line() {
    let d = desk().await;
    let mut c = Smtp::tcp(d.port).await;
    // What a page's fetch("http://127.0.0.1:PORT/", {method: "POST", body}) sends.
    c.send(
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\r\n\
          EHLO x\r\nMAIL FROM:<me@example.org>\r\nRCPT TO:<you@dest.example>\r\nDATA\r\n\
          Subject: spam\r\n\r\nspam\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("220 "));
    let refusal = c.reply().await;
    assert!(refusal.starts_with("421 4.7.0"), "{refusal}");
    assert!(refusal.contains("not a web server"), "{refusal}");
    assert!(c.closed().await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(leftovers(&d.world).is_empty());
    assert!(d.relay.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_mid_data_leaves_nothing_queued() {
    let d = desk().await;
    let mut c = Smtp::tcp(d.port).await;
    c.start_message("me@example.org", "you@dest.example").await;
    c.send(b"Subject: half\r\n\r\nthe first half of a mess")
        .await;
    drop(c);
    // A whole message afterwards goes through, and is the only one.
    let mut c = Smtp::unix(&d.world.submission_socket()).await;
    c.start_message("me@example.org", "you@dest.example").await;
    c.send(format!("{}.\r\n", message("whole")).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    let got = d.relay.wait_for(1, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.relay.received().len(), 1);
    assert!(got[0].data_text().contains("Subject: whole"));
    assert!(leftovers(&d.world).is_empty(), "{:?}", leftovers(&d.world));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_per_command_and_for_the_whole_data() {
    let d = desk_with(|c| {
        c.submission("timeout", "1s")
            .submission("data_timeout", "2s")
    })
    .await;
    // A command dribbled a byte at a time does not keep the session: the limit is per command.
    let mut c = Smtp::tcp(d.port).await;
    assert!(c.reply().await.starts_with("220 "));
    let start = Instant::now();
    let mut refused = None;
    for b in b"MAIL FROM:<me@example.org>".iter().cycle().take(40) {
        c.send(&[*b]).await;
        if let Some(r) = c.reply_within(Duration::from_millis(200)).await {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the listener gave up on the slow command");
    assert!(refused.starts_with("421 4.4.2"), "{refused}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(c.closed().await);

    // Data that comes a line at a time, each within the command limit, still has to end
    // within the DATA limit.
    let mut c = Smtp::tcp(d.port).await;
    c.start_message("me@example.org", "you@dest.example").await;
    let start = Instant::now();
    let mut cut = None;
    for i in 0..20 {
        c.send(format!("line {i}\r\n").as_bytes()).await;
        if let Some(r) = c.reply_within(Duration::from_millis(500)).await {
            cut = Some(r);
            break;
        }
    }
    let cut = cut.expect("the listener gave up on the slow data");
    assert!(cut.starts_with("421 4.4.2"), "{cut}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(leftovers(&d.world).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_gets_552_and_the_session_goes_on() {
    let d = desk_with(|c| c.outbox("max_message_size", 10_000u64)).await;
    let mut c = Smtp::tcp(d.port).await;
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.cmd("EHLO laptop").await;
    assert!(ehlo.contains("250-SIZE 10000"), "{ehlo}");
    // Said up front...
    let r = c.cmd("MAIL FROM:<me@example.org> SIZE=20000").await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // ...or found out on the way.
    assert_eq!(c.cmd("MAIL FROM:<me@example.org>").await, "250 2.1.0 Ok");
    assert_eq!(c.cmd("RCPT TO:<you@dest.example>").await, "250 2.1.5 Ok");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    let big = "x".repeat(76) + "\r\n";
    c.send(format!("Subject: big\r\n\r\n{}.\r\n", big.repeat(300)).as_bytes())
        .await;
    let r = c.reply().await;
    assert!(
        r.starts_with("552 5.3.4 Message size exceeds the limit of 10000 bytes"),
        "{r}"
    );
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    assert!(leftovers(&d.world).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_belongs_to_no_user_gets_550_with_the_reason() {
    let d = desk().await;
    // desk_config's user `me` takes every sender: a config where nobody does instead.
    let config = Config::new()
        .agent("debounce", "50ms")
        .submission("listen", [format!("127.0.0.1:{}", d.port).as_str()])
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("r", d.relay.port()).timeout("5s"))
        .user(
            User::new("me")
                .from(["me@example.org"])
                .route("office", ["r"]),
        )
        .user(
            User::new("other")
                .from(["*@other.example"])
                .route("office", ["r"]),
        );
    d.world.write_config(&config.to_string()).unwrap();
    // `linkrelay reload` answers once the new config is in force, the listener's included.
    let out = d.world.run_cli(&["reload"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Smtp::tcp(d.port).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO laptop").await;
    let r = c.cmd("MAIL FROM:<stranger@nowhere.example>").await;
    assert_eq!(
        r,
        "550 5.7.1 sender <stranger@nowhere.example> belongs to no linkrelay user: no [[user]] \
         has a `from` pattern matching it and none is `default = true`"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@other.example>").await, "250 2.1.0 Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_opens_and_closes_listen_addresses() {
    let d = desk().await;
    let second = free_port();
    let config = desk_config(&d.relay, second);
    d.world.write_config(&config.to_string()).unwrap();
    d.world.hup_agent();
    eventually(
        "the new address listens and the old one does not",
        &d.world,
        || {
            std::net::TcpStream::connect(("127.0.0.1", second)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", d.port)).is_err()
        },
    )
    .await;
    let mut c = Smtp::tcp(second).await;
    c.start_message("me@example.org", "you@dest.example").await;
    c.send(format!("{}.\r\n", message("after reload")).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_max_sessions_wait_for_a_place() {
    let d = desk_with(|c| c.submission("max_sessions", 2u16)).await;
    let mut first = Smtp::tcp(d.port).await;
    assert!(first.reply().await.starts_with("220 "));
    let mut second = Smtp::tcp(d.port).await;
    assert!(second.reply().await.starts_with("220 "));
    let mut third = Smtp::tcp(d.port).await;
    assert_eq!(
        third.reply_within(Duration::from_millis(500)).await,
        None,
        "a third client is not served while two are"
    );
    // As many may wait; one more is told to come back later.
    let mut fourth = Smtp::unix(&d.world.submission_socket()).await;
    assert_eq!(fourth.reply_within(Duration::from_millis(300)).await, None);
    let mut fifth = Smtp::tcp(d.port).await;
    let busy = fifth.reply().await;
    assert!(
        busy.starts_with("421 4.7.0") && busy.contains("Too many connections"),
        "{busy}"
    );
    assert!(first.cmd("QUIT").await.starts_with("221 "));
    let greeting = third.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(second.cmd("NOOP").await.starts_with("250 "));
    drop(second);
    assert!(fourth.reply().await.starts_with("220 "));
}

/// A small tmpfs mounted over `dir`; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills it until about `bytes` are left.
    fn leave_free(&self, bytes: u64) {
        let stat = rustix::fs::statvfs(&self.0).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        std::fs::write(self.0.join("filler"), vec![0u8; (free - bytes) as usize]).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_452_and_leaves_nothing_behind() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let port = free_port();
    let mut w = World::new().unwrap();
    // No link: what is queued stays, so the test sees the outbox as the listener left it.
    w.write_config(&desk_config(&relay, port).to_string())
        .unwrap();
    let disk = Tmpfs::mount(&w.data_dir, "1m");
    w.start_agent().await.unwrap();
    wait_listening(&w, port).await;
    let spool = w.data_dir.join("me/incoming/.spool");
    eventually("the agent made its spool", &w, || spool.exists()).await;
    disk.leave_free(24 * 1024);

    let mut c = Smtp::tcp(port).await;
    c.start_message("me@example.org", "you@dest.example").await;
    let line = "y".repeat(76) + "\r\n";
    c.send(format!("Subject: too much\r\n\r\n{}.\r\n", line.repeat(1000)).as_bytes())
        .await;
    let r = c.reply().await;
    assert!(
        r.starts_with("452 4.3.1 Insufficient system storage"),
        "{r}"
    );
    assert_eq!(
        std::fs::metadata(&spool).unwrap().len(),
        0,
        "nothing of it in the spool"
    );
    assert!(leftovers(&w).is_empty(), "{:?}", leftovers(&w));

    // The session goes on, and with room again the same message is taken.
    std::fs::remove_file(w.data_dir.join("filler")).unwrap();
    assert_eq!(c.cmd("MAIL FROM:<me@example.org>").await, "250 2.1.0 Ok");
    assert_eq!(c.cmd("RCPT TO:<you@dest.example>").await, "250 2.1.5 Ok");
    assert!(c.cmd("DATA").await.starts_with("354 "));
    c.send(format!("Subject: fits now\r\n\r\n{}.\r\n", line.repeat(1000)).as_bytes())
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(w.wait_entries("me", "queue", 1).await.len(), 1);
    w.stop_agent();
    drop(disk);
}

/// Sends `count` messages on one session; returns the subjects that got 250 before the
/// connection broke, counting them in `acks` as they come.
async fn burst(port: u16, session: usize, count: usize, acks: Arc<AtomicUsize>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut c = Smtp::tcp(port).await;
    if !c.reply().await.starts_with("220 ") || !c.cmd("EHLO burst").await.starts_with("250") {
        return acked;
    }
    for i in 0..count {
        let subject = format!("burst {session}-{i:03}");
        // Pipelined, as a client that saw PIPELINING sends it.
        c.send(
            format!(
                "MAIL FROM:<me@example.org>\r\nRCPT TO:<you@dest.example>\r\nDATA\r\n{}.\r\n",
                message(&subject)
            )
            .as_bytes(),
        )
        .await;
        let replies = [
            c.reply().await,
            c.reply().await,
            c.reply().await,
            c.reply().await,
        ];
        if replies[3].starts_with("250 2.0.0 Ok: queued") {
            acked.push(subject);
            acks.fetch_add(1, Ordering::SeqCst);
        } else {
            break;
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_burst_of_200_over_4_sessions_loses_nothing_that_got_250() {
    let mut d = desk().await;
    let port = d.port;
    let acks = Arc::new(AtomicUsize::new(0));
    let sessions: Vec<_> = (0..4)
        .map(|s| {
            let acks = acks.clone();
            tokio::spawn(async move { burst(port, s, 50, acks).await })
        })
        .collect();
    // Kill it somewhere in the middle of the burst.
    let kill_after = 40 + rand::random::<u64>() as usize % 100;
    eventually("the burst is under way", &d.world, || {
        acks.load(Ordering::SeqCst) >= kill_after
    })
    .await;
    d.world.kill_agent();
    let mut acked = Vec::new();
    for s in sessions {
        acked.extend(s.await.unwrap());
    }
    eprintln!("{} messages got 250 before the kill", acked.len());
    assert!(acked.len() < 200, "the kill came after the burst");
    d.world.start_agent().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = crate::util::subjects(&d.relay);
        let missing: Vec<&String> = acked.iter().filter(|s| !delivered.contains(s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never arrived, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            d.world.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
