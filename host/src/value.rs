//! Values as they cross the pipeline: consumes database column types and
//! the WIT `value` cases, produces the [`ColumnKind`] of each column, the
//! checks that a column fits what the transform declares, the coercion of a
//! transform's output to the column it is written to, and short renderings
//! of values for diffs.

use std::fmt;

use chrono::{DateTime, Utc};

pub use crate::transform::bindings::refill::transform::types::{
    Column, ConfigError, Info, Outcome, Param, Row, Timestamp, Value, ValueType,
};

/// How a database column's values are read and written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Read and written as `value::boolean`.
    Boolean,
    /// Read and written as `value::integer`.
    Integer,
    /// Read and written as `value::float`.
    Float,
    /// Text types (text, varchar, char): `value::text`.
    Text,
    /// Binary: `value::bytes`.
    Bytes,
    /// JSON documents: `value::json`.
    Json,
    /// Timestamps: `value::timestamp`.
    Timestamp,
    /// Any other type, read in the database's text form and written back
    /// through a cast to the named SQL type (numeric, uuid, date, enums…).
    TextForm(String),
    /// No declared type (SQLite): every value keeps its storage class.
    Any,
}

impl ColumnKind {
    /// The WIT type values of this column are read as.
    pub fn value_type(&self) -> ValueType {
        match self {
            ColumnKind::Boolean => ValueType::Boolean,
            ColumnKind::Integer => ValueType::Integer,
            ColumnKind::Float => ValueType::Float,
            ColumnKind::Text | ColumnKind::TextForm(_) => ValueType::Text,
            ColumnKind::Bytes => ValueType::Bytes,
            ColumnKind::Json => ValueType::Json,
            ColumnKind::Timestamp => ValueType::Timestamp,
            ColumnKind::Any => ValueType::Any,
        }
    }

    /// Whether a transform input declared as `declared` can read this column.
    pub fn feeds(&self, declared: ValueType) -> bool {
        let have = self.value_type();
        declared == ValueType::Any || have == ValueType::Any || have == declared
    }

    /// Whether a transform output declared as `declared` can be written to
    /// this column.
    pub fn takes(&self, declared: ValueType) -> bool {
        use ValueType as T;
        match (self, declared) {
            (_, T::Any) | (ColumnKind::Any, _) => true,
            (ColumnKind::Float, T::Integer) => true,
            (ColumnKind::Json, T::Text) => true,
            (ColumnKind::TextForm(_), T::Text | T::Integer | T::Float) => true,
            (kind, t) => kind.value_type() == t,
        }
    }

    /// Converts an output value to what this column stores, or says why it
    /// cannot be.
    pub fn coerce(&self, value: Value) -> Result<Value, String> {
        Ok(match (self, value) {
            (_, Value::Null) => Value::Null,
            (ColumnKind::Any, v) => v,
            (ColumnKind::Boolean, v @ Value::Boolean(_)) => v,
            (ColumnKind::Integer, v @ Value::Integer(_)) => v,
            (ColumnKind::Float, v @ Value::Float(_)) => v,
            #[expect(
                clippy::cast_precision_loss,
                reason = "an integer written to a float column is meant as a float"
            )]
            (ColumnKind::Float, Value::Integer(i)) => Value::Float(i as f64),
            (ColumnKind::Text, v @ Value::Text(_)) => v,
            (ColumnKind::Bytes, v @ Value::Bytes(_)) => v,
            (ColumnKind::Json, v @ Value::Json(_)) => v,
            (ColumnKind::Json, Value::Text(t)) => Value::Json(t),
            (ColumnKind::Timestamp, Value::Timestamp(t)) if to_datetime(&t).is_none() => {
                return Err(format!("timestamp {}s is out of range", t.seconds));
            }
            (ColumnKind::Timestamp, v @ Value::Timestamp(_)) => v,
            (ColumnKind::TextForm(_), v @ Value::Text(_)) => v,
            (ColumnKind::TextForm(_), Value::Integer(i)) => Value::Text(i.to_string()),
            (ColumnKind::TextForm(_), Value::Float(f)) => Value::Text(f.to_string()),
            (kind, v) => {
                return Err(format!(
                    "cannot write {} to a column of type {kind}",
                    type_name(&v)
                ));
            }
        })
    }
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnKind::TextForm(sql) => f.write_str(sql),
            other => f.write_str(value_type_name(other.value_type())),
        }
    }
}

