//! The audit records of what a run joined in and of what was done to it
//! after: the lookup tables it read, retries of its dead letters,
//! verifications, rollbacks. Each is a JSON document in
//! `refill_audit`, recorded when it starts and updated when it ends.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use super::{StateError, StateStore, q};
use crate::backend::store_sql;
use crate::chunk::Key;

/// A `refill retry` of a run's dead letters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RetryRecord {
    /// Its id.
    pub retry_id: String,
    /// The run whose dead letters it retried.
    pub run_id: String,
    /// Whether it wrote (`--execute`).
    pub execute: bool,
    /// The component it ran.
    pub component_digest: String,
    /// The work hash of the spec it ran (its configuration may differ from
    /// the run's).
    pub work_hash: String,
    /// Who ran it.
    pub user_name: String,
    /// Where.
    pub host_name: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Dead letters it took up.
    pub rows: u64,
    /// Rows it resolved: made right (written, or already right) or
    /// skipped by the transform.
    pub resolved: u64,
    /// Of those, the rows skipped.
    #[serde(default)]
    pub skipped: u64,
    /// Rows that failed again.
    pub failed: u64,
    /// Rows no longer in scope or deleted.
    pub gone: u64,
    /// Why it stopped early, if it did.
    pub message: Option<String>,
    /// The lookup tables it read (a fixed mapping is a reason to retry).
    #[serde(default)]
    pub lookups: Vec<crate::lookup::Digested>,
}

/// A `refill verify`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// Its id.
    pub verification_id: String,
    /// The run it checked, if it checked one.
    pub run_id: Option<String>,
    /// The component it recomputed with.
    pub component_digest: String,
    /// Who ran it.
    pub user_name: String,
    /// Where.
    pub host_name: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Rows checked.
    pub rows: u64,
    /// Rows whose target holds what the transform computes.
    pub matching: u64,
    /// Rows whose target differs.
    pub differing: u64,
    /// Rows the transform skipped (nothing to compare).
    pub skipped: u64,
    /// Rows the transform failed on that are dead letters of the run.
    pub dead_lettered: u64,
    /// Rows the transform failed on that are not dead letters.
    pub failed: u64,
    /// Chunks checked.
    pub chunks: u64,
    /// Chunks whose checksums differed.
    pub differing_chunks: u64,
    /// The keys that differ (the first thousand).
    pub differing_keys: Vec<Key>,
    /// The keys that failed without being dead letters (the first thousand).
    pub failed_keys: Vec<Key>,
    /// Whether everything matched.
    pub passed: bool,
    /// The lookup tables it recomputed with.
    #[serde(default)]
    pub lookups: Vec<crate::lookup::Digested>,
    /// The first few differing rows, column by column, in key order.
    #[serde(default)]
    pub differences: Vec<Difference>,
}

/// One column of a row whose target differs from what the transform
/// computes, the values shortened for display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The row's key.
    pub key: Key,
    /// The output column.
    pub column: String,
    /// What the target holds.
    pub actual: String,
    /// What the transform computes.
    pub expected: String,
}

/// A `refill rollback`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// Its id.
    pub rollback_id: String,
    /// The run it undid.
    pub run_id: String,
    /// Whether it wrote (`--execute`).
    pub execute: bool,
    /// Who ran it.
    pub user_name: String,
    /// Where.
    pub host_name: String,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Rows restored (or, in a dry run, that would be).
    pub restored: u64,
    /// Rows that already held their previous values.
    pub already_previous: u64,
    /// Rows changed since the run wrote them, left alone.
    pub changed_since: u64,
    /// Their keys (the first thousand).
    pub changed_keys: Vec<Key>,
    /// Rows that are gone from the target.
    pub gone: u64,
    /// Rows another transaction held locked for longer than `[timeouts]
    /// max_lock_wait`: not put back (running the rollback again does).
    #[serde(default)]
    pub locked: u64,
    /// Their keys (the first thousand).
    #[serde(default)]
    pub locked_keys: Vec<Key>,
    /// Why it stopped early, if it did.
    pub message: Option<String>,
}

/// The lookup tables a run read, with the digests of their contents,
/// recorded when it starts; a resumed run must read the same.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LookupRecord {
    /// Its id.
    pub record_id: String,
    /// The run.
    pub run_id: String,
    /// When it was recorded.
    pub started_at: String,
    /// Every table, by name.
    pub tables: Vec<crate::lookup::Digested>,
}

impl AuditRecord for LookupRecord {
    const KIND: &'static str = "lookup";
    fn id(&self) -> &str {
        &self.record_id
    }
    fn run(&self) -> Option<&str> {
        Some(&self.run_id)
    }
    fn started(&self) -> &str {
        &self.started_at
    }
}

/// What an audit record is.
pub trait AuditRecord: Serialize + DeserializeOwned {
    /// The `kind` column.
    const KIND: &'static str;
    /// The record's id.
    fn id(&self) -> &str;
    /// The run it is about.
    fn run(&self) -> Option<&str>;
    /// When it started.
    fn started(&self) -> &str;
}

impl AuditRecord for RetryRecord {
    const KIND: &'static str = "retry";
    fn id(&self) -> &str {
        &self.retry_id
    }
    fn run(&self) -> Option<&str> {
        Some(&self.run_id)
    }
    fn started(&self) -> &str {
        &self.started_at
    }
}

impl AuditRecord for VerificationRecord {
    const KIND: &'static str = "verify";
    fn id(&self) -> &str {
        &self.verification_id
    }
    fn run(&self) -> Option<&str> {
        self.run_id.as_deref()
    }
    fn started(&self) -> &str {
        &self.started_at
    }
}

impl AuditRecord for RollbackRecord {
    const KIND: &'static str = "rollback";
    fn id(&self) -> &str {
        &self.rollback_id
    }
    fn run(&self) -> Option<&str> {
        Some(&self.run_id)
    }
    fn started(&self) -> &str {
        &self.started_at
    }
}

impl StateStore {
    /// Records (or updates) an audit record.
    pub async fn record<R: AuditRecord>(&self, record: &R) -> Result<(), StateError> {
        let data = serde_json::to_string(record).map_err(|e| StateError::Corrupt(e.to_string()))?;
        let updated = sqlx::query(
            self.sql(store_sql!["UPDATE refill_audit SET data = " ? " WHERE record_id = " ?]),
        )
        .bind(&data)
        .bind(record.id())
        .execute(&self.pool)
        .await
        .map_err(q("recording an audit record"))?;
        if updated.rows_affected() == 0 {
            sqlx::query(self.sql(store_sql!["INSERT INTO refill_audit (record_id, run_id, kind, started_at, data) VALUES (" ? ", " ? ", " ? ", " ? ", " ? ")"]))
                .bind(record.id())
                .bind(record.run())
                .bind(R::KIND)
                .bind(record.started())
                .bind(&data)
                .execute(&self.pool)
                .await
                .map_err(q("recording an audit record"))?;
        }
        Ok(())
    }

    /// A run's audit records of one kind, oldest first.
    pub async fn records<R: AuditRecord>(&self, run_id: &str) -> Result<Vec<R>, StateError> {
        let rows = sqlx::query(self.sql(
            store_sql!["SELECT data FROM refill_audit WHERE run_id = " ? " AND kind = " ? " ORDER BY started_at"],
        ))
        .bind(run_id)
        .bind(R::KIND)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading audit records"))?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get("data").map_err(q("reading audit records"))?;
                serde_json::from_str(&data)
                    .map_err(|e| StateError::Corrupt(format!("audit record: {e}")))
            })
            .collect()
    }
}
