//! `linkrelay routes probe` and `routes suggest`: the agent learns which relay takes our mail
//! on which link, and the CLI turns that into `[[link]]` rules and routes.

use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::world::cli_json;

use crate::util::{Seed, eventually, seed, subjects};

/// The seed world on a hotel's line that no `[[link]]` rule matches, where relay A (but not
/// relay B) takes our mail.
async fn at_the_hotel() -> (Seed, FakeNm) {
    let mut s = seed().await;
    s.network.set("ISP-A");
    let nm = FakeNm::start(
        &s.world.system.address,
        vec![ActiveSpec::ethernet("Hotel", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    s.world.start_agent().await.unwrap();
    s.world
        .wait_route("bob", "held: no rule", |r| {
            r.hold.contains("no [[link]] rule")
        })
        .await
        .unwrap();
    (s, nm)
}

fn run_ok(s: &Seed, args: &[&str]) -> String {
    let out = s.world.run_cli(args).unwrap();
    assert!(
        out.status.success(),
        "linkrelay {args:?}: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        s.world.agent_log()
    );
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_a_new_link_proposes_its_rule_and_routes_and_applying_them_sends_the_mail() {
    let (s, _nm) = at_the_hotel().await;
    s.world
        .send("bob@bob.example", "carol@dest.example", "from-the-hotel")
        .unwrap();
    let said = run_ok(&s, &["routes", "suggest"]);
    assert!(
        said.contains("No relay has answered on any link yet"),
        "{said}"
    );

    let said = run_ok(&s, &["routes", "probe"]);
    assert!(said.contains("relay-a          accepted"), "{said}");
    assert!(said.contains("relay-b          REFUSED"), "{said}");
    assert!(said.contains("Relay access denied"), "{said}");
    assert!(s.relay_a.received().is_empty(), "a probe sends nothing");

    // status says what accepted here before, on a link no rule matches.
    let said = run_ok(&s, &["status"]);
    assert!(
        said.contains("accepted on this link before: relay-a ("),
        "{said}"
    );
    let status = cli_json(&s.world, &["status"]);
    assert_eq!(status["accepted_here_before"][0]["relay"], "relay-a");

    let said = run_ok(&s, &["routes", "suggest"]);
    assert!(
        said.contains("link Hotel (no rule yet; proposed: hotel (match id = \"Hotel\"))"),
        "{said}"
    );
    assert!(said.contains("  accepted  relay-a ("), "{said}");
    assert!(said.contains("  refused   relay-b ("), "{said}");
    assert!(
        said.contains("+name = \"hotel\"\n+match = { id = \"Hotel\" }"),
        "{said}"
    );
    let config = std::fs::read_to_string(&s.world.config_path).unwrap();
    assert!(!config.contains("hotel"), "suggest alone writes nothing");

    let said = run_ok(&s, &["routes", "suggest", "--apply"]);
    assert!(said.contains("linkrelayd reloaded the config"), "{said}");
    let config = std::fs::read_to_string(&s.world.config_path).unwrap();
    assert!(
        config.contains("# linkrelay example: two ISPs, two people."),
        "comments are kept: {config}"
    );
    assert!(
        config.contains(
            r#"routes = { isp-a = ["relay-a"], isp-b = ["relay-b"], hotel = ["relay-a"] }"#
        ),
        "bob may send through relay-a here: {config}"
    );
    run_ok(&s, &["config", "check"]);
    s.world
        .wait_route("bob", "via relay-a", |r| r.relays == ["relay-a"])
        .await
        .unwrap();
    eventually("the mail went out through relay A", &s.world, || {
        subjects(&s.relay_a) == ["from-the-hotel"]
    })
    .await;

    // Nothing is left to propose.
    let v = cli_json(&s.world, &["routes", "suggest"]);
    assert_eq!(v["changes"], serde_json::json!([]), "{v}");
    assert_eq!(v["links"][0]["rule"], "hotel", "{v}");
}
