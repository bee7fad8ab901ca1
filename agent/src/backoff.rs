//! Retry delays: exponential from `min` to `max`, with jitter. Pure.

use std::time::Duration;

/// The delay before retry number `step` (1 = the first retry): `min * 2^(step-1)`, capped at
/// `max`, then scaled by `jitter` (expected in 0.8..=1.2, so that many messages deferred at once
/// do not all come back in the same second).
pub fn retry_delay(step: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = step.saturating_sub(1).min(32);
    let base = min.saturating_mul(1u32 << exp.min(31)).min(max.max(min));
    base.mul_f64(jitter.clamp(0.5, 1.5))
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
}
