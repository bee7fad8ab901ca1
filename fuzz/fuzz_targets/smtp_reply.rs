//! The SMTP reply classification on any reply: `classify` and `enhanced_code` never panic,
//! and the rules that must hold whatever the text says do hold: 2xx/3xx is sent, 4xx and
//! transport trouble (no code) are deferred, a nonsense code never fails a message.
#![no_main]

// The classification is a pure module of the agent; it is compiled here on its own so that
// the fuzz build does not need the agent's D-Bus and SMTP stack.
#[path = "../../agent/src/delivery/outcome.rs"]
#[allow(dead_code)]
mod outcome;

use libfuzzer_sys::fuzz_target;
use outcome::{Outcome, Stage, classify, enhanced_code};

const STAGES: [Stage; 8] = [
    Stage::Connect,
    Stage::Greeting,
    Stage::Tls,
    Stage::Auth,
    Stage::Mail,
    Stage::Rcpt,
    Stage::Data,
    Stage::Message,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let stage = STAGES[usize::from(data[0]) % STAGES.len()];
    let raw = u16::from_be_bytes([data[1], data[2]]);
    let code = (raw != 0).then_some(raw % 1000);
    let text = String::from_utf8_lossy(&data[3..]);

    let outcome = classify(stage, code, &text);
    match code {
        None => assert_eq!(outcome, Outcome::Deferred),
        Some(200..=399) => assert_eq!(outcome, Outcome::Sent),
        Some(400..=499) => assert_eq!(outcome, Outcome::Deferred),
        Some(500..=599) => assert_ne!(outcome, Outcome::Sent),
        Some(_) => assert_eq!(outcome, Outcome::Deferred),
    }
    if let Some((class, _, _)) = enhanced_code(&text) {
        assert!(matches!(class, 2 | 4 | 5));
        assert!(text.trim_start().starts_with(char::from(b'0' + class)));
    }
});
