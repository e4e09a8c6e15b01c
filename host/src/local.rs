//! The local runner for transform authors: consumes rows from a JSON-lines
//! file and a loaded transform, produces each row's outcome, with no
//! database and no state store. `refill try COMPONENT --input rows.jsonl`
//! and `refill run SPEC --input rows.jsonl` are built on it.
//!
//! Each input line is a JSON object with the row's `key` (an integer or a
//! string) and one field per input column the transform declares, named as
//! it declares them; `values` (an array, in declared order) may be given
//! instead. A JSON value becomes the transform's value by the declared
//! type: `null` is NULL, booleans and numbers are themselves, a string is
//! text (or JSON text for a `json` column, an RFC 3339 time for a
//! `timestamp` column, hex for a `bytes` column), and an object or array is
//! JSON text.

use std::path::{Path, PathBuf};

use serde_json::{Value as J, json};

use crate::transform::bindings::refill::transform::types::Key as WitKey;
use crate::transform::{Instance, Isolated, Runner, Setup, TransformError, run_isolating};
use crate::value::{self, Info, Outcome, Row, Value, ValueType};

/// Why rows could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line does not describe a row the transform can take.
    #[error("{}:{line}: {message}", path.display())]
    Row {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The transform could not run at all.
    #[error(transparent)]
    Transform(#[from] TransformError),
}

/// Reads the rows of a JSON-lines file for a transform that declares
/// `info`'s inputs. Blank lines are skipped.
pub fn read_rows(path: &Path, info: &Info) -> Result<Vec<Row>, LocalError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(line, info).map_err(|message| LocalError::Row {
            path: path.to_path_buf(),
            line: i as u64 + 1,
            message,
        })?;
        rows.push(row);
    }
    Ok(rows)
}

fn parse_row(line: &str, info: &Info) -> Result<Row, String> {
    let doc: J = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let J::Object(fields) = doc else {
        return Err("each line must be a JSON object with a \"key\" and the input columns".into());
    };
    let key = match fields.get("key") {
        Some(J::Number(n)) if n.is_i64() => WitKey::Integer(n.as_i64().unwrap_or_default()),
        Some(J::String(s)) => WitKey::Text(s.clone()),
        _ => return Err("\"key\" must be an integer or a string".into()),
    };
    let names: Vec<&str> = info.inputs.iter().map(|c| c.name.as_str()).collect();
    let raw: Vec<J> = match fields.get("values") {
        Some(J::Array(values)) => {
            if values.len() != names.len() {
                return Err(format!(
                    "\"values\" holds {} values; the transform reads {} ({})",
                    values.len(),
                    names.len(),
                    names.join(", ")
                ));
            }
            values.clone()
        }
        Some(_) => return Err("\"values\" must be an array".into()),
        None => {
            if let Some(unknown) = fields
                .keys()
                .find(|k| *k != "key" && !names.contains(&k.as_str()))
            {
                return Err(format!(
                    "field \"{unknown}\" is not an input of the transform (it reads {})",
                    names.join(", ")
                ));
            }
            names
                .iter()
                .map(|n| fields.get(*n).cloned().unwrap_or(J::Null))
                .collect()
        }
    };
    let values = raw
        .iter()
        .zip(&info.inputs)
        .map(|(v, column)| {
            to_value(v, column.type_).map_err(|why| format!("column \"{}\": {why}", column.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Row { key, values })
}

/// A JSON value as the transform's value for a column of type `ty`.
fn to_value(v: &J, ty: ValueType) -> Result<Value, String> {
    Ok(match (v, ty) {
        (J::Null, _) => Value::Null,
        (J::Bool(b), _) => Value::Boolean(*b),
        (J::Number(n), _) => match n.as_i64() {
            Some(i) if ty != ValueType::Float => Value::Integer(i),
            _ => Value::Float(n.as_f64().ok_or("a number out of range")?),
        },
        (J::String(s), ValueType::Json) => Value::Json(s.clone()),
        (J::String(s), ValueType::Timestamp) => value::parse_timestamp_text(s)
            .map(value::timestamp)
            .ok_or_else(|| format!("{s:?} is not an RFC 3339 time"))?,
        (J::String(s), ValueType::Bytes) => Value::Bytes(
            hex::decode(s.trim_start_matches("\\x"))
                .map_err(|e| format!("{s:?} is not hex: {e}"))?,
        ),
        (J::String(s), _) => Value::Text(s.clone()),
        (other, _) => Value::Json(other.to_string()),
    })
}

/// A value as JSON for people: text as a string, JSON parsed when it
/// parses, bytes as `\x` hex, times in RFC 3339.
pub fn to_json(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Text(s) => J::String(s.clone()),
        Value::Bytes(b) => J::String(format!("\\x{}", hex::encode(b))),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone())),
        Value::Timestamp(t) => value::timestamp_text(t).map_or(J::Null, J::String),
    }
}

/// What happened to one row.
#[derive(Debug)]
pub struct Tried {
    /// The row's key.
    pub key: WitKey,
    /// Its outcome, or the trap or broken contract it caused.
    pub result: Result<Outcome, TransformError>,
}

impl Tried {
    /// One JSON object: `key`, `outcome` (`update`, `skip`, `error` or
    /// `trap`), and `values` (by output column name) or `error`.
    pub fn to_json(&self, info: &Info) -> J {
        let key = match &self.key {
            WitKey::Integer(i) => json!(i),
            WitKey::Text(s) => json!(s),
        };
        match &self.result {
            Ok(Outcome::Update(values)) => {
                let mut out = serde_json::Map::new();
                for (i, v) in values.iter().enumerate() {
                    let name = info
                        .outputs
                        .get(i)
                        .map_or_else(|| format!("#{i}"), |c| c.name.clone());
                    out.insert(name, to_json(v));
                }
                json!({"key": key, "outcome": "update", "values": out})
            }
            Ok(Outcome::Skip) => json!({"key": key, "outcome": "skip"}),
            Ok(Outcome::Error(e)) => json!({"key": key, "outcome": "error", "error": e}),
            Err(e) => json!({"key": key, "outcome": "trap", "error": e.to_string()}),
        }
    }

