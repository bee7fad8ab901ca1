//! The wall clock, in the unix seconds that message states, refusals and the D-Bus API keep.
//! The one place the agent reads it: every pure decision takes the time as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now (0 if the clock is before 1970).
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
