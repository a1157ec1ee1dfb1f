//! Repeating a user's value in a message: cut short and with nothing that could disguise it.

/// Most characters of a user-supplied value a message repeats.
const ECHO_CHARS: usize = 120;

/// A user-supplied value as an error message may repeat it: cut to 120 characters with an
/// ellipsis, with control characters and bidirectional overrides (which could make a terminal or
/// page show something else than what was sent) escaped.
pub fn echo(value: &str) -> String {
    escaped(value, ECHO_CHARS, false)
}

/// A whole message that may quote user input: cut at `max_chars`, and escaped like [`echo`]
/// except for line breaks and tabs, which it may use for its own layout.
pub fn echo_within(message: &str, max_chars: usize) -> String {
    escaped(message, max_chars, true)
}

fn escaped(value: &str, max_chars: usize, layout: bool) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        let bidi = matches!(
            c,
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        );
        if (c.is_control() && !(layout && matches!(c, '\n' | '\t'))) || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::echo;

    #[test]
    fn echoed_values_are_short_and_cannot_hide_what_they_are() {
        assert_eq!(echo("etl"), "etl");
        let long = "a".repeat(1_000_000);
        let e = echo(&long);
        assert_eq!(e.chars().count(), 121);
        assert!(e.ends_with('…'));
        assert_eq!(echo("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
    }
}
