//! `append-log`: consumes one text column, a log, and produces it with
//! `|` and a tag appended. Applying it twice appends twice: it is the
//! deliberately non-idempotent transform with which the tests show that a
//! chunk's effect is applied exactly once when its checkpoint commits with
//! its writes. NULL starts a log. Configuration: `tag` (default `refill`),
//! and `spin`, a count of busy iterations per row that makes chunks slow
//! enough for a test to kill a worker in the middle of one.

use refill_sdk::{Config, ConfigError, Info, Outcome, Row, Transform, Value, ValueType};

/// The transform and its configuration.
pub struct AppendLog {
    tag: String,
    spin: u64,
}

impl Transform for AppendLog {
    fn describe() -> Info {
        Info::new(
            "append-log",
            env!("CARGO_PKG_VERSION"),
            "Appends `|tag` to a log column: not idempotent, on purpose.",
        )
        .input("log", ValueType::Text)
        .output("log", ValueType::Text)
    }

    fn configure(config: &Config) -> Result<Self, ConfigError> {
        config.only(&["tag", "spin"])?;
        let spin = match config.get("spin") {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| ConfigError::invalid("spin", "expected a whole number"))?,
        };
        Ok(AppendLog {
            tag: config.get("tag").unwrap_or("refill").to_string(),
            spin,
        })
    }

    fn transform(&self, row: &Row) -> Outcome {
        // A busy loop the optimizer cannot remove: each step depends on
        // the last and the result is used.
        let mut x = self.spin;
        for i in 0..self.spin {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        let mark = if x == 1 { "!" } else { "" };
        match &row.values[0] {
            Value::Null => Outcome::set(Value::Text(format!("|{}{mark}", self.tag))),
            Value::Text(log) => Outcome::set(Value::Text(format!("{log}|{}{mark}", self.tag))),
            other => Outcome::Error(format!("expected text, got {}", other.type_name())),
        }
    }
}

refill_sdk::export!(AppendLog);

#[cfg(test)]
mod tests {
    use super::*;
    use refill_sdk::Key;

    fn run(config: &[(&str, &str)], value: Value) -> Outcome {
        let t = AppendLog::configure(&Config::new(config.iter().copied())).expect("valid config");
        t.transform(&Row {
            key: Key::Integer(1),
            values: vec![value],
        })
    }

    #[test]
    fn appends_the_tag_each_time() {
        let once = run(&[], Value::Text("a".into()));
        assert_eq!(once, Outcome::set(Value::Text("a|refill".into())));
        let twice = run(&[("tag", "x")], Value::Text("a|x".into()));
        assert_eq!(twice, Outcome::set(Value::Text("a|x|x".into())));
        assert_eq!(
            run(&[("spin", "1000")], Value::Null),
            Outcome::set(Value::Text("|refill".into()))
        );
    }

    #[test]
    fn refuses_a_spin_that_is_not_a_number() {
        assert!(AppendLog::configure(&Config::new([("spin", "lots")])).is_err());
    }
}
