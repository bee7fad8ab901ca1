//! Desktop notifications: what the user reads when mail fails or waits too long, and silence
//! otherwise. The notification server is a fake on the private session bus (nothing real can
//! draw one headless); everything else is real.

use std::time::Duration;

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::notifications::FakeNotifications;
use linkrelay_tests::smtp::{Fault, RelayScript};

use crate::util::{eventually, seed, subjects};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_is_announced_with_its_reason_and_the_verbs_that_fix_it() {
    let mut s = seed().await;
    let notes = FakeNotifications::start(&s.world.session.address, &["body", "body-markup"])
        .await
        .unwrap();
    s.network.set("ISP-A");
    s.relay_a
        .set_script(RelayScript::named("smtp.isp-a.example").with_rcpt(|rcpt| {
            (rcpt == "nobody@dest.example").then(|| {
                Fault::reply(
                    550,
                    "5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown",
                )
            })
        }));
    let _nm = FakeNm::start(
        &s.world.system.address,
        vec![ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();

    // Mail that goes out is no news.
    w.send("bob@bob.example", "carol@dest.example", "fine")
        .unwrap();
    s.relay_a.wait_for(1, WAIT).await.unwrap();
    w.send("bob@bob.example", "nobody@dest.example", "doomed")
        .unwrap();
    eventually("the message failed", w, || {
        w.outbox_entries("bob", "failed").len() == 1
    })
    .await;
    let id = w.outbox_entries("bob", "failed")[0].clone();
    let shown = notes.wait_for(1, WAIT).await.unwrap();
    assert_eq!(shown.len(), 1, "{shown:#?}");
    let n = &shown[0];
    assert_eq!(n.app_name, "linkrelay");
    assert_eq!(n.summary, "Mail from bob could not be sent");
    assert!(
        n.rendered
            .lines()
            .next()
            .unwrap()
            .contains("550 5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown"),
        "{n:#?}"
    );
    assert!(
        n.rendered
            .contains(&format!("`linkrelay retry {id}` sends it again")),
        "{n:#?}"
    );
    assert!(
        n.rendered.contains(&format!("`linkrelay drop {id}`")),
        "{n:#?}"
    );
    // The server reads markup: the address in angle brackets was escaped, not eaten as a tag.
    assert!(n.body.contains("&lt;nobody@dest.example&gt;"), "{}", n.body);
    assert_eq!(n.urgency, Some(2));
    assert_eq!(n.category.as_deref(), Some("email.bounced"));

    // Quiet otherwise: nothing more comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(notes.shown().len(), 1, "{:#?}", notes.shown());
    assert_eq!(subjects(&s.relay_a), ["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waiting_past_the_threshold_is_announced_once_with_the_way_out() {
    let mut s = seed().await;
    let notes = FakeNotifications::start(&s.world.session.address, &["body"])
        .await
        .unwrap();
    let config = std::fs::read_to_string(&s.world.config_path).unwrap();
    s.world
        .write_config(&format!("{config}\n[notify]\nafter = \"3s\"\n"))
        .unwrap();
    // NetworkManager runs, no link is up: mail is held.
    let _nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.wait_route("bob", "held: no link", |r| r.hold == "no link")
        .await
        .unwrap();
    w.send("bob@bob.example", "dave@dest.example", "waits")
        .unwrap();
    let queued = w.wait_entries("bob", "queue", 1).await;
    assert_eq!(queued.len(), 1);

    // Not before the threshold...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(notes.shown().is_empty(), "{:#?}", notes.shown());
    // ...but soon after it.
    let shown = notes.wait_for(1, WAIT).await.unwrap();
    let n = &shown[0];
    assert_eq!(n.summary, "Mail from bob has waited over 3s");
    assert!(
        n.rendered
            .starts_with("To dave@dest.example: held: no link\n"),
        "{n:#?}"
    );
    assert!(n.rendered.contains("`linkrelay flush --connect`"), "{n:#?}");
    assert_eq!(n.urgency, Some(1));

    // Once: the same message is not announced again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(notes.shown().len(), 1, "{:#?}", notes.shown());

    // A second one replaces the first notice instead of piling up.
    w.send("bob@bob.example", "erin@dest.example", "waits-too")
        .unwrap();
    let shown = notes.wait_for(2, WAIT).await.unwrap();
    assert_eq!(shown[1].replaces_id, shown[0].id, "{shown:#?}");
    assert_eq!(shown[1].id, shown[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_can_be_turned_off() {
    let mut s = seed().await;
    let notes = FakeNotifications::start(&s.world.session.address, &["body"])
        .await
        .unwrap();
    let config = std::fs::read_to_string(&s.world.config_path).unwrap();
    s.world
        .write_config(&format!(
            "{config}\n[notify]\nenabled = false\nafter = \"1s\"\n"
        ))
        .unwrap();
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "dave@dest.example", "waits")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(notes.shown().is_empty(), "{:#?}", notes.shown());
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);
}
