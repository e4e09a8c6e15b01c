//! Bounded copies of text that a guest or a database controls: consumes a
//! string of any size, produces a new one of at most a given number of
//! bytes that keeps its head and its end (where a Python exception's type
//! and message, and a stack's innermost frame, stand) around a marker that
//! says how much was left out. The copy is fresh: nothing of the original
//! allocation is kept, as `String::truncate` would keep it.

/// Bytes of a guest's error message (an `error` outcome, a refused
/// configuration) that are kept, printed and stored.
pub const ERROR: usize = 4_096;
/// Bytes of one guest log line that are kept.
pub const LOG_LINE: usize = 2_048;

/// `text` if it fits in `max` bytes; else its head and its end, with
/// `… N more bytes …` between them, in at most `max` bytes (the marker
/// included; a `max` too small for the marker keeps the head only).
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    // The marker's length depends on the count it shows; the count's
    // length is at most that of the whole text's.
    let marker_len = format!(" … {} more bytes … ", text.len()).len();
    let Some(room) = max.checked_sub(marker_len) else {
        return head(text, max).to_owned();
    };
    let head = head(text, room - room / 4);
    let tail = tail(text, room / 4);
    let left_out = text.len() - head.len() - tail.len();
    format!("{head} … {left_out} more bytes … {tail}")
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The longest suffix of `text` of at most `max` bytes that starts on a
/// character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len() - max.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(clip("ValueError: bad", 100), "ValueError: bad");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn long_text_keeps_its_head_and_end_within_the_bound() {
        let text = format!("Traceback: {}ValueError: bad input", "x".repeat(100_000));
        let clipped = clip(&text, 200);
        assert!(clipped.len() <= 200, "{}", clipped.len());
        assert!(clipped.starts_with("Traceback: xxx"), "{clipped}");
        assert!(clipped.ends_with("ValueError: bad input"), "{clipped}");
        let shown: usize = clipped
            .split(" … ")
            .nth(1)
            .and_then(|m| m.strip_suffix(" more bytes"))
            .and_then(|n| n.parse().ok())
            .expect("a count of the bytes left out");
        let kept = clipped.len() - format!(" … {shown} more bytes … ").len();
        assert_eq!(kept + shown, text.len(), "the count is exact");
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let text = "é".repeat(10_000);
        for max in [0, 1, 2, 3, 31, 32, 33, 100, 101] {
            let clipped = clip(&text, max);
            assert!(clipped.len() <= max, "{max}: {}", clipped.len());
        }
        assert!(clip(&text, 100).contains("more bytes"));
    }

    #[test]
    fn the_copy_owns_only_what_it_keeps() {
        let text = "y".repeat(1 << 20);
        assert!(clip(&text, LOG_LINE).capacity() <= 2 * LOG_LINE);
    }
}
