//! `remap`: consumes one text column, produces one text column by looking
//! each value up in a fixed mapping (`map = "open=active,won=closed_won"`),
//! then in the spec's lookup table `table` if one is named, then falling
//! back to `default`. NULL stays NULL; a value with no mapping and no
//! default is a per-row error.
//!
//! The Python (`plugins/remap-py`) and JavaScript (`plugins/remap-js`)
//! versions implement exactly this behaviour, messages included: the
//! end-to-end tests compare their outcomes row by row.

use std::collections::BTreeMap;

use refill_sdk::{
    Config, ConfigError, Info, LookupError, Outcome, Row, Transform, Value, ValueType,
};

/// A parsed mapping.
pub struct Remap {
    map: BTreeMap<String, String>,
    table: Option<String>,
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
        config.only(&["map", "table", "default"])?;
        let table = config.get("table").map(str::to_string);
        let map = match (config.get("map"), &table) {
            (Some(text), _) => Self::parse_map(text)?,
            (None, Some(_)) => BTreeMap::new(),
            (None, None) => return Err(ConfigError::Missing("map".into())),
        };
        if map.is_empty() && table.is_none() {
            return Err(ConfigError::invalid("map", "the mapping is empty"));
        }
        if let Some(name) = &table
            && let Err(error) = refill_sdk::lookup(name, "")
        {
            return Err(ConfigError::invalid("table", lookup_failure(name, &error)));
        }
        let default = config.get("default").map(str::to_string);
        Ok(Remap {
            map,
            table,
            default,
        })
    }

    fn transform(&self, row: &Row) -> Outcome {
        let text = match &row.values[0] {
            Value::Null => return Outcome::set(Value::Null),
            Value::Text(text) => text,
            other => return Outcome::Error(format!("expected text, got {}", other.type_name())),
        };
        if let Some(mapped) = self.map.get(text) {
            return Outcome::set(Value::Text(mapped.clone()));
        }
        if let Some(name) = &self.table {
            match refill_sdk::lookup(name, text) {
                Ok(Some(mapped)) => return Outcome::set(Value::Text(mapped)),
                Ok(None) => {}
                Err(error) => return Outcome::Error(lookup_failure(name, &error)),
            }
        }
        match &self.default {
            Some(mapped) => Outcome::set(Value::Text(mapped.clone())),
            None => Outcome::Error(format!("no mapping for \"{text}\" and no default")),
        }
    }
}

fn lookup_failure(table: &str, error: &LookupError) -> String {
    match error {
        LookupError::UnknownTable(_) => format!("the spec declares no lookup table \"{table}\""),
        LookupError::Other(why) => format!("lookup table \"{table}\": {why}"),
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
    fn the_lookup_table_comes_after_the_map_and_before_the_default() {
        refill_sdk::testing::set_lookup("plans", [("gold", "premium"), ("open", "ignored")]);
        let r = remap(&[("map", "open=active"), ("table", "plans")]).expect("valid");
        assert_eq!(run(&r, text("open")), Outcome::set(text("active")));
        assert_eq!(run(&r, text("gold")), Outcome::set(text("premium")));
        assert!(
            matches!(run(&r, text("tin")), Outcome::Error(m) if m == "no mapping for \"tin\" and no default")
        );
        let only_table = remap(&[("table", "plans"), ("default", "basic")]).expect("valid");
        assert_eq!(run(&only_table, text("tin")), Outcome::set(text("basic")));
        assert!(
            matches!(remap(&[("table", "nope")]), Err(ConfigError::Invalid(p)) if p.name == "table" && p.reason.contains("\"nope\""))
        );
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
