//! Listing the queue with `StreamQueue` (what `linkrelay queue` uses): the streamed listing is
//! what `ListQueue` says, a reader that stalls or goes away stops nothing else, and the CLI
//! prints the same whichever way it got the listing.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::time::Duration;

use linkrelay_dbus::agent::{MessageInfo, QueueLine};
use linkrelay_outbox::{Envelope, Outbox};
use linkrelay_tests::world::cli_json;

use crate::util::seed;

/// A bound on calls that must answer while a listing waits for its reader; only reached if
/// the agent stopped serving.
const ANSWER: Duration = Duration::from_secs(30);

fn read_stream(fd: OwnedFd) -> Vec<QueueLine> {
    BufReader::new(std::fs::File::from(fd))
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_listing_says_what_list_queue_says_and_a_stalled_reader_stops_nothing() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "x@dest.example", "small")
        .unwrap();
    // Enough listing to fill the pipe several times over (about 60 KB a message): the agent
    // must wait for the reader.
    let outbox = Outbox::open(&w.data_dir.join("bob")).unwrap();
    let env = Envelope {
        from: "bob@bob.example".into(),
        recipients: (0..1000).map(|i| format!("r{i}@dest.example")).collect(),
        dsn: None,
    };
    for _ in 0..40 {
        outbox
            .enqueue(&env, b"Subject: many\r\n\r\nhello\r\n")
            .unwrap();
    }
    let agent = w.agent().await.unwrap();

    // A listing nobody reads yet...
    let stalled = OwnedFd::from(agent.stream_queue("bob").await.unwrap());
    // ...while the agent goes on answering, listings included.
    let listed = tokio::time::timeout(ANSWER, agent.list_queue("bob"))
        .await
        .expect("the agent stopped answering while a listing waited for its reader")
        .unwrap();
    assert_eq!(listed.len(), 41);
    let flushed = tokio::time::timeout(ANSWER, agent.flush("bob", true))
        .await
        .expect("the agent stopped answering while a listing waited for its reader")
        .unwrap();
    assert_eq!(flushed[0].remaining, 41);

    // Read late, the stream is complete and says what ListQueue said, in the same order.
    let lines = tokio::task::spawn_blocking(move || read_stream(stalled))
        .await
        .unwrap();
    let (last, messages) = lines.split_last().unwrap();
    assert_eq!(last, &QueueLine::End { count: 41 });
    let streamed: Vec<MessageInfo> = messages
        .iter()
        .map(|l| match l {
            QueueLine::Message(m) => m.clone(),
            other => panic!("not a message: {other:?}"),
        })
        .collect();
    assert_eq!(streamed, listed);
    assert!(streamed[1..].iter().all(|m| m.recipients.len() == 1000));

    // A reader that goes away at once: the agent carries on.
    drop(agent.stream_queue("").await.unwrap());
    drop(agent.stream_queue("bob").await.unwrap());
    assert_eq!(agent.list_queue("bob").await.unwrap().len(), 41);

    // Unknown users are refused before anything is streamed.
    match agent.stream_queue("nobody").await {
        Err(zbus::Error::MethodError(name, _, _)) => {
            assert_eq!(name.as_str(), "org.linkrelay.Agent1.Error.UnknownUser")
        }
        other => panic!("expected UnknownUser, got {other:?}"),
    }

    // The CLI (streamed) shows what ListQueue says.
    let q = cli_json(w, &["queue", "--user", "bob"]);
    let ids: Vec<&str> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, want);
    assert_eq!(q[1]["recipients"].as_array().unwrap().len(), 1000);
    assert_eq!(q[0]["status"], listed[0].status.as_str());
    let out = w.run_cli(&["queue", "--user", "bob"]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for m in &listed {
        assert!(text.contains(&format!("{}  bob  ", m.id)), "{text}");
    }
    assert!(w.agent_log().lines().all(|l| !l.contains("panicked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_queue_streams_an_empty_listing() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    let agent = w.agent().await.unwrap();
    let fd = OwnedFd::from(agent.stream_queue("").await.unwrap());
    let lines = tokio::task::spawn_blocking(move || read_stream(fd))
        .await
        .unwrap();
    assert_eq!(lines, [QueueLine::End { count: 0 }]);
    let q = cli_json(w, &["queue"]);
    assert_eq!(q, serde_json::json!([]));
    let out = w.run_cli(&["queue"]).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "no queued or failed messages\n"
    );
}
