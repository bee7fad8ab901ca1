use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, cli_json, example_config_for};

/// Which ISP's network the laptop is on, as the ISPs' relays see it.
#[derive(Clone, Default)]
pub struct Network(Arc<Mutex<String>>);

impl Network {
    pub fn set(&self, id: &str) {
        *self.0.lock().unwrap() = id.to_string();
    }
    pub fn is(&self, id: &str) -> bool {
        *self.0.lock().unwrap() == id
    }
}

/// The seed world: two ISP relays that each refuse the other ISP's clients with Postfix's
/// "554 5.7.1 ... Relay access denied", and the example config pointed at them.
pub struct Seed {
    pub world: World,
    pub relay_a: ScriptedRelay,
    pub relay_b: ScriptedRelay,
    pub network: Network,
}

pub async fn seed() -> Seed {
    let network = Network::default();
    let on_a = network.clone();
    let on_b = network.clone();
    let relay_a = ScriptedRelay::start(
        RelayScript::named("smtp.isp-a.example").with_allow_client(move || on_a.is("ISP-A")),
    )
    .await
    .expect("relay A starts");
    let relay_b = ScriptedRelay::start(
        RelayScript::named("smtp.isp-b.example")
            .with_allow_client(move || on_b.is("ISP-B"))
            .with_credentials("bob", "secret-b"),
    )
    .await
    .expect("relay B starts");
    let world = World::new().expect("world");
    world
        .write_config(&example_config_for(relay_a.port(), relay_b.port()).expect("config"))
        .expect("write config");
    Seed {
        world,
        relay_a,
        relay_b,
        network,
    }
}

/// The subjects of what a relay received, in order.
pub fn subjects(relay: &ScriptedRelay) -> Vec<String> {
    relay
        .received()
        .iter()
        .filter_map(|r| {
            r.data_text()
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

/// The ids `linkrelay queue --json` lists for `user`, in its order.
pub fn queue_ids(world: &World, user: &str) -> Vec<String> {
    let q = cli_json(world, &["queue", "--user", user]);
    q.as_array()
        .expect("a JSON array")
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Polls `check` until it is true or 10 s pass.
pub async fn eventually(what: &str, world: &World, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}\nagent log:\n{}", world.agent_log());
}

/// Waits (up to 10 s) until the agent counts `n` queued messages for `user`, as `linkrelay
/// status` shows them: mail `linkrelay sendmail` hands over reaches the counts a moment later.
pub async fn wait_queued(world: &World, user: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = cli_json(world, &["status"]);
        let queued = status["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["user"] == user))
            .and_then(|u| u["queued"].as_u64());
        if queued == Some(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user} never had {n} queued: {status}\n{}",
            world.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// The agent's memory, read from `/proc/PID/status` while a test runs: its peak (`VmHWM`) is
// what the user would see in `top` at its worst. An agent that grows past [`RSS_KILL_KIB`] is
// killed at once, so that a regression fails the test instead of the machine.

/// The peak resident memory the agent may reach in a test that attacks it or sends a big
/// message. The agent runs at about 20 MiB (a debug build); what a relay sends is read with
/// small bounds, and a message is sent from its file a piece at a time.
pub const RSS_LIMIT_KIB: u64 = 48 * 1024;

/// An agent larger than this is killed on the spot and the test fails.
const RSS_KILL_KIB: u64 = 512 * 1024;

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits up to `limit` until `done` says so, reading the agent's memory every 20 ms and
/// killing it if it passes [`RSS_KILL_KIB`]. Returns the agent's peak RSS in KiB.
pub async fn watch_memory_until(
    w: &mut World,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&World) -> bool,
) -> u64 {
    let pid = w.agent_pid().expect("the agent runs");
    let deadline = Instant::now() + limit;
    loop {
        let rss = proc_status_kib(pid, "VmRSS").unwrap_or(0);
        if rss > RSS_KILL_KIB {
            w.kill_agent();
            panic!(
                "the agent grew to {} MiB (killed) while waiting for {what}\n{}",
                rss / 1024,
                tail(&w.agent_log())
            );
        }
        if done(w) {
            return proc_status_kib(pid, "VmHWM").expect("VmHWM of the agent");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?} (agent at {} MiB)\n{}",
            rss / 1024,
            tail(&w.agent_log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The end of a log, enough to see what happened without pages of flood.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(60);
    lines[from..]
        .iter()
        .map(|l| l.chars().take(400).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}
