//! The short form of an id, as people read and type it.
//!
//! Ids are UUIDv7: their first 12 hex digits are a millisecond timestamp, so every run created
//! within a minute shares its first 8. The short form is the last group instead, 12 hex digits
//! that come from the random part (and, within one millisecond, a counter): unique in practice,
//! and accepted back wherever an id is.

use uuid::Uuid;

/// How many hex digits a short id has.
pub const SHORT_LEN: usize = 12;

/// The short form of `id`: its last 12 hex digits.
pub fn short(id: &Uuid) -> String {
    let text = id.hyphenated().to_string();
    text[text.len() - SHORT_LEN..].to_owned()
}

/// Whether `given` has the shape of a short id (12 hex digits, no hyphen).
pub fn is_short(given: &str) -> bool {
    given.len() == SHORT_LEN && given.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_together_have_different_short_forms() {
        let ids: Vec<Uuid> = (0..100_000).map(|_| Uuid::now_v7()).collect();
        let shorts: std::collections::HashSet<String> = ids.iter().map(short).collect();
        assert_eq!(
            shorts.len(),
            ids.len(),
            "no two of 100,000 ids made at once collide"
        );
        assert!(ids.iter().all(|id| id.to_string().ends_with(&short(id))));
        assert!(is_short(&short(&ids[0])));
        assert!(!is_short("01a2090c") && !is_short("01a2090c-1ab9"));
    }
}
