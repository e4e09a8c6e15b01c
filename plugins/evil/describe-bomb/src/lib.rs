//! `evil-describe-bomb`: a hostile guest whose `describe` returns huge
//! strings: a 50 MiB name, a 5 MiB version, a 20 MiB description and
//! column names of 5 MiB (170 MiB of guest memory with the SDK's copies,
//! within the default limit), each starting with a recognizable head and ending
//! with a recognizable end. `describe` takes no configuration, so this is a
//! component of its own rather than a mode of `evil`. Its rows are
//! uppercased, so a run with it does real work once it is described.

use refill_sdk::{Config, ConfigError, Info, Outcome, Row, Transform, Value, ValueType};

/// A string of `mib` MiB that starts with `head` and ends with `end`.
pub fn huge(head: &str, mib: usize, end: &str) -> String {
    let middle = (mib << 20).saturating_sub(head.len() + end.len());
    let mut s = String::with_capacity(mib << 20);
    s.push_str(head);
    s.extend(std::iter::repeat_n('z', middle));
    s.push_str(end);
    s
}

/// The transform with the huge description.
pub struct DescribeBomb;

impl Transform for DescribeBomb {
    fn describe() -> Info {
        Info::new(
            &huge("bomb-name-head", 50, "bomb-name-end"),
            &huge("9.9.9-version-head", 5, "version-end"),
            &huge("The description's head.", 20, "The description's end."),
        )
        .input(&huge("input-head", 5, "input-end"), ValueType::Any)
        .output(&huge("output-head", 5, "output-end"), ValueType::Any)
    }

    fn configure(config: &Config) -> Result<Self, ConfigError> {
        config.only(&[])?;
        Ok(DescribeBomb)
    }

    fn transform(&self, row: &Row) -> Outcome {
        match &row.values[0] {
            Value::Text(s) => Outcome::set(Value::Text(s.to_uppercase())),
            other => Outcome::set(other.clone()),
        }
    }
}

refill_sdk::export!(DescribeBomb);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_strings_have_their_size_and_both_ends() {
        let s = huge("head", 1, "end");
        assert_eq!(s.len(), 1 << 20);
        assert!(s.starts_with("headz") && s.ends_with("zend"));
    }
}
