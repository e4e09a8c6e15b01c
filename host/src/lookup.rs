//! Side data: consumes the spec's `[[lookup]]` sections (a CSV or
//! JSON-lines file, or a SQL query on the source database) and produces
//! read-only key → value [`Lookups`] that a transform reads through the
//! host's `lookup(name, key)` import. Each table is loaded once, before any
//! row is read, and has a digest of its contents that the run records, so a
//! run can be traced to the exact mapping it joined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::source::Database;
use crate::spec::{LookupSpec, Spec};

/// Why a lookup table could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The file could not be read.
    #[error("lookup table \"{table}\": cannot read {}: {source}", path.display())]
    Read {
        /// The table's name.
        table: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line or record of the file is malformed.
    #[error("lookup table \"{table}\": {}:{line}: {message}", path.display())]
    Parse {
        /// The table's name.
        table: String,
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The same key appears twice.
    #[error(
        "lookup table \"{table}\": key {key:?} appears twice ({at}); a lookup table maps each key to one value"
    )]
    Duplicate {
        /// The table's name.
        table: String,
        /// The key.
        key: String,
        /// Where the second one is.
        at: String,
    },
    /// The query failed or returned something unusable.
    #[error("lookup table \"{table}\": {message}")]
    Query {
        /// The table's name.
        table: String,
        /// What went wrong.
        message: String,
    },
}

/// One loaded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pairs: BTreeMap<String, String>,
    digest: Digested,
}

/// What the audit trail records of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Digested {
    /// The table's name.
    pub name: String,
    /// Where it came from: the file as the spec names it, or `query`.
    pub source: String,
    /// Its number of keys.
    pub rows: u64,
    /// The sha256 of its sorted key/value pairs: the same contents give
    /// the same digest, whatever the file's format or row order.
    pub sha256: String,
}

/// The spec's lookup tables, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    tables: BTreeMap<String, Table>,
}

/// What [`Lookups::get`] says about a table that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTable;

impl Lookups {
    /// No tables.
    pub fn none() -> Lookups {
        Lookups::default()
    }

    /// Builds tables from pairs, as if loaded from `source`. Fails on a
    /// duplicate key.
    pub fn insert(
        &mut self,
        name: &str,
        source: &str,
        pairs: impl IntoIterator<Item = (String, String, String)>,
    ) -> Result<(), LookupError> {
        let mut map = BTreeMap::new();
        for (key, value, at) in pairs {
            if map.contains_key(&key) {
                return Err(LookupError::Duplicate {
                    table: name.to_string(),
                    key,
                    at,
                });
            }
            map.insert(key, value);
        }
        let mut h = Sha256::new();
        for (k, v) in &map {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        let digest = Digested {
            name: name.to_string(),
            source: source.to_string(),
            rows: map.len() as u64,
            sha256: hex::encode(h.finalize()),
        };
        self.tables
            .insert(name.to_string(), Table { pairs: map, digest });
        Ok(())
    }

    /// Loads the table `name` from a CSV or JSON-lines file with the
    /// default key and value columns, as `refill try --lookup` does.
    pub fn load_file(&mut self, name: &str, path: &Path) -> Result<(), LookupError> {
        if self.tables.contains_key(name) {
            return Err(LookupError::Query {
                table: name.to_string(),
                message: "declared twice".into(),
            });
        }
        let spec = LookupSpec {
            name: name.to_string(),
            file: Some(path.to_path_buf()),
            query: None,
            key: None,
            value: None,
        };
        let pairs = read_file(&spec, path)?;
        self.insert(name, &path.display().to_string(), pairs)
    }

    /// The value stored for `key` in `table`.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<&str>, UnknownTable> {
        match self.tables.get(table) {
            Some(t) => Ok(t.pairs.get(key).map(String::as_str)),
            None => Err(UnknownTable),
        }
    }

    /// Every table's digest, by name.
    pub fn digests(&self) -> Vec<Digested> {
        self.tables.values().map(|t| t.digest.clone()).collect()
    }

