//! `linkrelay status` says why each user's mail waits beyond the route: a relay that refuses
//! us here (its reply and until when), and the next retry; the panel's tooltip says the same.
//! (A TLS failure as the last error: `tls.rs`.)

use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::world::{World, cli_json};
use serde_json::Value;

use crate::util::eventually;

/// Seconds since the epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_a_refusing_relay_with_its_reply_and_until_when() {
    let denier = ScriptedRelay::start(RelayScript::default().refusing_relay())
        .await
        .unwrap();
    let mut w = World::new().unwrap();
    let config = Config::new()
        .agent("debounce", "50ms")
        .link(Link::new("office-a").id("A"))
        .relay(Relay::local("denier", denier.port()).timeout("5s"))
        .user(
            User::new("me")
                .from(["me@example.org"])
                .route("office-a", ["denier"]),
        );
    w.write_config(&config.to_string()).unwrap();
    let _nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("A", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    w.start_agent().await.unwrap();
    w.send("me@example.org", "you@dest.example", "denied")
        .unwrap();

    let refused = |s: &Value| {
        s["users"][0]["refusals"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    };
    eventually("status shows the refusal", &w, || {
        refused(&cli_json(&w, &["status"]))
    })
    .await;
    let status = cli_json(&w, &["status"]);
    let me = &status["users"][0];
    let refusal = &me["refusals"][0];
    assert_eq!(refusal["relay"], "denier", "{status}");
    assert_eq!(refusal["link"], "office-a", "{status}");
    let reply = refusal["reply"].as_str().unwrap();
    assert!(reply.starts_with("554 5.7.1"), "{status}");
    let until = refusal["until"].as_u64().unwrap();
    assert!(until > unix_now(), "{status}");
    // Mail waits for the refusal to end: that is when it is tried again.
    let next = me["next_retry"].as_u64().unwrap();
    assert!(next > unix_now() && next <= until, "{status}");
    assert!(
        me["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("denier refuses us on office-a ({reply}) until ")),
        "{status}"
    );

    let out = w.run_cli(&["status"]).unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("denier refuses us on office-a ({reply}) until ")),
        "{said}"
    );
    assert!(said.contains("next retry "), "{said}");

    let out = w.run_cli(&["status", "--format", "waybar"]).unwrap();
    let panel: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tooltip = panel["tooltip"].as_str().unwrap();
    let escaped = reply.replace('<', "&lt;").replace('>', "&gt;");
    assert!(
        tooltip.contains(&format!("denier refuses us on office-a ({escaped}) until ")),
        "{tooltip}"
    );
    assert!(tooltip.contains("next retry "), "{tooltip}");
    assert_eq!(denier.received().len(), 0);
}
