//! linkrelay's side: the release `linkrelayd` and `linkrelay` in a private world (session and
//! system dbus-daemons, the NM-shaped FakeNm), sending to the shared smtp-sink.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use linkrelay_dbus::agent::{AGENT_BUS_NAME, AGENT_PATH, AgentProxy};
use linkrelay_outbox::{Envelope, Outbox};
use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, bin};
use zbus::{MatchRule, MessageStream};

use crate::env::{RCPT, Settings, crlf, message, sender};
use crate::procfs;
use crate::seed;

/// The office link (ethernet) and the café link (wifi).
fn office() -> ActiveSpec {
    ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")
}
fn cafe() -> ActiveSpec {
    ActiveSpec::wifi("Cafe", "wlan0", "CafeNet", "198.51.100.1")
}

/// A config with `users` users (u1..), both links, and two relay names for one server (so a
/// link change is a route change).
pub fn config(port: u16, users: usize) -> String {
    config_builder(port, users).to_string()
}

/// [`config`], to add to.
fn config_builder(port: u16, users: usize) -> Config {
    let relay = |name: &str| {
        Relay::local(name, port)
            .set("helo", "bench.localdomain")
            .timeout("30s")
    };
    let mut config = Config::new()
        .agent("debounce", "300ms")
        .link(Link::new("office").id("Office"))
        .link(Link::new("cafe").id("Cafe"))
        .relay(relay("office-relay"))
        .relay(relay("cafe-relay"));
    for n in 1..=users {
        let user = User::new(&format!("u{n}"))
            .from([sender(n).as_str()])
            .route("office", ["office-relay"])
            .route("cafe", ["cafe-relay"]);
        config = config.user(if n == 1 {
            user.set("default", true)
        } else {
            user
        });
    }
    config
}

/// A running `linkrelayd`, stopped with SIGTERM on drop.
pub struct Agent {
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
}

