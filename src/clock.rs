//! Wall-clock time stamps and time-ordered message ids.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Crockford's base-32 alphabet, as used by ULIDs.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new message id: a ULID (48-bit ms time stamp, 80 random bits, 26 characters), so ids are
/// globally unique without coordination and sort by creation time.
pub fn message_id(ts_ms: u64) -> String {
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let value = ((ts_ms as u128 & ((1 << 48) - 1)) << 80) | random;
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = message_id(1000);
        let b = message_id(2000);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_ne!(message_id(1000), message_id(1000));
    }
}
