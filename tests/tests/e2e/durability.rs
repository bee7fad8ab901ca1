//! Crash safety and a full disk: SIGKILL at random moments of a flush loses nothing and sends at
//! most one message twice per kill and SMTP session in flight (one per user flushing); sendmail on a full disk says "try again" (EX_TEMPFAIL) and
//! leaves nothing half-written behind, whether it queues the message itself or hands it to a
//! running agent through the spool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use linkrelay_outbox::{Envelope, Outbox};
use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::World;
use rand::{Rng, SeedableRng};

use crate::util::subjects;

const MESSAGES: usize = 300;
const KILLS: usize = 20;

/// User "me" sends everything through `relay` on link "office" (NetworkManager id "Office").
fn office(relay: &ScriptedRelay) -> Config {
    Config::new()
        .agent("debounce", "50ms")
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("r", relay.port()).timeout("5s"))
        .user(User::new("me").from(["*"]).route("office", ["r"]))
}

/// The seed of the kill moments: `LINKRELAY_KILL_SEED`, or a random one (printed, to replay).
fn kill_seed() -> (u64, rand::rngs::StdRng) {
    let seed: u64 = std::env::var("LINKRELAY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill moments from seed {seed} (set LINKRELAY_KILL_SEED to replay)");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// How many times `relay` took each subject.
fn deliveries(relay: &ScriptedRelay) -> BTreeMap<String, usize> {
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for s in subjects(relay) {
        *deliveries.entry(s).or_default() += 1;
    }
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_at_most_one_per_kill() {
    let (seed, mut rng) = kill_seed();

    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    let config = office(&relay).retry("min", "1s").retry("max", "2s");
    w.write_config(&config.to_string()).unwrap();
    // Queue the messages the way sendmail does (the same library call), while the agent is down.
    let outbox = Outbox::open(&w.data_dir.join("me")).unwrap();
    let envelope = Envelope {
        from: "me@example.org".into(),
        recipients: vec!["you@dest.example".into()],
        dsn: None,
    };
    for i in 0..MESSAGES {
        let msg = format!(
            "From: me@example.org\r\nTo: you@dest.example\r\nSubject: m{i:04}\r\n\r\nmessage {i}\r\n"
        );
        outbox.enqueue(&envelope, msg.as_bytes()).unwrap();
    }
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();

    let mut kills = 0;
    let mut mid_flush = 0;
    while kills < KILLS {
        let before = relay.received().len();
        w.start_agent().await.unwrap();
        // Spread over the first half of the flush (~7 ms a message here): at connect,
        // mid-transaction, between the relay's answer and the move to sent/, mid-rename.
        let wait = Duration::from_millis(rng.random_range(0..100));
        tokio::time::sleep(wait).await;
        w.kill_agent();
        kills += 1;
        let queued = w.outbox_entries("me", "queue").len();
        if queued > 0 && relay.received().len() > before {
            mid_flush += 1;
        }
        eprintln!(
            "kill {kills} after {wait:?}: relay has {}, {queued} still queued",
            relay.received().len()
        );
        if queued == 0 {
            break;
        }
    }
    // The last start runs to the end.
    let left = w.outbox_entries("me", "queue").len();
    let started = Instant::now();
    w.start_agent().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.outbox_entries("me", "queue").is_empty() {
        assert!(Instant::now() < deadline, "{}", w.agent_log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    eprintln!(
        "last run: {left} messages in {took:?} with start-up ({:?} per message)",
        took / left.max(1) as u32
    );
    w.stop_agent();

    let deliveries = deliveries(&relay);
    let missing: Vec<String> = (0..MESSAGES)
        .map(|i| format!("m{i:04}"))
        .filter(|s| !deliveries.contains_key(s))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?} (seed {seed})");
    assert_eq!(deliveries.len(), MESSAGES, "seed {seed}");
    let extra = relay.received().len() - MESSAGES;
    let twice: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        extra <= kills,
        "{extra} duplicates for {kills} kills: {twice:?} (seed {seed})"
    );
    eprintln!("{kills} kills ({mid_flush} mid-flush), {extra} duplicates");
    assert!(
        mid_flush * 2 >= kills,
        "only {mid_flush} of {kills} kills hit a flush: the test did not test much (seed {seed})"
    );
    assert_eq!(w.outbox_entries("me", "sent").len(), MESSAGES);
    assert!(w.outbox_entries("me", "failed").is_empty());
    // Sent in order: each message's first delivery comes after the previous one's.
    let firsts: Vec<String> = {
        let mut seen = std::collections::BTreeSet::new();
        subjects(&relay)
            .into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect()
    };
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(firsts, sorted, "a user's messages go out in order");
}

/// A small tmpfs mounted over a directory; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills it with `filler` until about `bytes` are left.
    fn leave_free(&self, bytes: u64) {
        let filler = vec![0u8; (self.free() - bytes) as usize];
        std::fs::write(self.dir.join("filler"), filler).unwrap();
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        it.next().unwrap() * it.next().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An agent with no config file (the embedded default's one user, "default", whose mail is
/// held) on a 1 MiB tmpfs; and the path of its spool, which it has made.
async fn agent_on_a_small_disk() -> (World, Tmpfs, PathBuf) {
    let mut w = World::new().unwrap();
    let disk = Tmpfs::mount(&w.data_dir, "1m");
    w.start_agent().await.unwrap();
    let spool = w.data_dir.join("default/incoming/.spool");
    crate::util::eventually("the agent made its spool", &w, || spool.exists()).await;
    (w, disk, spool)
}

/// Waits until the agent has emptied its spool.
async fn spool_emptied(w: &World, spool: &Path) {
    crate::util::eventually("the spool was emptied", w, || {
        std::fs::metadata(spool).is_ok_and(|m| m.len() == 0)
    })
    .await;
}

/// Asserts that a command exited 0, showing its stderr if not.
fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sendmail -t -i` with a message whose body is about `len` bytes.
fn send_big(w: &World, len: usize) -> std::process::Output {
    let body = ("x".repeat(76) + "\n").repeat(len / 77 + 1);
    w.sendmail(
        &["-t", "-i"],
        &format!("From: me@example.org\nTo: you@example.org\nSubject: big\n\n{body}"),
    )
    .unwrap()
}

#[test]
fn sendmail_on_a_full_disk_fails_with_ex_tempfail_and_leaves_nothing_behind() {
    let w = World::new().unwrap();
    // No config file: the embedded default's one user, "default".
    let disk = Tmpfs::mount(&w.data_dir, "512k");
    let outbox = w.data_dir.join("default");
    let send = |len: usize| send_big(&w, len);
    let out = send(100);
    assert_succeeded(&out);
    let first = names(&outbox.join("queue"));
    assert_eq!(first.len(), 1);

    // Leave about 24 KiB free, then try sizes from well below to well above that: some fail
    // while writing message.eml, some while writing state.json, some fit.
    disk.leave_free(24 * 1024);
    let (mut failed, mut queued) = (0, 0);
    for kib in 12..40 {
        let before = names(&outbox.join("queue"));
        let out = send(kib * 1024);
        let after = names(&outbox.join("queue"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            names(&outbox.join("tmp")),
            Vec::<String>::new(),
            "{kib} KiB: tmp/"
        );
        match out.status.code() {
            Some(75) => {
                failed += 1;
                assert!(stderr.contains("message NOT queued"), "{stderr}");
                assert!(stderr.contains("No space left on device"), "{stderr}");
                assert_eq!(
                    before, after,
                    "{kib} KiB: queue/ changed although sendmail failed"
                );
            }
            Some(0) => {
                queued += 1;
                let new: Vec<_> = after.iter().filter(|id| !before.contains(id)).collect();
                assert_eq!(new.len(), 1, "{kib} KiB");
                let dir = outbox.join("queue").join(new[0]);
                assert_eq!(names(&dir), ["message.eml", "state.json"], "{kib} KiB");
                let state: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap())
                        .unwrap();
                let size = std::fs::metadata(dir.join("message.eml")).unwrap().len();
                assert_eq!(state["size"], size, "{kib} KiB");
                // Make room for the next size.
                std::fs::remove_dir_all(&dir).unwrap();
            }
            other => panic!("{kib} KiB: sendmail exited with {other:?}: {stderr}"),
        }
    }
    assert!(failed > 0 && queued > 0, "{failed} failed, {queued} queued");
    assert_eq!(names(&outbox.join("queue")), first);

    // Space again: sendmail works again.
    std::fs::remove_file(w.data_dir.join("filler")).unwrap();
    let out = send(30 * 1024);
    assert_succeeded(&out);
    assert_eq!(names(&outbox.join("queue")).len(), 2);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sendmail_handing_mail_to_the_agent_on_a_full_disk_says_try_again_and_loses_nothing() {
    let (mut w, disk, spool) = agent_on_a_small_disk().await;
    let send = |len: usize| send_big(&w, len);
    let out = send(100);
    assert_succeeded(&out);

    // Leave about 24 KiB free: some messages fit in the spool, some fail in the middle of
    // their append, which must then be cut off again.
    disk.leave_free(24 * 1024);
    let (mut failed, mut accepted) = (0, 1);
    for kib in (2..40).step_by(2) {
        let out = send(kib * 1024);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(75) => {
                failed += 1;
                assert!(stderr.contains("message NOT queued"), "{stderr}");
                assert!(stderr.contains("No space left on device"), "{stderr}");
            }
            Some(0) => accepted += 1,
            other => panic!("{kib} KiB: sendmail exited with {other:?}: {stderr}"),
        }
    }
    assert!(
        failed > 0 && accepted > 1,
        "{failed} failed, {accepted} accepted"
    );

    // Space again; the next message wakes the agent, which takes in everything accepted, and
    // no torn record went to failed/.
    std::fs::remove_file(w.data_dir.join("filler")).unwrap();
    let out = send(100);
    assert_succeeded(&out);
    accepted += 1;
    let queued = w.wait_entries("default", "queue", accepted).await;
    assert_eq!(queued.len(), accepted, "{}", w.agent_log());
    assert!(w.outbox_entries("default", "failed").is_empty());
    spool_emptied(&w, &spool).await;
    w.stop_agent();
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_the_agent_could_not_take_in_on_a_full_disk_is_queued_once_there_is_room() {
    let (mut w, disk, spool) = agent_on_a_small_disk().await;
    // While the agent is stopped, three messages go into the spool; then the disk fills up.
    let pid = w.agent_pid().unwrap().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    for n in 0..3 {
        w.send("me@example.org", "you@example.org", &format!("m{n}"))
            .unwrap();
    }
    fill(&w.data_dir);
    signal("-CONT");
    crate::util::eventually("the agent tried to take them in", &w, || {
        w.agent_log()
            .contains("cannot queue mail from incoming/ now")
    })
    .await;
    // Let every round the arrivals asked for end: after this, only a retry takes them in.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(w.outbox_entries("default", "queue").is_empty());
    // A round that fails does not wake the next one at once: the agent does not spin while
    // the disk is full (it once did, every 10 ms, woken by its own opening of the spool).
    let tries = w
        .agent_log()
        .matches("cannot queue mail from incoming/ now")
        .count();
    assert!(tries <= 4, "{tries} rounds in a second:\n{}", w.agent_log());
    // Safe in the spool meanwhile, and listed.
    let out = w.run_cli(&["queue", "--json"]).unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    // And said to wait for room, not to be on their way.
    for m in listed.as_array().unwrap() {
        let status = m["status"].as_str().unwrap_or_default();
        assert!(status.starts_with("waiting for disk space"), "{listed}");
    }

    // Room again: queued within seconds, with no new mail and no command to wake the agent.
    std::fs::remove_file(w.data_dir.join("filler")).unwrap();
    let room = Instant::now();
    let queued = w.wait_entries("default", "queue", 3).await;
    eprintln!("queued {:?} after there was room", room.elapsed());
    assert_eq!(queued.len(), 3, "{}", w.agent_log());
    spool_emptied(&w, &spool).await;
    assert!(w.outbox_entries("default", "failed").is_empty());
    w.stop_agent();
    drop(disk);
}

/// Fills the file system of `dir` to the last byte with `dir/filler`.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_while_sending_does_not_make_the_agent_send_twice() {
    let relay = ScriptedRelay::start(RelayScript::default()).await.unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&office(&relay).to_string()).unwrap();
    let _disk = Tmpfs::mount(&w.data_dir, "1m");
    w.send("me@example.org", "you@dest.example", "full")
        .unwrap();
    // Nothing can be written any more: not the message's new state, not its move to sent/.
    fill(&w.data_dir);
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    relay.wait_for(1, Duration::from_secs(10)).await.unwrap();
    crate::util::eventually("the agent noticed it cannot record it", &w, || {
        w.agent_log().contains("cannot move to sent/")
    })
    .await;
    // Flushing again (the agent remembers it was delivered) sends nothing, and does not count
    // as sent what it could not record.
    for _ in 0..3 {
        let out = w.run_cli(&["flush", "--wait"]).unwrap();
        assert!(out.status.success());
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("me: sent 0, 1 still queued"), "{said}");
    }
    assert_eq!(relay.received().len(), 1, "{}", w.agent_log());
    assert_eq!(w.wait_entries("me", "queue", 1).await.len(), 1);

    // Space again: the next flush records it, still without sending it again.
    std::fs::remove_file(w.data_dir.join("filler")).unwrap();
    let out = w.run_cli(&["flush", "--wait"]).unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("me: sent 1, 0 still queued"), "{said}");
    assert_eq!(w.outbox_entries("me", "sent").len(), 1, "{}", w.agent_log());
    assert!(w.outbox_entries("me", "queue").is_empty());
    assert_eq!(relay.received().len(), 1);
    w.stop_agent();
}

/// Messages each user has queued in the two-user crash test.
const PER_USER: usize = 300;
/// Kills in the two-user crash test.
const KILLS_WHILE_BOTH_FLUSH: usize = 10;

/// Users "ann" and "ben" on link "office" (NetworkManager id "Office"), each sending through a
/// relay of their own: two flushers, two SMTP sessions at once.
fn two_users(ann: &ScriptedRelay, ben: &ScriptedRelay) -> Config {
    Config::new()
        .agent("debounce", "50ms")
        .link(Link::new("office").id("Office"))
        .relay(Relay::local("ra", ann.port()).timeout("5s"))
        .relay(Relay::local("rb", ben.port()).timeout("5s"))
        .user(
            User::new("ann")
                .from(["ann@example.org"])
                .route("office", ["ra"]),
        )
        .user(
            User::new("ben")
                .from(["ben@example.org"])
                .route("office", ["rb"]),
        )
        .retry("min", "1s")
        .retry("max", "2s")
}

/// Queues `PER_USER` messages for `user` the way sendmail does (the same library call),
/// subjects `<user>-0000` and on.
fn queue_for(w: &World, user: &str) {
    let outbox = Outbox::open(&w.data_dir.join(user)).unwrap();
    let from = format!("{user}@example.org");
    let envelope = Envelope {
        from: from.clone(),
        recipients: vec!["you@dest.example".into()],
        dsn: None,
    };
    for i in 0..PER_USER {
        let msg = format!(
            "From: {from}\r\nTo: you@dest.example\r\nSubject: {user}-{i:04}\r\n\r\nmessage {i}\r\n"
        );
        outbox.enqueue(&envelope, msg.as_bytes()).unwrap();
    }
}

/// What a user's relay and outbox show after the crashes: every message delivered at least
/// once, at most `kills` of them twice, all in sent/.
fn assert_each_once_and_at_most_one_twice_per_kill(
    w: &World,
    user: &str,
    relay: &ScriptedRelay,
    kills: usize,
    seed: u64,
) {
    let deliveries = deliveries(relay);
    let missing: Vec<String> = (0..PER_USER)
        .map(|i| format!("{user}-{i:04}"))
        .filter(|s| !deliveries.contains_key(s))
        .collect();
    assert!(missing.is_empty(), "{user} lost: {missing:?} (seed {seed})");
    assert_eq!(deliveries.len(), PER_USER, "{user} (seed {seed})");
    let extra = relay.received().len() - PER_USER;
    let twice: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        extra <= kills,
        "{user}: {extra} duplicates for {kills} kills: {twice:?} (seed {seed})"
    );
    eprintln!("{user}: {extra} duplicates for {kills} kills");
    assert_eq!(w.outbox_entries(user, "sent").len(), PER_USER, "{user}");
    assert!(w.outbox_entries(user, "queue").is_empty(), "{user}");
    assert!(w.outbox_entries(user, "failed").is_empty(), "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_two_users_flush_loses_nothing_and_duplicates_at_most_one_per_kill_per_user()
{
    let (seed, mut rng) = kill_seed();
    let ann = ScriptedRelay::start(RelayScript::named("a.test"))
        .await
        .unwrap();
    let ben = ScriptedRelay::start(RelayScript::named("b.test"))
        .await
        .unwrap();
    let mut w = World::new().unwrap();
    w.write_config(&two_users(&ann, &ben).to_string()).unwrap();
    queue_for(&w, "ann");
    queue_for(&w, "ben");
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("Office", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();

    let mut kills = 0;
    while kills < KILLS_WHILE_BOTH_FLUSH {
        let before = [ann.received().len(), ben.received().len()];
        w.start_agent().await.unwrap();
        // Both users flushing: each relay took a message since this start (the first may be
        // the one the last kill left in doubt). Then a random moment more: mid-transaction,
        // between the relay's answer and the record, mid-rename.
        ann.wait_for(before[0] + 1, Duration::from_secs(10))
            .await
            .unwrap();
        ben.wait_for(before[1] + 1, Duration::from_secs(10))
            .await
            .unwrap();
        let wait = Duration::from_millis(rng.random_range(0..40));
        tokio::time::sleep(wait).await;
        w.kill_agent();
        kills += 1;
        let queued = [
            w.outbox_entries("ann", "queue").len(),
            w.outbox_entries("ben", "queue").len(),
        ];
        eprintln!(
            "kill {kills} {wait:?} after both flushed one: relays have {} and {}, {queued:?} still queued",
            ann.received().len(),
            ben.received().len()
        );
        assert!(
            queued.iter().all(|q| *q > 0),
            "a queue ran out before kill {kills}: the kills did not all hit two flushes"
        );
    }
    // The last start runs to the end.
    w.start_agent().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(w.outbox_entries("ann", "queue").is_empty()
        && w.outbox_entries("ben", "queue").is_empty())
    {
        assert!(Instant::now() < deadline, "{}", w.agent_log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.stop_agent();
    assert_each_once_and_at_most_one_twice_per_kill(&w, "ann", &ann, kills, seed);
    assert_each_once_and_at_most_one_twice_per_kill(&w, "ben", &ben, kills, seed);
}