impl Agent {
    /// Starts the release `linkrelayd` in `w` (logging at its default level, info, to
    /// `log`) and returns it with the time from spawn to owning its bus name (ready).
    pub async fn start(w: &World, log: &Path) -> anyhow::Result<(Agent, Duration)> {
        let conn = w.session.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let name = zbus::names::BusName::try_from(AGENT_BUS_NAME)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = Command::new(bin("linkrelayd"));
        w.env(&mut cmd);
        // The world's environment is a clean one; RUST_LOG passes through, for debugging.
        if let Some(level) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin("linkrelayd").display()))?;
        let pid = child.id();
        loop {
            if dbus.name_has_owner(name.clone()).await? {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("linkrelayd exited with {status}");
            }
            if t0.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                bail!("linkrelayd did not claim its name within 120 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let ready = t0.elapsed();
        Ok((
            Agent {
                child: Some(child),
                pid,
            },
            ready,
        ))
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            for _ in 0..500 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Memory and switches now.
    pub fn sample(&self) -> procfs::Sample {
        procfs::sample(self.pid).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Timestamps of signals as they arrive (recorded by a task of their own, so that the
/// instant is the arrival, not when the measuring code got round to looking).
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<(Instant, String)>>>);

impl Recorder {
    /// Records every signal matching `rule` on `conn`.
    pub async fn start(
        conn: &zbus::Connection,
        rule: MatchRule<'static>,
    ) -> anyhow::Result<Recorder> {
        let rec = Recorder::default();
        let mut stream = MessageStream::for_match_rule(rule, conn, None).await?;
        let seen = rec.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let at = Instant::now();
                let member = msg
                    .header()
                    .member()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((at, member));
            }
        });
        Ok(rec)
    }

    /// The first signal named `member` (any, when empty) at or after `since`.
    pub fn first_after(&self, since: Instant, member: &str) -> Option<Instant> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .find(|(at, m)| *at >= since && (member.is_empty() || m == member))
            .map(|(at, _)| *at)
    }

    /// How many signals named `member` arrived at or after `since`, and the instant of the
    /// `nth` (1-based) of them.
    pub fn nth_after(&self, since: Instant, member: &str, nth: usize) -> (usize, Option<Instant>) {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut it = seen.iter().filter(|(at, m)| *at >= since && m == member);
        let count = it.clone().count();
        (count, it.nth(nth.saturating_sub(1)).map(|(at, _)| *at))
    }

    /// Waits until `ok` holds (polling every millisecond), up to `limit`.
    pub async fn wait(
        &self,
        limit: Duration,
        ok: impl Fn(&Recorder) -> bool,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        while !ok(self) {
            if t.elapsed() > limit {
                bail!("timed out after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

fn agent_signals() -> anyhow::Result<MatchRule<'static>> {
    Ok(MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(AGENT_BUS_NAME)
        .path(AGENT_PATH)
        .build()?)
}

/// A world with `users` users, both links up (Office primary), the agent running.
struct Setup {
    w: World,
    nm: FakeNm,
    agent: Agent,
}

impl Setup {
    async fn new(port: u16, users: usize, links: Vec<ActiveSpec>) -> anyhow::Result<Setup> {
        Setup::with_config(&config(port, users), links).await
    }

    async fn with_config(config: &str, links: Vec<ActiveSpec>) -> anyhow::Result<Setup> {
        let w = World::new()?;
        w.write_config(config)?;
        let nm = FakeNm::start(&w.system.address, links, 4).await?;
        let (agent, _) = Agent::start(&w, &w.dir().join("linkrelayd.log")).await?;
        Ok(Setup { w, nm, agent })
    }

    fn outbox(&self, user: usize) -> PathBuf {
        self.w.data_dir.join(format!("u{user}"))
    }

    /// What to look at when a run went wrong: each user's folders, the agent's warnings and
    /// errors, its last lines, and where the whole log was kept.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.w.dir().join("linkrelayd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = String::new();
        for u in 1..=4 {
            let root = self.outbox(u);
            if root.exists() {
                out.push_str(&format!(
                    "u{u}: queue {} incoming {} sent {} failed {}\n",
                    seed::count(&root, "queue"),
                    seed::count(&root, "incoming"),
                    seed::count(&root, "sent"),
                    seed::count(&root, "failed")
                ));
                for e in std::fs::read_dir(root.join("failed"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .take(3)
                {
                    let state =
                        std::fs::read_to_string(e.path().join("state.json")).unwrap_or_default();
                    out.push_str(&format!(
                        "  failed/{}: {state}\n",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
        for l in lines
            .iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(20)
        {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
        if let Some(kept) = self.keep_log() {
            out.push_str(&format!("\n(the whole agent log: {})", kept.display()));
        }
        out
    }

    /// Copies the agent's log to `$TMPDIR/linkrelay-bench-agent.log`: the world (and the log
    /// in it) goes away with the run. Returns where, if it could.
    fn keep_log(&self) -> Option<PathBuf> {
        let keep = std::env::temp_dir().join("linkrelay-bench-agent.log");
        std::fs::copy(self.w.dir().join("linkrelayd.log"), &keep).ok()?;
        Some(keep)
    }
}

/// Flush throughput results.
pub struct FlushFigures {
    /// msg/s, one user, per repetition.
    pub one: Vec<f64>,
    /// msg/s, four users at once, per repetition.
    pub four: Vec<f64>,
    /// RSS in KiB of the agent after all that, idle.
    pub rss_after_kib: u64,
}

/// Flush throughput: seed the outboxes (not timed), then `Flush(user, wait)` over D-Bus; the
/// call returns when every outcome is durably recorded.
pub async fn flush(s: &Settings, port: u16) -> anyhow::Result<FlushFigures> {
    let setup = Setup::new(port, 4, vec![office(), cafe()]).await?;
    let agent = setup.w.agent().await?;
    let msg = crlf(&message());
    let mut one = Vec::new();
    let mut four = Vec::new();
    for _ in 0..s.reps {
        one.push(flush_one_user(&setup, &agent, s.flush_n, &msg, "flush").await?);

        for u in 1..=4 {
            seed::seed(&setup.outbox(u), s.flush4_n, &sender(u), RCPT, &msg)?;
        }
        let t = Instant::now();
        let r = agent.flush("", true).await?;
        let dt = t.elapsed().as_secs_f64();
        let sent: u32 = r.iter().map(|f| f.sent).sum();
        ensure!(
            sent as usize == 4 * s.flush4_n,
            "4-user flush sent {sent} of {}: {r:?}\n{}",
            4 * s.flush4_n,
            setup.log_tail()
        );
        four.push((4 * s.flush4_n) as f64 / dt);
        for u in 1..=4 {
            seed::clear_sent(&setup.outbox(u))?;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    if std::env::var_os("LINKRELAY_BENCH_KEEP_LOG").is_some() {
        setup.keep_log();
    }
    let rss_after_kib = setup.agent.sample().rss_kib;
    drop(setup);
    Ok(FlushFigures {
        one,
        four,
        rss_after_kib,
    })
}

/// Flush throughput of one user over TLS (`tls` is the relay's `tls`: "starttls" or
/// "tls"), the relay at `port` checked against the CA in `ca_file`: msg/s per repetition.
pub async fn flush_tls(
    s: &Settings,
    port: u16,
    tls: &str,
    ca_file: &Path,
) -> anyhow::Result<Vec<f64>> {
    let relay = Relay::local("office-relay", port)
        .tls(tls)
        .ca_file(ca_file)
        .set("helo", "bench.localdomain")
        .timeout("30s");
    let config = Config::new()
        .agent("debounce", "300ms")
        .link(Link::new("office").id("Office"))
        .relay(relay)
        .user(
            User::new("u1")
                .from([sender(1).as_str()])
                .set("default", true)
                .route("office", ["office-relay"]),
        );
    let setup = Setup::with_config(&config.to_string(), vec![office()]).await?;
    let agent = setup.w.agent().await?;
    let msg = crlf(&message());
    let mut rates = Vec::new();
    let what = format!("flush over {tls}");
    for _ in 0..s.reps {
        rates.push(flush_one_user(&setup, &agent, s.flush_n, &msg, &what).await?);
    }
    Ok(rates)
}

/// Seeds `n` messages for u1, flushes them (`Flush("u1", wait)`), checks that all went to
/// sent/, clears it: msg/s. `what` names the row in an error.
async fn flush_one_user(
    setup: &Setup,
    agent: &AgentProxy<'_>,
    n: usize,
    msg: &[u8],
    what: &str,
) -> anyhow::Result<f64> {
    seed::seed(&setup.outbox(1), n, &sender(1), RCPT, msg)?;
    let t = Instant::now();
    let r = agent.flush("u1", true).await?;
    let dt = t.elapsed().as_secs_f64();
    let sent: u32 = r.iter().map(|f| f.sent).sum();
    ensure!(
        sent as usize == n && seed::count(&setup.outbox(1), "sent") == n,
        "{what} sent {sent} of {n}: {r:?}\n{}",
        setup.log_tail()
    );
    seed::clear_sent(&setup.outbox(1))?;
    Ok(n as f64 / dt)
}

/// Runs `linkrelay sendmail -f u1 rcpt` `n` times, one process per message, each waiting for
/// the previous; returns msg/s.
fn sendmail_run(w: &World, n: usize, msg: &[u8]) -> anyhow::Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        let mut cmd = w.cli();
        cmd.args(["sendmail", "-i", "-f", &sender(1), RCPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        child.stdin.take().context("stdin")?.write_all(msg)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "linkrelay sendmail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Enqueue rates: (agent sending as messages come, agent holding with no link).
pub async fn enqueue(s: &Settings, port: u16) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let setup = Setup::new(port, 1, vec![office()]).await?;
    let msg = message();
    let mut online = Vec::new();
    let mut offline = Vec::new();
    for _ in 0..s.reps {
        online.push(sendmail_run(&setup.w, s.enqueue_n, &msg)?);
    }
    // Everything sent: the online runs really went out.
    let deadline = Instant::now() + Duration::from_secs(60);
    let root = setup.outbox(1);
    while (seed::count(&root, "queue") > 0 || seed::incoming_waits(&root))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        seed::count(&setup.outbox(1), "sent") == s.reps * s.enqueue_n,
        "not every enqueued message was sent\n{}",
        setup.log_tail()
    );
    setup.nm.deactivate("Office").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..s.reps {
        offline.push(sendmail_run(&setup.w, s.enqueue_n, &msg)?);
    }
    // sendmail hands mail to the running agent through incoming/; wait for it to be queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seed::incoming_waits(&root) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        seed::count(&setup.outbox(1), "queue") == s.reps * s.enqueue_n,
        "offline messages missing from queue/"
    );
    Ok((online, offline))
}

/// How long after a link becomes primary real NetworkManager (1.42) reports its connectivity
/// FULL (measured on the two-ISP namespaces of the realnet tests).
const NM_CHECK_STEP: Duration = Duration::from_millis(7);

/// Reaction samples in ms: (NM PropertiesChanged -> RouteChanged, link up -> message accepted).
pub async fn reaction(s: &Settings) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let relay = ScriptedRelay::start(RelayScript::named("bench.relay")).await?;
    let setup = Setup::new(relay.port(), 1, vec![]).await?;
    let session = setup.w.session.connect().await?;
    let agent_rec = Recorder::start(&session, agent_signals()?).await?;
    let system = setup.w.system.connect().await?;
    let nm_rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.NetworkManager")
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .build()?;
    let nm_rec = Recorder::start(&system, nm_rule).await?;
    let outbox = Outbox::open(&setup.outbox(1))?;
    let env = Envelope {
        from: sender(1),
        recipients: vec![RCPT.into()],
        dsn: None,
    };
    let msg = crlf(&message());
    let quiet = Duration::from_millis(400); // longer than the debounce: the leading edge applies

    // Link up -> first message accepted by the relay. NetworkManager announces it in steps:
    // the link becomes PrimaryConnection while its device's connectivity is not checked yet
    // (NONE here), and turns FULL about 7 ms later; both steps are part of each sample.
    let mut accepted = Vec::new();
    setup.nm.activate(office()).await?;
    setup.nm.deactivate("Office").await?;
    for k in 1..=s.reaction_n {
        outbox.enqueue(&env, &msg)?;
        setup.nm.set_device_connectivity("eth0", 1, 1).await?;
        tokio::time::sleep(quiet).await;
        let t0 = Instant::now();
        setup.nm.activate(office()).await?;
        tokio::time::sleep(NM_CHECK_STEP).await;
        setup.nm.set_device_connectivity("eth0", 4, 1).await?;
        relay
            .wait_for(k, Duration::from_secs(10))
            .await
            .with_context(|| setup.log_tail())?;
        accepted.push(t0.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        setup.nm.deactivate("Office").await?;
        tokio::time::sleep(quiet).await;
    }

    // PropertiesChanged -> RouteChanged, switching the primary link back and forth.
    setup.nm.activate(cafe()).await?;
    setup.nm.activate(office()).await?;
    tokio::time::sleep(quiet).await;
    let mut routed = Vec::new();
    for i in 0..s.reaction_n {
        let to = if i % 2 == 0 { "Cafe" } else { "Office" };
        let start = Instant::now();
        setup.nm.set_primary(to).await?;
        agent_rec
            .wait(Duration::from_secs(10), |r| {
                r.first_after(start, "RouteChanged").is_some()
            })
            .await
            .with_context(|| {
                format!(
                    "no RouteChanged after switching to {to}\n{}",
                    setup.log_tail()
                )
            })?;
        let t0 = nm_rec
            .first_after(start, "")
            .context("no PropertiesChanged seen")?;
        let t1 = agent_rec
            .first_after(start, "RouteChanged")
            .context("no RouteChanged")?;
        routed.push(t1.saturating_duration_since(t0).as_secs_f64() * 1e3);
        tokio::time::sleep(quiet).await;
    }
    Ok((routed, accepted))
}

/// Idle figures over the same window: a freshly started agent and the processes `others`
/// (a peer, idle too). Returns ((our RSS KiB, our wake-ups/min), (theirs)).
pub async fn idle(
    s: &Settings,
    port: u16,
    others: &[u32],
) -> anyhow::Result<((u64, f64), (u64, f64))> {
    let setup = Setup::new(port, 1, vec![office()]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, pa) = (setup.agent.sample(), procfs::sample_all(others));
    tokio::time::sleep(s.idle).await;
    let (b, pb) = (setup.agent.sample(), procfs::sample_all(others));
    let per_min = |x: u64, y: u64| y.saturating_sub(x) as f64 * 60.0 / s.idle.as_secs_f64();
    Ok((
        (b.rss_kib, per_min(a.switches, b.switches)),
        (pb.rss_kib, per_min(pa.switches, pb.switches)),
    ))
}

/// Scale figures.
pub struct ScaleFigures {
    /// Spawn to bus name owned, seconds, per start.
    pub startup: Vec<f64>,
    /// `linkrelay queue --json --user u1`, seconds, per run.
    pub queue_json: Vec<f64>,
    /// Peak RSS of the agent (VmHWM), KiB, over start, listing and flush.
    pub peak_kib: u64,
    /// Steady flush rate with the big queue, msg/s.
    pub flush: f64,
    /// Link up -> first MessageSent, seconds (the whole queue is read first).
    pub first_sent: f64,
}

/// With `scale_n` messages queued for one user.
pub async fn scale(s: &Settings, port: u16) -> anyhow::Result<ScaleFigures> {
    let w = World::new()?;
    w.write_config(&config(port, 1))?;
    let nm = FakeNm::start(&w.system.address, vec![], 4).await?;
    let root = w.data_dir.join("u1");
    seed::seed(&root, s.scale_n, &sender(1), RCPT, &crlf(&message()))?;
    let log = w.dir().join("linkrelayd.log");
    let mut startup = Vec::new();
    for _ in 0..s.reps.min(3) {
        let (mut a, ready) = Agent::start(&w, &log).await?;
        startup.push(ready.as_secs_f64());
        a.stop();
    }
    let (agent, _) = Agent::start(&w, &log).await?;
    let mut queue_json = Vec::new();
    for _ in 0..s.reps.min(3) {
        let t = Instant::now();
        let out = w
            .cli()
            .args(["queue", "--json", "--user", "u1"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        queue_json.push(t.elapsed().as_secs_f64());
        ensure!(
            out.status.success(),
            "linkrelay queue --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let n = v.as_array().map(Vec::len).unwrap_or(0);
        ensure!(
            n == s.scale_n,
            "queue --json listed {n} of {} messages",
            s.scale_n
        );
    }
    let session = w.session.connect().await?;
    let rec = Recorder::start(&session, agent_signals()?).await?;
    let t0 = Instant::now();
    nm.activate(office()).await?;
    let want = s.scale_flush_n + 1;
    rec.wait(Duration::from_secs(600), |r| {
        r.nth_after(t0, "MessageSent", want).0 >= want
    })
    .await
    .context("the flush at scale did not get far enough")?;
    let (_, first) = rec.nth_after(t0, "MessageSent", 1);
    let (_, last) = rec.nth_after(t0, "MessageSent", want);
    let (first, last) = (first.context("first")?, last.context("last")?);
    let peak_kib = agent.sample().hwm_kib;
    drop(agent);
    drop(nm);
    Ok(ScaleFigures {
        startup,
        queue_json,
        peak_kib,
        flush: s.scale_flush_n as f64 / (last - first).as_secs_f64(),
        first_sent: (first - t0).as_secs_f64(),
    })
}

/// Memory for one big message, KiB.
pub struct BigFigures {
    /// Peak RSS of `linkrelay sendmail` queueing it (the kernel's figure for the process).
    pub sendmail_kib: u64,
    /// Peak RSS (VmHWM) of a fresh agent that took it in and sent it.
    pub agent_kib: u64,
}

/// One message of `s.big_message` body bytes: `linkrelay sendmail` queues it while an agent
/// runs on a link whose relay is the sink, and the agent sends it.
pub async fn big(s: &Settings, port: u16) -> anyhow::Result<BigFigures> {
    let w = World::new()?;
    let limit = (s.big_message as u64).saturating_mul(2).max(1 << 20);
    w.write_config(
        &config_builder(port, 1)
            .outbox("max_message_size", limit)
            .to_string(),
    )?;
    let _nm = FakeNm::start(&w.system.address, vec![office()], 4).await?;
    let log = w.dir().join("linkrelayd.log");
    let (agent, _) = Agent::start(&w, &log).await?;
    let from = sender(1);
    let (out, sendmail_kib) = w.sendmail_peak(&["-i", "-f", &from, RCPT], s.big_message)?;
    ensure!(
        out.status.success(),
        "linkrelay sendmail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    while w.outbox_entries("u1", "sent").is_empty() {
        ensure!(
            t0.elapsed() < Duration::from_secs(300),
            "the big message was not sent within 300 s: {:?} queued, {:?} failed",
            w.outbox_entries("u1", "queue"),
            w.outbox_entries("u1", "failed")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(BigFigures {
        sendmail_kib,
        agent_kib: agent.sample().hwm_kib,
    })
}
