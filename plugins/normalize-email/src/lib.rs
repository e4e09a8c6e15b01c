//! `normalize-email`: consumes one text column holding an email address,
//! produces it trimmed and lowercased. NULL stays NULL; a value without
//! exactly one `@` is a per-row error. Takes no configuration.

use refill_sdk::{Config, ConfigError, Info, Outcome, Row, Transform, Value, ValueType};

/// The transform; it has no configuration.
pub struct NormalizeEmail;

impl Transform for NormalizeEmail {
    fn describe() -> Info {
        Info::new(
            "normalize-email",
            env!("CARGO_PKG_VERSION"),
            "Trims and lowercases email addresses; refuses values without exactly one `@`.",
        )
        .input("email", ValueType::Text)
        .output("normalized", ValueType::Text)
    }

    fn configure(config: &Config) -> Result<Self, ConfigError> {
        config.only(&[])?;
        Ok(NormalizeEmail)
    }

    fn transform(&self, row: &Row) -> Outcome {
        let raw = match &row.values[0] {
            Value::Null => return Outcome::set(Value::Null),
            Value::Text(text) => text,
            other => return Outcome::Error(format!("expected text, got {}", other.type_name())),
        };
        let email = raw.trim();
        match email.matches('@').count() {
            1 => Outcome::set(Value::Text(email.to_lowercase())),
            n => Outcome::Error(format!("{raw:?} has {n} `@` signs, expected exactly one")),
        }
    }
}

refill_sdk::export!(NormalizeEmail);

#[cfg(test)]
mod tests {
    use super::*;
    use refill_sdk::Key;

    fn run(value: Value) -> Outcome {
        let t = NormalizeEmail::configure(&Config::default()).expect("no config needed");
        t.transform(&Row {
            key: Key::Text("k".into()),
            values: vec![value],
        })
    }

    #[test]
    fn trims_and_lowercases() {
        assert_eq!(
            run(Value::Text("  Ada.Lovelace@Example.COM \n".into())),
            Outcome::set(Value::Text("ada.lovelace@example.com".into()))
        );
        assert_eq!(
            run(Value::Text("ÉLODIE@exemple.fr".into())),
            Outcome::set(Value::Text("élodie@exemple.fr".into()))
        );
    }

    #[test]
    fn null_stays_null() {
        assert_eq!(run(Value::Null), Outcome::set(Value::Null));
    }

    #[test]
    fn needs_exactly_one_at_sign() {
        for bad in ["no-at-sign", "two@@example.com", "a@b@c", ""] {
            assert!(
                matches!(run(Value::Text(bad.into())), Outcome::Error(m) if m.contains("expected exactly one")),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn refuses_any_configuration() {
        let config = Config::new([("lowercase", "false")]);
        assert!(
            matches!(NormalizeEmail::configure(&config), Err(ConfigError::Unknown(n)) if n == "lowercase")
        );
    }
}
