//! `remap`: consumes one text column, produces one text column by looking
//! each value up in a fixed mapping (`map = "open=active,won=closed_won"`,
//! optional `default`). NULL stays NULL; a value with no mapping and no
//! default is a per-row error.

use std::collections::BTreeMap;

use refill_sdk::{Config, ConfigError, Info, Outcome, Row, Transform, Value, ValueType};

/// A parsed mapping.
pub struct Remap {
    map: BTreeMap<String, String>,
    default: Option<String>,
}

impl Remap {
    fn parse_map(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut map = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((from, to)) = pair.split_once('=') else {
                return Err(ConfigError::invalid(
                    "map",
                    format!("`{pair}` is not a `from=to` pair"),
                ));
            };
            let (from, to) = (from.trim(), to.trim());
            if map.insert(from.to_string(), to.to_string()).is_some() {
                return Err(ConfigError::invalid(
                    "map",
                    format!("`{from}` is mapped twice"),
                ));
            }
        }
        if map.is_empty() {
            return Err(ConfigError::invalid("map", "the mapping is empty"));
        }
        Ok(map)
    }
}

impl Transform for Remap {
    fn describe() -> Info {
        Info::new(
            "remap",
            env!("CARGO_PKG_VERSION"),
            "Maps each text value to another through a fixed table.",
        )
        .input("value", ValueType::Text)
        .output("mapped", ValueType::Text)
    }

    fn configure(config: &Config) -> Result<Self, ConfigError> {
        config.only(&["map", "default"])?;
        let map = Self::parse_map(config.require("map")?)?;
        let default = config.get("default").map(str::to_string);
        Ok(Remap { map, default })
    }

    fn transform(&self, row: &Row) -> Outcome {
        let text = match &row.values[0] {
            Value::Null => return Outcome::set(Value::Null),
            Value::Text(text) => text,
            other => return Outcome::Error(format!("expected text, got {}", other.type_name())),
        };
        match self.map.get(text).or(self.default.as_ref()) {
            Some(mapped) => Outcome::set(Value::Text(mapped.clone())),
            None => Outcome::Error(format!("no mapping for {text:?} and no default")),
        }
    }
}

refill_sdk::export!(Remap);

#[cfg(test)]
mod tests {
    use super::*;
    use refill_sdk::Key;

    fn remap(params: &[(&str, &str)]) -> Result<Remap, ConfigError> {
        Remap::configure(&Config::new(params.iter().copied()))
    }

    fn run(remap: &Remap, value: Value) -> Outcome {
        remap.transform(&Row {
            key: Key::Integer(7),
            values: vec![value],
        })
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    #[test]
    fn maps_known_values_and_keeps_null() {
        let r = remap(&[("map", "open=active, won = closed_won")]).expect("valid config");
        assert_eq!(run(&r, text("open")), Outcome::set(text("active")));
        assert_eq!(run(&r, text("won")), Outcome::set(text("closed_won")));
        assert_eq!(run(&r, Value::Null), Outcome::set(Value::Null));
    }

    #[test]
    fn unmapped_value_is_an_error_without_default_and_mapped_with_one() {
        let strict = remap(&[("map", "open=active")]).expect("valid config");
        assert!(matches!(run(&strict, text("Open")), Outcome::Error(m) if m.contains("\"Open\"")));
        let lenient = remap(&[("map", "open=active"), ("default", "other")]).expect("valid");
        assert_eq!(run(&lenient, text("Open")), Outcome::set(text("other")));
    }

    #[test]
    fn non_text_input_is_a_per_row_error() {
        let r = remap(&[("map", "1=one")]).expect("valid config");
        assert!(matches!(run(&r, Value::Integer(1)), Outcome::Error(m) if m.contains("integer")));
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(matches!(remap(&[]), Err(ConfigError::Missing(n)) if n == "map"));
        assert!(
            matches!(remap(&[("map", "a=b"), ("mapp", "x")]), Err(ConfigError::Unknown(n)) if n == "mapp")
        );
        assert!(
            matches!(remap(&[("map", "open")]), Err(ConfigError::Invalid(p)) if p.reason.contains("`open`"))
        );
        assert!(
            matches!(remap(&[("map", "a=b,a=c")]), Err(ConfigError::Invalid(p)) if p.reason.contains("twice"))
        );
        assert!(
            matches!(remap(&[("map", " , ")]), Err(ConfigError::Invalid(p)) if p.reason.contains("empty"))
        );
    }
}
