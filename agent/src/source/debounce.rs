//! When a new link state applies: the debounce, as one pure decision.
//!
//! NetworkManager announces a link coming up in steps (`PrimaryConnection` first, connectivity
//! a few milliseconds later), and a flapping link comes and goes many times a second. The
//! debounce rides out the flapping without delaying a link that has just become usable:
//!
//! - a change that makes mail sendable (the applied state sends nobody's mail, the new one
//!   sends someone's) applies at once, whatever came just before;
//! - any other change applies at once after a quiet period (no change applied for the whole
//!   window and none waiting): the leading edge;
//! - the rest (switching away from a usable link, or between links, within the window) waits
//!   for the end of the window, and only the last state then applies.

/// What the agent knows when the link source reports a new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// No change was applied for a whole debounce window.
    pub quiet: bool,
    /// A state is already waiting for the end of the window.
    pub pending: bool,
    /// The state in effect sends some user's mail.
    pub sendable_before: bool,
    /// The new state would send some user's mail.
    pub sendable_after: bool,
}

/// What to do with the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Apply it now (dropping any state that was waiting).
    Apply,
    /// Keep it until the end of the window (replacing any state that was waiting).
    Wait,
}

/// Decides when a new link state applies. Pure.
pub(crate) fn decide(change: Change) -> Step {
    let becomes_sendable = !change.sendable_before && change.sendable_after;
    if becomes_sendable || (change.quiet && !change.pending) {
        Step::Apply
    } else {
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_that_makes_mail_sendable_applies_at_once_and_only_switching_waits() {
        use Step::{Apply, Wait};
        // (quiet, pending, sendable before, sendable after, step)
        let table = [
            // A link that becomes usable: at once, even right after another change (NM's
            // connectivity turning full 7 ms after PrimaryConnection changed).
            (false, false, false, true, Apply),
            (false, true, false, true, Apply),
            (true, false, false, true, Apply),
            (true, true, false, true, Apply),
            // After a quiet period, any change: the leading edge.
            (true, false, true, false, Apply),
            (true, false, true, true, Apply),
            (true, false, false, false, Apply),
            // Inside the window: switching away, between links, or back waits.
            (false, false, true, false, Wait),
            (false, false, true, true, Wait),
            (false, true, true, true, Wait),
            (false, false, false, false, Wait),
            // A state already waiting keeps the window going even once it is quiet.
            (true, true, true, false, Wait),
            (true, true, false, false, Wait),
        ];
        for (quiet, pending, sendable_before, sendable_after, want) in table {
            let change = Change {
                quiet,
                pending,
                sendable_before,
                sendable_after,
            };
            assert_eq!(decide(change), want, "{change:?}");
        }
    }
}
