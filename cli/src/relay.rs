//! `linkrelay test-relay NAME`: what the agent's relay test found, for people and scripts.

use std::fmt::Write as _;

use linkrelay_dbus::agent::RelayTest;
use serde_json::{Value, json};

/// The text form.
pub fn render(t: &RelayTest) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} (tls {})", t.relay, t.address, t.tls);
    for s in &t.steps {
        let mark = match s.state.as_str() {
            "ok" => "ok",
            "failed" => "FAILED",
            _ => "-",
        };
        let _ = writeln!(out, "  {:<10} {:<7} {}", s.stage, mark, s.text);
    }
    if t.offers.is_empty() {
        let _ = writeln!(out, "offers:    (nothing read)");
    } else {
        let secured = if t.encrypted { " (over TLS)" } else { "" };
        let _ = writeln!(out, "offers{secured}: {}", t.offers.join(", "));
    }
    let link = if t.link.is_empty() {
        "no matched link".to_string()
    } else {
        format!("link {}", t.link)
    };
    let answer = match t.may_relay.as_str() {
        "yes" => "yes",
        "no" => "NO",
        _ => "unknown",
    };
    let _ = writeln!(out, "relays for us on {link}: {answer}: {}", t.verdict);
    if t.link.is_empty() {
        let _ = writeln!(
            out,
            "routes:    no [[link]] rule matches the link that is up"
        );
    } else if t.routed_for.is_empty() {
        let _ = writeln!(
            out,
            "routes:    no user's route on link {} uses {}",
            t.link, t.relay
        );
    } else {
        let _ = writeln!(
            out,
            "routes:    {} send through {} on link {}",
            t.routed_for.join(", "),
            t.relay,
            t.link
        );
    }
    let _ = writeln!(out, "Nothing was sent.");
    out
}

/// The JSON form.
pub fn to_json(t: &RelayTest) -> Value {
    json!({
        "relay": t.relay,
        "address": t.address,
        "tls": t.tls,
        "link": if t.link.is_empty() { Value::Null } else { json!(t.link) },
        "routed_for": t.routed_for,
        "steps": t.steps.iter().map(|s| json!({"stage": s.stage, "state": s.state, "text": s.text})).collect::<Vec<_>>(),
        "offers": t.offers,
        "encrypted": t.encrypted,
        "may_relay": t.may_relay,
        "verdict": t.verdict,
    })
}
