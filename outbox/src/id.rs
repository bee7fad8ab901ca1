//! Message ids: `<unix secs, 10 digits>.<micros, 6 digits>.<pid>.<4 hex>`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::OutboxError;

/// Longest id accepted by [`validate_id`].
const MAX_ID_LEN: usize = 128;

/// The last (seconds, microseconds) handed out by this process, so ids sort in enqueue order
/// even when the clock stands still or steps back.
static LAST: Mutex<(u64, u32)> = Mutex::new((0, 0));

/// Checks that an id from outside (D-Bus, command line, a directory name) has the shape of an
/// id: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}` and no `..`. Anything else is
/// [`OutboxError::BadId`], so an id can never name a path outside its folder.
pub fn validate_id(id: &str) -> Result<(), OutboxError> {
    let bytes = id.as_bytes();
    let ok = match bytes.first() {
        Some(first) => {
            first.is_ascii_alphanumeric()
                && bytes.len() <= MAX_ID_LEN
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && !id.contains("..")
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(OutboxError::BadId(id.to_owned()))
    }
}

/// The current time as unix seconds (0 if the clock is before 1970).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A new id, greater than every id this process made before.
pub(crate) fn new_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut secs = now.as_secs();
    let mut micros = now.subsec_micros();
    {
        // A poisoned lock only means another thread panicked while holding it; the pair
        // inside is still a valid (secs, micros).
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if (secs, micros) <= *last {
            (secs, micros) = *last;
            micros += 1;
            if micros >= 1_000_000 {
                micros = 0;
                secs += 1;
            }
        }
        *last = (secs, micros);
    }
    let random: u16 = rand::random();
    format!("{secs:010}.{micros:06}.{}.{random:04x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_increasing() {
        let ids: Vec<String> = (0..2000).map(|_| new_id()).collect();
        for id in &ids {
            validate_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            let parts: Vec<&str> = id.split('.').collect();
            assert_eq!(parts.len(), 4, "{id}");
            assert_eq!(parts[0].len(), 10, "{id}");
            assert_eq!(parts[1].len(), 6, "{id}");
            assert_eq!(parts[2], std::process::id().to_string());
            assert_eq!(parts[3].len(), 4, "{id}");
        }
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn bad_ids_are_rejected() {
        for bad in [
            "", "..", ".", "../etc", "a/b", "/etc", "a..b", ".hidden", "-x", "_x", "a b", "a\0b",
            "a\nb", "é", "a\\b",
        ] {
            assert!(
                matches!(validate_id(bad), Err(OutboxError::BadId(ref s)) if s == bad),
                "{bad:?} accepted"
            );
        }
        let long = "a".repeat(129);
        assert!(validate_id(&long).is_err());
        let max = "a".repeat(128);
        assert!(validate_id(&max).is_ok());
        for good in ["a", "0", "1732874160.123456.4242.beef", "A-b_c.d"] {
            assert!(validate_id(good).is_ok(), "{good:?} rejected");
        }
    }
}
