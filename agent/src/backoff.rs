//! Retry delays: exponential from `min` to `max`, with jitter, per message; the step grows with
//! each deferral on one route and starts again when the route changes. Pure.

use std::time::Duration;

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
pub fn route_key(link: &str, relays: &[String]) -> String {
    format!("{link}: {}", relays.join(", "))
}

/// Where a message's backoff stands before a deferral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff<'a> {
    /// The step reached so far (0: never deferred, or reset by the user).
    pub step: u32,
    /// The route key it was reached on.
    pub route: Option<&'a str>,
    /// When the message was last attempted (unix seconds), before this attempt.
    pub last_attempt: Option<u64>,
}

/// The step of the deferral that just happened on route `route`. It is one more than the
/// previous step, unless the route differs from the one the step grew on, or the route changed
/// (`route_changed_at`, unix seconds, 0 for never) since the message was last attempted: then
/// the backoff starts again at 1. This is what lets a message that waited an hour on a bad
/// link go out within minutes of a good one coming up, even when that link is one the message
/// has seen before (A, then B, then A again).
pub fn next_step(prev: Backoff<'_>, route: &str, route_changed_at: u64) -> u32 {
    let same_route = prev.route == Some(route);
    let changed_since = route_changed_at != 0
        && prev
            .last_attempt
            .is_some_and(|last| last <= route_changed_at);
    if same_route && !changed_since {
        prev.step.saturating_add(1)
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
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(route_key("home", &r(&["a", "b"])), "home: a, b");
        assert_ne!(
            route_key("home", &r(&["a", "b"])),
            route_key("home", &r(&["b", "a"]))
        );
        assert_ne!(
            route_key("home", &r(&["a"])),
            route_key("office", &r(&["a"]))
        );
    }

    #[test]
    fn the_step_grows_on_one_route_and_starts_again_when_it_changes() {
        let at = |step, route, last| Backoff {
            step,
            route,
            last_attempt: last,
        };
        // First deferral ever.
        assert_eq!(next_step(at(0, None, None), "home: a", 0), 1);
        // Written by an older agent (no route recorded): start again.
        assert_eq!(next_step(at(4, None, Some(100)), "home: a", 0), 1);
        // Same route, no change since: grows.
        assert_eq!(
            next_step(at(1, Some("home: a"), Some(100)), "home: a", 0),
            2
        );
        assert_eq!(
            next_step(at(3, Some("home: a"), Some(100)), "home: a", 50),
            4
        );
        // Another link or relay list: back to 1.
        assert_eq!(
            next_step(at(3, Some("home: a"), Some(100)), "office: a", 0),
            1
        );
        assert_eq!(
            next_step(at(3, Some("home: a"), Some(100)), "home: b, a", 0),
            1
        );
        // Same route, but the link went away and came back after the last attempt.
        assert_eq!(
            next_step(at(3, Some("home: a"), Some(100)), "home: a", 100),
            1
        );
        assert_eq!(
            next_step(at(3, Some("home: a"), Some(100)), "home: a", 150),
            1
        );
        // Reset by the user (retry): step 0 on the same route gives 1.
        assert_eq!(
            next_step(at(0, Some("home: a"), Some(100)), "home: a", 0),
            1
        );
        assert_eq!(
            next_step(at(u32::MAX, Some("home: a"), Some(1)), "home: a", 0),
            u32::MAX
        );
    }
}
