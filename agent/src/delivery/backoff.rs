//! Retry delays: exponential from `min` to `max`, with jitter, per message; the step grows with
//! each deferral on one route and starts again when the route changes. Pure.

use std::time::Duration;

use linkrelay_config::RelayName;

use crate::delivery::memory::LinkKey;

/// The delay before retry number `step` (1 = the first retry): `min * 2^(step-1)`, capped at
/// `max`, then scaled by `jitter` (expected in 0.8..=1.2, so that many messages deferred at once
/// do not all come back in the same second).
pub fn retry_delay(step: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = step.saturating_sub(1).min(32);
    let base = min.saturating_mul(1u32 << exp.min(31)).min(max.max(min));
    base.mul_f64(jitter.clamp(0.5, 1.5))
}

/// The key of a route for the backoff: the link and the relays, in order. A message whose
/// backoff grew on another key starts again from the first step.
pub fn route_key(link: &LinkKey, relays: &[RelayName]) -> String {
    let relays: Vec<&str> = relays.iter().map(|r| r.as_str()).collect();
    format!("{link}: {}", relays.join(", "))
}

/// The step of the deferral that just happened on route `route`, given the step reached so far
/// (`step`, 0 when never deferred or reset by the user) and the route it was reached on. It is
/// one more than the previous step, unless the route differs from that one, or `rerouted`: the
/// route changed since the message was last attempted. Then the backoff starts again at 1. This
/// is what lets a message that waited an hour on a bad link go out within minutes of a good one
/// coming up, even when that link is one the message has seen before (A, then B, then A again).
pub fn next_step(step: u32, step_route: Option<&str>, route: &str, rerouted: bool) -> u32 {
    if step_route == Some(route) && !rerouted {
        step.saturating_add(1)
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(300);
    const MAX: Duration = Duration::from_secs(3600);

    #[test]
    fn doubles_from_min_and_caps_at_max() {
        let secs: Vec<u64> = (1..=6)
            .map(|s| retry_delay(s, MIN, MAX, 1.0).as_secs())
            .collect();
        assert_eq!(secs, vec![300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(retry_delay(0, MIN, MAX, 1.0).as_secs(), 300);
        assert_eq!(retry_delay(u32::MAX, MIN, MAX, 1.0).as_secs(), 3600);
    }

    #[test]
    fn jitter_scales_and_is_bounded() {
        assert_eq!(retry_delay(1, MIN, MAX, 1.2).as_secs(), 360);
        assert_eq!(retry_delay(1, MIN, MAX, 0.8).as_secs(), 240);
        assert_eq!(retry_delay(1, MIN, MAX, 9.0).as_secs(), 450);
    }

    #[test]
    fn route_keys_name_link_and_relays_in_order() {
        let r = |v: &[&str]| v.iter().map(|s| RelayName::from(*s)).collect::<Vec<_>>();
        let home = LinkKey::Rule("home".into());
        let office = LinkKey::Rule("office".into());
        assert_eq!(route_key(&home, &r(&["a", "b"])), "home: a, b");
        assert_ne!(
            route_key(&home, &r(&["a", "b"])),
            route_key(&home, &r(&["b", "a"]))
        );
        assert_ne!(route_key(&home, &r(&["a"])), route_key(&office, &r(&["a"])));
    }

    #[test]
    fn the_step_grows_on_one_route_and_starts_again_when_it_changes() {
        // First deferral ever.
        assert_eq!(next_step(0, None, "home: a", false), 1);
        // Written by an older agent (no route recorded): start again.
        assert_eq!(next_step(4, None, "home: a", false), 1);
        // Same route, no change since: grows.
        assert_eq!(next_step(1, Some("home: a"), "home: a", false), 2);
        assert_eq!(next_step(3, Some("home: a"), "home: a", false), 4);
        // Another link or relay list: back to 1.
        assert_eq!(next_step(3, Some("home: a"), "office: a", false), 1);
        assert_eq!(next_step(3, Some("home: a"), "home: b, a", false), 1);
        // Same route, but the link went away and came back since the last attempt.
        assert_eq!(next_step(3, Some("home: a"), "home: a", true), 1);
        // Reset by the user (retry): step 0 on the same route gives 1.
        assert_eq!(next_step(0, Some("home: a"), "home: a", false), 1);
        assert_eq!(
            next_step(u32::MAX, Some("home: a"), "home: a", false),
            u32::MAX
        );
    }
}
