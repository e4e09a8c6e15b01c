//! `{{name}}`: uppercases a text column. NULL stays NULL; any other value
//! is that row's error. Replace it with your migration's logic.

use refill_sdk::{Config, ConfigError, Info, Outcome, Row, Transform, Value, ValueType};

/// The configured transform.
pub struct Upper;

impl Transform for Upper {
    fn describe() -> Info {
        Info::new("{{name}}", env!("CARGO_PKG_VERSION"), "Uppercases a text column.")
            .input("value", ValueType::Text)
            .output("upper", ValueType::Text)
    }

    fn configure(config: &Config) -> Result<Self, ConfigError> {
        config.only(&[])?;
        Ok(Upper)
    }

    fn transform(&self, row: &Row) -> Outcome {
        match &row.values[0] {
            Value::Text(s) => Outcome::set(Value::Text(s.to_uppercase())),
            Value::Null => Outcome::set(Value::Null),
            other => Outcome::Error(format!("expected text, got {}", other.type_name())),
        }
    }
}

refill_sdk::export!(Upper);

#[cfg(test)]
mod tests {
    use super::*;
    use refill_sdk::Key;

    fn row(value: Value) -> Row {
        Row {
            key: Key::Integer(1),
            values: vec![value],
        }
    }

    #[test]
    fn uppercases_text_and_refuses_other_values() {
        let upper = Upper::configure(&Config::new(Vec::<(String, String)>::new())).expect("config");
        assert_eq!(
            upper.transform(&row(Value::Text("hello".into()))),
            Outcome::set(Value::Text("HELLO".into()))
        );
        assert_eq!(upper.transform(&row(Value::Null)), Outcome::set(Value::Null));
        assert_eq!(
            upper.transform(&row(Value::Integer(42))),
            Outcome::Error("expected text, got integer".into())
        );
    }
}