/// The name of a WIT value type, for messages.
pub fn value_type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::Any => "any",
        ValueType::Boolean => "boolean",
        ValueType::Integer => "integer",
        ValueType::Float => "float",
        ValueType::Text => "text",
        ValueType::Bytes => "bytes",
        ValueType::Json => "json",
        ValueType::Timestamp => "timestamp",
    }
}

/// The name of a value's case, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Json(_) => "json",
        Value::Timestamp(_) => "timestamp",
    }
}

/// Whether writing `new` over `old` would leave the column as it is. Floats
/// compare by bits, so NaN equals NaN and a rewrite is not forced forever.
pub fn same(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        (a, b) => a == b,
    }
}

/// A timestamp value from a UTC time.
pub fn timestamp(t: DateTime<Utc>) -> Value {
    Value::Timestamp(Timestamp {
        seconds: t.timestamp(),
        nanoseconds: t.timestamp_subsec_nanos(),
    })
}

/// The UTC time of a timestamp value, if it is in chrono's range.
pub fn to_datetime(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanoseconds)
}

/// Parses the text forms SQLite databases commonly hold for timestamps
/// (`2024-01-31 12:00:00`, with an optional fraction, a `T`, and a `Z` or
/// offset). Times without an offset are taken as UTC.
pub fn parse_timestamp_text(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d",
    ]
    .iter()
    .find_map(|f| {
        chrono::NaiveDateTime::parse_from_str(text, f)
            .ok()
            .or_else(|| {
                chrono::NaiveDate::parse_from_str(text, f)
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
    })
    .map(|naive| naive.and_utc())
}

/// The text form refill writes timestamps in to SQLite: SQLite's own
/// `YYYY-MM-DD HH:MM:SS`, with a fraction only when there is one, in UTC.
pub fn timestamp_text(t: &Timestamp) -> Option<String> {
    let dt = to_datetime(t)?;
    let mut text = dt.format("%Y-%m-%d %H:%M:%S").to_string();
    if t.nanoseconds != 0 {
        let frac = format!("{:09}", t.nanoseconds);
        text.push('.');
        text.push_str(frac.trim_end_matches('0'));
    }
    Some(text)
}

/// Appends a value as JSON, losslessly, to `out`: `null`, `true`,
/// `["i",5]`, `["f",bits]` (the float's bits, so NaN survives),
/// `["t","text"]`, `["x","00ff"]` (bytes in hex), `["j","{}"]`,
/// `["ts",seconds,nanoseconds]`. It writes text directly, without a JSON
/// tree: before-images hold one per changed row and column.
pub fn write_json(out: &mut String, value: &Value) {
    use std::fmt::Write as _;
    match value {
        Value::Null => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => {
            let _ = write!(out, "[\"i\",{i}]");
        }
        Value::Float(f) => {
            let _ = write!(out, "[\"f\",{}]", f.to_bits());
        }
        Value::Text(s) => {
            out.push_str("[\"t\",");
            write_json_string(out, s);
            out.push(']');
        }
        Value::Bytes(b) => {
            out.push_str("[\"x\",\"");
            out.push_str(&hex::encode(b));
            out.push_str("\"]");
        }
        Value::Json(s) => {
            out.push_str("[\"j\",");
            write_json_string(out, s);
            out.push(']');
        }
        Value::Timestamp(t) => {
            let _ = write!(out, "[\"ts\",{},{}]", t.seconds, t.nanoseconds);
        }
    }
}

/// Appends `s` as a JSON string literal.
fn write_json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reads a value written by [`write_json`].
pub fn from_json(json: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Boolean(*b),
        J::Array(parts) => match (parts.first()?.as_str()?, parts.get(1)?) {
            ("i", v) => Value::Integer(v.as_i64()?),
            ("f", v) => Value::Float(f64::from_bits(v.as_u64()?)),
            ("t", v) => Value::Text(v.as_str()?.to_string()),
            ("x", v) => Value::Bytes(hex::decode(v.as_str()?).ok()?),
            ("j", v) => Value::Json(v.as_str()?.to_string()),
            ("ts", v) => Value::Timestamp(Timestamp {
                seconds: v.as_i64()?,
                nanoseconds: u32::try_from(parts.get(2)?.as_u64()?).ok()?,
            }),
            _ => return None,
        },
        _ => return None,
    })
}