    /// Whether there are no tables.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// Loads every `[[lookup]]` of the spec: files relative to the spec, and
/// queries on `db` (the source database). A spec with a query lookup needs
/// `db`.
pub async fn load(spec: &Spec, db: Option<&Database>) -> Result<Lookups, LookupError> {
    let dir = spec
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut lookups = Lookups::none();
    for l in &spec.file.lookup {
        let pairs = match (&l.file, &l.query) {
            (Some(file), _) => read_file(l, &dir.join(file))?,
            (None, Some(sql)) => match db {
                Some(db) => query(l, db, sql).await?,
                None => {
                    return Err(LookupError::Query {
                        table: l.name.clone(),
                        message: "a query lookup needs a database, and this command has none; \
                                  export the table to a CSV file instead"
                            .into(),
                    });
                }
            },
            // The spec's validation refuses a lookup with neither.
            (None, None) => {
                return Err(LookupError::Query {
                    table: l.name.clone(),
                    message: "set file or query".into(),
                });
            }
        };
        let source = match &l.file {
            Some(file) => file.display().to_string(),
            None => "query".to_string(),
        };
        lookups.insert(&l.name, &source, pairs)?;
    }
    Ok(lookups)
}

/// Reads a CSV (with a header) or JSON-lines file, by its extension.
fn read_file(l: &LookupSpec, path: &Path) -> Result<Vec<(String, String, String)>, LookupError> {
    let text = std::fs::read_to_string(path).map_err(|source| LookupError::Read {
        table: l.name.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    // Spreadsheets save CSV with a byte-order mark; it is not part of the
    // first column's name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let parse = |line: u64, message: String| LookupError::Parse {
        table: l.name.clone(),
        path: path.to_path_buf(),
        line,
        message,
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "csv" | "jsonl" | "ndjson") {
        return Err(parse(
            0,
            "a lookup file is CSV (.csv, with a header) or JSON lines (.jsonl, .ndjson)".into(),
        ));
    }
    if ext != "csv" {
        let (key, value) = (
            l.key.as_deref().unwrap_or("key"),
            l.value.as_deref().unwrap_or("value"),
        );
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let doc: serde_json::Value =
                serde_json::from_str(line).map_err(|e| parse(n, format!("not JSON: {e}")))?;
            let field = |name: &str| match doc.get(name) {
                None | Some(serde_json::Value::Null) => {
                    Err(parse(n, format!("no \"{name}\" field (or it is null)")))
                }
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Ok(other.to_string()),
            };
            pairs.push((field(key)?, field(value)?, format!("line {n}")));
        }
        return Ok(pairs);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| parse(1, format!("cannot read the CSV header: {e}")))?
        .clone();
    let column = |wanted: Option<&str>, default: usize, what: &str| match wanted {
        Some(name) => headers.iter().position(|h| h == name).ok_or_else(|| {
            parse(
                1,
                format!(
                    "no {what} column \"{name}\" in the header ({})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            )
        }),
        None if headers.len() > default => Ok(default),
        None => Err(parse(
            1,
            "a lookup CSV needs two columns, key and value".into(),
        )),
    };
    let (k, v) = (
        column(l.key.as_deref(), 0, "key")?,
        column(l.value.as_deref(), 1, "value")?,
    );
    let mut pairs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            parse(line, e.to_string())
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let (Some(key), Some(value)) = (record.get(k), record.get(v)) else {
            return Err(parse(line, "the record is missing its key or value".into()));
        };
        pairs.push((key.to_string(), value.to_string(), format!("line {line}")));
    }
    Ok(pairs)
}

/// Runs the lookup's query: its first column is the key, its second the
/// value, each read as text (numbers and booleans in their text form).
async fn query(
    l: &LookupSpec,
    db: &Database,
    sql: &str,
) -> Result<Vec<(String, String, String)>, LookupError> {
    let failed = |message: String| LookupError::Query {
        table: l.name.clone(),
        message,
    };
    let rows = db
        .fetch_texts(sql.trim().trim_end_matches(';'))
        .await
        .map_err(|e| failed(format!("the query failed: {e}")))?;
    let mut pairs = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let mut cols = row.into_iter();
        match (cols.next(), cols.next()) {
            (Some(Some(k)), Some(Some(v))) => pairs.push((k, v, format!("row {}", i + 1))),
            (Some(_), Some(_)) => {
                return Err(failed(format!(
                    "row {} has a NULL key or value; filter them out in the query",
                    i + 1
                )));
            }
            _ => {
                return Err(failed(
                    "the query must return two columns: the key, then the value".into(),
                ));
            }
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(dir: &Path, lookups: &str) -> Spec {
        let text = format!(
            r#"
name = "t"
[source]
url = "sqlite:db.sqlite"
table = "t"
key = "id"
columns = ["a"]
[transform]
component = "x.wasm"
[target]
columns = ["b"]
{lookups}
"#
        );
        Spec::parse(&dir.join("spec.toml"), text).expect("valid spec")
    }

    fn load_now(spec: &Spec) -> Result<Lookups, LookupError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(load(spec, None))
    }

    #[test]
    fn csv_and_jsonl_with_the_same_pairs_have_the_same_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("m.csv"),
            "old,new\nopen,active\n\"a,b\",x\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("m.jsonl"),
            "{\"k\": \"a,b\", \"v\": \"x\"}\n\n{\"k\": \"open\", \"v\": \"active\"}\n",
        )
        .expect("write");
        let spec = spec_with(
            dir.path(),
            "[[lookup]]\nname = \"c\"\nfile = \"m.csv\"\n[[lookup]]\nname = \"j\"\nfile = \"m.jsonl\"\nkey = \"k\"\nvalue = \"v\"\n",
        );
        let l = load_now(&spec).expect("loads");
        assert_eq!(l.get("c", "a,b"), Ok(Some("x")));
        assert_eq!(l.get("j", "open"), Ok(Some("active")));
        assert_eq!(l.get("c", "closed"), Ok(None));
        assert_eq!(l.get("nope", "open"), Err(UnknownTable));
        let d = l.digests();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].sha256, d[1].sha256);
        assert_eq!((d[0].rows, d[0].source.as_str()), (2, "m.csv"));
    }

    #[test]
    fn duplicates_and_malformed_lines_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("d.csv"), "k,v\na,1\nb,2\na,3\n").expect("write");
        std::fs::write(
            dir.path().join("m.jsonl"),
            "{\"key\": \"a\", \"value\": 1}\n{oops\n",
        )
        .expect("write");
        let dup = spec_with(dir.path(), "[[lookup]]\nname = \"d\"\nfile = \"d.csv\"\n");
        let err = load_now(&dup).expect_err("duplicate").to_string();
        assert!(err.contains("key \"a\" appears twice (line 4)"), "{err}");
        let bad = spec_with(dir.path(), "[[lookup]]\nname = \"m\"\nfile = \"m.jsonl\"\n");
        let err = load_now(&bad).expect_err("malformed").to_string();
        assert!(err.contains("m.jsonl:2: not JSON"), "{err}");
        let query = spec_with(
            dir.path(),
            "[[lookup]]\nname = \"q\"\nquery = \"SELECT 1, 2\"\n",
        );
        let err = load_now(&query).expect_err("no database").to_string();
        assert!(err.contains("needs a database"), "{err}");
    }
}
