//! `[submission]`: the SMTP submission listener's addresses, its unix socket and its caps (the
//! largest message is `[outbox] max_message_size`, as for every way in).

use std::net::SocketAddr;
use std::time::Duration;

use super::{Ctx, Schema, Table, key};
use crate::SubmissionSettings;

pub(super) const SUBMISSION: Schema = Schema {
    title: "[submission]",
    keys: &[
        key("listen", r#"listen = ["127.0.0.1:2525", "[::1]:2525"]"#),
        key("socket", "socket = true"),
        key("max_sessions", "max_sessions = 32"),
        key("max_recipients", "max_recipients = 1000"),
        key("timeout", r#"timeout = "5m""#),
        key("data_timeout", r#"data_timeout = "10m""#),
    ],
    refused: &[],
};

pub(super) fn submission(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> SubmissionSettings {
    let mut s = SubmissionSettings::default();
    if let Some((items, _)) = t.strings(ctx, "listen") {
        s.listen = items
            .iter()
            .filter_map(|item| listen_address(ctx, item.value, item.span.start))
            .collect();
    }
    if let Some((b, _)) = t.boolean(ctx, "socket") {
        s.socket = b;
    }
    let count = |ctx: &mut Ctx<'_>, name: &str, slot: &mut u64| {
        if let Some((n, span)) = t.integer(ctx, name) {
            match u64::try_from(n) {
                Ok(n) if n > 0 => *slot = n,
                _ => ctx.error(
                    span.start,
                    format!("`{name}` in [submission] must be more than 0, not {n}"),
                    format!("write {}", t.example(name)),
                ),
            }
        }
    };
    let mut sessions = s.max_sessions as u64;
    count(ctx, "max_sessions", &mut sessions);
    s.max_sessions = usize::try_from(sessions).unwrap_or(usize::MAX);
    let mut recipients = s.max_recipients as u64;
    count(ctx, "max_recipients", &mut recipients);
    s.max_recipients = usize::try_from(recipients).unwrap_or(usize::MAX);
    let duration = |ctx: &mut Ctx<'_>, name: &str, slot: &mut Duration| {
        if let Some((d, span)) = t.duration(ctx, name) {
            if d.is_zero() {
                ctx.error(
                    span.start,
                    format!("`{name}` in [submission] must be more than 0"),
                    format!("write {}", t.example(name)),
                );
            } else {
                *slot = d;
            }
        }
    };
    duration(ctx, "timeout", &mut s.timeout);
    duration(ctx, "data_timeout", &mut s.data_timeout);
    s
}

/// One `listen` address: an IP address and port on this machine (loopback).
fn listen_address(ctx: &mut Ctx<'_>, text: &str, at: usize) -> Option<SocketAddr> {
    let help = r#"write listen = ["127.0.0.1:2525", "[::1]:2525"]: an address of this machine (127.0.0.1 or [::1], IPv6 in brackets) and a port"#;
    let Ok(addr) = text.parse::<SocketAddr>() else {
        ctx.error(at, format!("\"{text}\" is not an address and port"), help);
        return None;
    };
    if !addr.ip().is_loopback() {
        ctx.error(
            at,
            format!("\"{text}\" is not on this machine: the listener takes mail only from local programs"),
            "listen on 127.0.0.1 or [::1] only: the listener knows its clients by their uid, which the kernel tells only for connections on this machine, and it offers no TLS",
        );
        return None;
    }
    if addr.port() == 0 {
        ctx.error(at, format!("\"{text}\" has no port"), help);
        return None;
    }
    Some(addr)
}
