//! The state store's statements: consumes one statement written with holes
//! for what the databases spell differently, and produces, at compile
//! time, each spelling of it. Nothing rewrites SQL text at run time: a
//! backend's [`Store`](super::Store) picks the spelling it takes.
//!
//! A statement is written with [`store_sql!`]: string pieces, and between
//! them
//! - `?`, a bound value: `$1`, `$2`, … numbered in order, or `?`;
//! - `bigint`, the 64-bit integer of a `CAST`: `BIGINT` or `SIGNED`;
//! - `text`, a column of unbounded text: `TEXT`, or `LONGTEXT` (MySQL's
//!   `TEXT` holds 64 KiB);
//! - `index`, an index made only if missing: `INDEX IF NOT EXISTS`, or
//!   `INDEX` where that is lacking (its error then says it exists).

/// How a database takes the state store's statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// `$n` placeholders, `BIGINT`, `TEXT`, `INDEX IF NOT EXISTS`:
    /// PostgreSQL's and SQLite's.
    Numbered,
    /// `?` placeholders, `SIGNED`, `LONGTEXT`, `INDEX`: MySQL's and
    /// MariaDB's.
    Positional,
}

/// One statement of the state store in each spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sql {
    /// As [`Spelling::Numbered`] takes it.
    pub numbered: &'static str,
    /// As [`Spelling::Positional`] takes it.
    pub positional: &'static str,
}

impl Sql {
    /// The statement as `spelling` takes it.
    pub fn spelled(self, spelling: Spelling) -> &'static str {
        match spelling {
            Spelling::Numbered => self.numbered,
            Spelling::Positional => self.positional,
        }
    }
}

impl Spelling {
    /// `count` placeholders for the values bound from position `first`
    /// (counted from 1) on, separated by commas: for a statement whose
    /// length is known only at run time, such as a multi-row `VALUES`.
    pub fn placeholders(self, first: usize, count: usize) -> String {
        let holes: Vec<String> = (first..first + count)
            .map(|n| match self {
                Spelling::Numbered => format!("${n}"),
                Spelling::Positional => "?".to_string(),
            })
            .collect();
        holes.join(", ")
    }
}

/// A state store statement, as a [`Sql`] constant: see the module's
/// documentation for its holes.
#[macro_export]
#[doc(hidden)]
macro_rules! store_sql {
    (@numbered [$($done:expr),*] [$($n:literal)*]) => { concat!($($done),*) };
    (@numbered [$($done:expr),*] [$n:literal $($ns:literal)*] ? $($rest:tt)*) => {
        $crate::store_sql!(@numbered [$($done,)* "$", $n] [$($ns)*] $($rest)*)
    };
    (@numbered [$($done:expr),*] [$($ns:literal)*] bigint $($rest:tt)*) => {
        $crate::store_sql!(@numbered [$($done,)* "BIGINT"] [$($ns)*] $($rest)*)
    };
    (@numbered [$($done:expr),*] [$($ns:literal)*] text $($rest:tt)*) => {
        $crate::store_sql!(@numbered [$($done,)* "TEXT"] [$($ns)*] $($rest)*)
    };
    (@numbered [$($done:expr),*] [$($ns:literal)*] index $($rest:tt)*) => {
        $crate::store_sql!(@numbered [$($done,)* "INDEX IF NOT EXISTS"] [$($ns)*] $($rest)*)
    };
    (@numbered [$($done:expr),*] [$($ns:literal)*] $piece:literal $($rest:tt)*) => {
        $crate::store_sql!(@numbered [$($done,)* $piece] [$($ns)*] $($rest)*)
    };
    (@positional [$($done:expr),*]) => { concat!($($done),*) };
    (@positional [$($done:expr),*] ? $($rest:tt)*) => {
        $crate::store_sql!(@positional [$($done,)* "?"] $($rest)*)
    };
    (@positional [$($done:expr),*] bigint $($rest:tt)*) => {
        $crate::store_sql!(@positional [$($done,)* "SIGNED"] $($rest)*)
    };
    (@positional [$($done:expr),*] text $($rest:tt)*) => {
        $crate::store_sql!(@positional [$($done,)* "LONGTEXT"] $($rest)*)
    };
    (@positional [$($done:expr),*] index $($rest:tt)*) => {
        $crate::store_sql!(@positional [$($done,)* "INDEX"] $($rest)*)
    };
    (@positional [$($done:expr),*] $piece:literal $($rest:tt)*) => {
        $crate::store_sql!(@positional [$($done,)* $piece] $($rest)*)
    };
    ($($part:tt)+) => {
        $crate::backend::Sql {
            numbered: $crate::store_sql!(@numbered []
                [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20
                 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40]
                $($part)+),
            positional: $crate::store_sql!(@positional [] $($part)+),
        }
    };
}
pub use store_sql;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_is_spelled_for_each_database_at_compile_time() {
        const COUNT: Sql = store_sql![
            "SELECT CAST(count(*) AS " bigint ") FROM t WHERE a = " ? " AND b IN (" ? ", " ? ")"
        ];
        assert_eq!(
            COUNT.spelled(Spelling::Numbered),
            "SELECT CAST(count(*) AS BIGINT) FROM t WHERE a = $1 AND b IN ($2, $3)"
        );
        assert_eq!(
            COUNT.spelled(Spelling::Positional),
            "SELECT CAST(count(*) AS SIGNED) FROM t WHERE a = ? AND b IN (?, ?)"
        );
        // Two-digit numbers are one placeholder each.
        const TWELVE: Sql = store_sql!["VALUES (" ? ? ? ? ? ? ? ? ? ? ? ? ")"];
        assert_eq!(TWELVE.numbered, "VALUES ($1$2$3$4$5$6$7$8$9$10$11$12)");
        assert_eq!(TWELVE.positional, "VALUES (????????????)");
        const TABLE: Sql = store_sql![
            "CREATE TABLE x (a " text " NOT NULL, b VARCHAR(4)); CREATE " index " i ON x (b)"
        ];
        assert_eq!(
            TABLE.numbered,
            "CREATE TABLE x (a TEXT NOT NULL, b VARCHAR(4)); CREATE INDEX IF NOT EXISTS i ON x (b)"
        );
        assert_eq!(
            TABLE.positional,
            "CREATE TABLE x (a LONGTEXT NOT NULL, b VARCHAR(4)); CREATE INDEX i ON x (b)"
        );
    }

    #[test]
    fn placeholders_made_at_run_time_number_on_from_the_first() {
        assert_eq!(Spelling::Numbered.placeholders(14, 3), "$14, $15, $16");
        assert_eq!(Spelling::Positional.placeholders(14, 3), "?, ?, ?");
        assert_eq!(Spelling::Numbered.placeholders(1, 0), "");
    }
}
