//! The state store on MySQL/MariaDB: consumes the store's statements,
//! written once for PostgreSQL and SQLite, and produces them as MySQL and
//! MariaDB take them.

use std::borrow::Cow;

/// A statement of the state store as MySQL and MariaDB spell it. The
/// store's statements are written for PostgreSQL and SQLite: `$n`
/// placeholders numbered in the order they are bound, `CAST(… AS BIGINT)`,
/// `TEXT` columns. MySQL and MariaDB take `?`, `CAST(… AS SIGNED)`, and
/// `LONGTEXT` in a table's definition (their `TEXT` holds 64 KiB). The
/// statements are refill's own, with no string literal that holds `$`.
pub(super) fn spell(sql: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut next = 1;
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d;
                chars.next();
            }
            debug_assert_eq!(n, next, "placeholders out of order in {sql}");
            next += 1;
            out.push('?');
        } else {
            out.push(c);
        }
    }
    let out = out.replace(" AS BIGINT)", " AS SIGNED)");
    Cow::Owned(
        if out.trim_start().starts_with("CREATE TABLE") || out.starts_with("ALTER TABLE") {
            out.replace(" TEXT", " LONGTEXT")
        } else {
            out
        },
    )
}

/// A table's or index's definition: spelled, and without `IF NOT EXISTS`
/// on an index, which MySQL lacks (MariaDB has it): an index that exists
/// is refused with error 1061 instead (see [`index_exists`]).
pub(super) fn define(ddl: &str) -> String {
    spell(&ddl.replace("INDEX IF NOT EXISTS", "INDEX")).into_owned()
}

/// Whether a definition failed because its index exists.
pub(super) fn index_exists(error: &sqlx::Error) -> bool {
    super::errno(error) == Some(1061)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn statements_are_spelled_for_mysql() {
        let sql = "SELECT CAST(count(*) AS BIGINT) FROM t WHERE a = $1 AND b IN ($2, $3)";
        assert_eq!((crate::backend::store(Backend::Postgres).spell)(sql), sql);
        assert_eq!((crate::backend::store(Backend::Sqlite).spell)(sql), sql);
        assert_eq!(
            spell(sql),
            "SELECT CAST(count(*) AS SIGNED) FROM t WHERE a = ? AND b IN (?, ?)"
        );
        // Twelve parameters: two-digit numbers are one placeholder each.
        let many: Vec<String> = (1..=12).map(|i| format!("${i}")).collect();
        let values = format!("VALUES ({})", many.join(", "));
        assert_eq!(spell(&values), format!("VALUES ({})", ["?"; 12].join(", ")));
        assert_eq!(
            spell("CREATE TABLE x (a TEXT NOT NULL, b VARCHAR(4))"),
            "CREATE TABLE x (a LONGTEXT NOT NULL, b VARCHAR(4))"
        );
    }
}