    /// Whether the row failed (an error outcome or a trap).
    pub fn failed(&self) -> bool {
        matches!(self.result, Ok(Outcome::Error(_)) | Err(_))
    }
}

/// Reads a file of expected outcomes: one JSON object per line, as
/// [`Tried::to_json`] writes them (blank lines are skipped).
pub fn read_expected(path: &Path) -> Result<Vec<J>, LocalError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let doc: J = serde_json::from_str(line).map_err(|e| LocalError::Row {
            path: path.to_path_buf(),
            line: i as u64 + 1,
            message: format!("not a JSON object: {e}"),
        })?;
        out.push(doc);
    }
    Ok(out)
}

/// The differences between expected and actual outcomes, row by row in
/// order, each naming the row's position and key.
pub fn compare(expected: &[J], got: &[J]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, pair) in expected.iter().zip(got).enumerate() {
        let (want, have) = pair;
        if want != have {
            out.push(format!(
                "row {} (key {}): expected {want}, got {have}",
                i + 1,
                have["key"]
            ));
        }
    }
    for (i, want) in expected.iter().enumerate().skip(got.len()) {
        out.push(format!(
            "row {}: expected {want}, but the input has no such row",
            i + 1
        ));
    }
    for (i, have) in got.iter().enumerate().skip(expected.len()) {
        out.push(format!(
            "row {} (key {}): no outcome expected, got {have}",
            i + 1,
            have["key"]
        ));
    }
    out
}

/// Runs `rows` through `instance` (made by `runner` with `setup`, which
/// make its replacements) in batches of `batch_rows`, isolating rows that
/// trap, and calls `each` with every row's outcome and the guest's log
/// lines of its batch, in order.
pub fn run_rows(
    runner: &Runner,
    setup: &Setup,
    instance: Instance,
    rows: Vec<Row>,
    batch_rows: usize,
    mut each: impl FnMut(Tried, &[crate::transform::LogLine]),
) -> Result<(), LocalError> {
    let mut slot = Some(instance);
    for batch in rows.chunks(batch_rows.max(1)) {
        let mut out = Isolated::default();
        run_isolating(runner, setup, &mut slot, batch, &mut out)?;
        let mut logs = Some(out.logs);
        for (row, result) in batch.iter().zip(out.results) {
            let tried = Tried {
                key: row.key.clone(),
                result,
            };
            each(tried, logs.take().as_deref().unwrap_or(&[]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Column;

    fn info(inputs: &[(&str, ValueType)]) -> Info {
        Info {
            name: "t".into(),
            version: "0".into(),
            description: String::new(),
            inputs: inputs
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    type_: *t,
                })
                .collect(),
            outputs: vec![],
        }
    }

    #[test]
    fn expected_outcomes_are_compared_row_by_row_naming_the_row() {
        let row = |key: i64, v: &str| json!({"key": key, "outcome": "update", "values": {"x": v}});
        let expected = vec![row(1, "a"), row(2, "b")];
        assert!(compare(&expected, &expected.clone()).is_empty());
        let differences = compare(&expected, &[row(1, "a"), row(2, "c")]);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(
            differences[0].starts_with("row 2 (key 2): expected"),
            "{differences:?}"
        );
        assert!(compare(&expected, &[row(1, "a")])[0].contains("the input has no such row"));
        assert!(compare(&expected[..1], &expected)[0].contains("no outcome expected"));
    }

    #[test]
    fn lines_become_rows_by_declared_name_and_type() {
        let i = info(&[
            ("status", ValueType::Text),
            ("doc", ValueType::Json),
            ("at", ValueType::Timestamp),
            ("n", ValueType::Float),
        ]);
        let row = parse_row(
            r#"{"key": 7, "status": "open", "doc": {"a": 1}, "at": "2024-01-02T03:04:05Z", "n": 2}"#,
            &i,
        )
        .expect("parses");
        assert_eq!(row.key, WitKey::Integer(7));
        assert_eq!(row.values[0], Value::Text("open".into()));
        assert_eq!(row.values[1], Value::Json("{\"a\":1}".into()));
        assert!(matches!(row.values[2], Value::Timestamp(t) if t.seconds == 1_704_164_645));
        assert_eq!(row.values[3], Value::Float(2.0));
        let missing = parse_row(r#"{"key": "k"}"#, &i).expect("missing fields are NULL");
        assert_eq!(missing.values, vec![Value::Null; 4]);
        let positional = parse_row(r#"{"key": 1, "values": ["a", null, null, 1.5]}"#, &i)
            .expect("values by position");
        assert_eq!(positional.values[3], Value::Float(1.5));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let i = info(&[("status", ValueType::Text)]);
        for (line, expected) in [
            ("[1]", "JSON object"),
            (r#"{"status": "x"}"#, "\"key\" must be"),
            (
                r#"{"key": 1, "stauts": "x"}"#,
                "field \"stauts\" is not an input",
            ),
            (r#"{"key": 1, "values": []}"#, "holds 0 values"),
            ("{oops", "not JSON"),
        ] {
            let err = parse_row(line, &i).expect_err(line);
            assert!(err.contains(expected), "{line}: {err}");
        }
    }
}
