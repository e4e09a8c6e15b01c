//! Chunks of the key space: consumes primary-key values, produces the
//! [`Key`] type the pipeline orders rows by, and the [`Chunk`]s it splits a
//! run into. A chunk is a half-open key range `(lo, hi]`: everything after
//! the previous chunk's last key up to and including its own last key, so
//! chunks never overlap and a resumed run re-reads exactly the same rows.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::transform::bindings::refill::transform::types::Key as WitKey;

/// The type of a table's primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// An integer key.
    Integer,
    /// A text key, ordered by the database's collation.
    Text,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Integer => "integer",
            KeyType::Text => "text",
        })
    }
}

/// A primary-key value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A text key.
    Text(String),
}

impl Key {
    /// The key as the transform sees it.
    pub fn to_wit(&self) -> WitKey {
        match self {
            Key::Int(i) => WitKey::Integer(*i),
            Key::Text(s) => WitKey::Text(s.clone()),
        }
    }

    /// The key as stored in the state store.
    pub fn encode(&self) -> String {
        match self {
            Key::Int(i) => i.to_string(),
            Key::Text(s) => s.clone(),
        }
    }

    /// Reads a key stored by [`Key::encode`].
    pub fn decode(text: &str, ty: KeyType) -> Option<Key> {
        match ty {
            KeyType::Integer => text.parse().ok().map(Key::Int),
            KeyType::Text => Some(Key::Text(text.to_string())),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// A chunk of a run: the rows with keys in `(lo, hi]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's number in its run, from 1, in key order.
    pub id: u64,
    /// The last key of the previous chunk (exclusive); `None` for the first.
    pub lo: Option<Key>,
    /// The last key of this chunk (inclusive).
    pub hi: Key,
}

impl fmt::Display for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.lo {
            Some(lo) => write!(f, "chunk {} (keys after {lo} up to {})", self.id, self.hi),
            None => write!(f, "chunk {} (keys up to {})", self.id, self.hi),
        }
    }
}

/// Number of chunks of at most `rows` rows that `total` rows make.
pub fn chunk_count(total: u64, rows: u32) -> u64 {
    total.div_ceil(u64::from(rows.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_state_encoding() {
        for key in [Key::Int(-5), Key::Int(i64::MAX)] {
            assert_eq!(Key::decode(&key.encode(), KeyType::Integer), Some(key));
        }
        let text = Key::Text("Mixed Case ✓".into());
        assert_eq!(Key::decode(&text.encode(), KeyType::Text), Some(text));
        assert_eq!(Key::decode("x", KeyType::Integer), None);
    }

    #[test]
    fn chunks_describe_their_range() {
        let first = Chunk {
            id: 1,
            lo: None,
            hi: Key::Int(100),
        };
        assert_eq!(first.to_string(), "chunk 1 (keys up to 100)");
        let next = Chunk {
            id: 2,
            lo: Some(Key::Text("a".into())),
            hi: Key::Text("b".into()),
        };
        assert_eq!(next.to_string(), "chunk 2 (keys after \"a\" up to \"b\")");
        assert_eq!(chunk_count(0, 10), 0);
        assert_eq!(chunk_count(10, 10), 1);
        assert_eq!(chunk_count(11, 10), 2);
    }
}