/// A stable fingerprint of a row's input values: the sha256 of their
/// lossless JSON form. Dead letters carry it, so a retry can tell whether a
/// row's inputs changed since it failed.
pub fn fingerprint(values: &[Value]) -> String {
    use sha2::{Digest, Sha256};
    let mut json = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        write_json(&mut json, v);
    }
    json.push(']');
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// A short, one-line rendering of a value for diffs and samples.
pub struct Short<'a>(pub &'a Value);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 60;
        let clip = |s: &str| -> String {
            if s.chars().count() <= MAX {
                s.to_string()
            } else {
                format!("{}…", s.chars().take(MAX).collect::<String>())
            }
        };
        match self.0 {
            Value::Null => f.write_str("NULL"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{:?}", clip(s)),
            Value::Json(s) => write!(f, "json {}", clip(s)),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::Timestamp(t) => match to_datetime(t) {
                Some(dt) => write!(
                    f,
                    "{}",
                    dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
                None => write!(f, "timestamp({}s, {}ns)", t.seconds, t.nanoseconds),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_kinds_check_declared_types() {
        assert!(ColumnKind::Text.feeds(ValueType::Text));
        assert!(ColumnKind::TextForm("numeric(10,2)".into()).feeds(ValueType::Text));
        assert!(!ColumnKind::Integer.feeds(ValueType::Text));
        assert!(ColumnKind::Any.feeds(ValueType::Text));
        assert!(ColumnKind::Float.takes(ValueType::Integer));
        assert!(!ColumnKind::Integer.takes(ValueType::Float));
        assert!(!ColumnKind::Text.takes(ValueType::Integer));
    }

    #[test]
    fn outputs_are_coerced_or_refused() {
        assert_eq!(
            ColumnKind::Float.coerce(Value::Integer(2)),
            Ok(Value::Float(2.0))
        );
        assert_eq!(
            ColumnKind::Json.coerce(Value::Text("{}".into())),
            Ok(Value::Json("{}".into()))
        );
        assert_eq!(ColumnKind::Integer.coerce(Value::Null), Ok(Value::Null));
        assert_eq!(
            ColumnKind::TextForm("numeric".into()).coerce(Value::Integer(5)),
            Ok(Value::Text("5".into()))
        );
        assert_eq!(
            ColumnKind::Integer.coerce(Value::Text("5".into())),
            Err("cannot write text to a column of type integer".into())
        );
    }

    #[test]
    fn short_renders_values_on_one_line() {
        assert_eq!(Short(&Value::Null).to_string(), "NULL");
        assert_eq!(
            Short(&Value::Text("a\"b\nc".into())).to_string(),
            r#""a\"b\nc""#
        );
        assert_eq!(Short(&Value::Bytes(vec![0; 12])).to_string(), "<12 bytes>");
        let long = "é".repeat(100);
        assert_eq!(Short(&Value::Text(long)).to_string().chars().count(), 63);
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        };
        assert_eq!(
            Short(&Value::Timestamp(t)).to_string(),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn timestamp_text_round_trips() {
        for text in [
            "2024-01-31 12:00:00",
            "2024-01-31 12:00:00.25",
            "1969-12-31 23:59:59.000000001",
        ] {
            let parsed = parse_timestamp_text(text).expect("parses");
            let Value::Timestamp(t) = timestamp(parsed) else {
                unreachable!()
            };
            assert_eq!(timestamp_text(&t).as_deref(), Some(text));
        }
        let iso = parse_timestamp_text("2024-01-31T13:00:00+01:00").expect("parses");
        assert_eq!(
            iso,
            parse_timestamp_text("2024-01-31 12:00:00").expect("parses")
        );
        assert!(parse_timestamp_text("2024-01-31").is_some());
        assert!(parse_timestamp_text("yesterday").is_none());
    }

    #[test]
    fn values_round_trip_through_json() {
        let values = [
            Value::Null,
            Value::Boolean(false),
            Value::Integer(i64::MIN),
            Value::Float(f64::NAN),
            Value::Float(-0.0),
            Value::Text("ünï😀 \"quoted\" back\\slash\n\u{1}".into()),
            Value::Bytes(vec![0, 255]),
            Value::Json("{\"a\": 1}".into()),
            Value::Timestamp(Timestamp {
                seconds: -1,
                nanoseconds: 999_999_999,
            }),
        ];
        for v in &values {
            let mut text = String::new();
            write_json(&mut text, v);
            let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
            let back = from_json(&parsed).expect("decodes");
            assert!(same(v, &back), "{v:?} became {back:?}");
        }
        assert_eq!(fingerprint(&values), fingerprint(&values.clone()));
        assert_ne!(fingerprint(&values[..2]), fingerprint(&values[1..3]));
    }

    #[test]
    fn nan_is_the_same_as_nan() {
        assert!(same(&Value::Float(f64::NAN), &Value::Float(f64::NAN)));
        assert!(!same(&Value::Integer(1), &Value::Float(1.0)));
    }
}
