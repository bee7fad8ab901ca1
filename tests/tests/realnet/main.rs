//! Interoperability: the real `linkrelayd` against software we did not write, the way it meets
//! it on a user's machine: the real NetworkManager driving two veth links in a "laptop"
//! network namespace, real Postfix relays of two ISPs in an "ISP" namespace that refuse each
//! other's clients, and real mail clients on the sendmail entry.
//!
//! Needs root (network namespaces) and the packages of scripts/install-test-deps; without
//! root every test fails and says so. See docs/interop.md. A failing test prints the agent's,
//! Postfix's and NetworkManager's logs.

mod clients;
mod learning;
mod scenarios;

use std::time::Duration;

use linkrelay_tests::twoisp::{TwoIsp, WAIT};
use linkrelay_tests::world::cli_json;

/// The two-ISP world with the agent running in the laptop namespace, no link up yet.
pub async fn started() -> TwoIsp {
    let mut t = match TwoIsp::start() {
        Ok(t) => t,
        Err(e) => panic!("cannot build the two-ISP world: {e:#}"),
    };
    t.start_agent().await.expect("linkrelayd starts");
    t
}

/// The two-ISP world with ISP-A up and the agent routing through relay-a.
pub async fn on_isp_a() -> TwoIsp {
    let t = started().await;
    t.nm.up("ISP-A").expect("ISP-A comes up");
    t.wait_route("relay-a", |r| r.relays == ["relay-a"])
        .await
        .expect("route through relay-a");
    t
}

/// `linkrelay flush --wait`: returns (sent, remaining) once the agent's batch is over. It
/// exits 75 exactly when a route still holds queued mail, and then says why (`hold`).
pub fn flush_wait(t: &TwoIsp) -> (u64, u64) {
    let out = t
        .world
        .run_cli(&["flush", "--wait", "--json"])
        .expect("linkrelay runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "flush --wait prints JSON: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            t.world.agent_log()
        )
    });
    let held = v.as_array().is_some_and(|a| {
        a.iter()
            .any(|r| r["hold"].is_string() && r["remaining"].as_u64() > Some(0))
    });
    assert_eq!(
        out.status.code(),
        Some(if held { 75 } else { 0 }),
        "flush --wait exits 75 when held mail remains: {v}"
    );
    let me = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["user"] == "me"))
        .unwrap_or_else(|| panic!("flush result for user me: {v}"));
    (
        me["sent"].as_u64().unwrap_or(u64::MAX),
        me["remaining"].as_u64().unwrap_or(u64::MAX),
    )
}

/// The queued and failed messages (`linkrelay queue --json`).
pub fn queue(t: &TwoIsp) -> Vec<serde_json::Value> {
    cli_json(&t.world, &["queue"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `check` holds, or fails with `what`.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// Waits until Postfix has nothing left in its own queue (so that anything it accepted,
/// including a bounce, has reached smtp-sink), then returns.
pub async fn postfix_idle(t: &TwoIsp) {
    eventually("Postfix's queue is empty", || t.relays.queued() == 0).await;
}
