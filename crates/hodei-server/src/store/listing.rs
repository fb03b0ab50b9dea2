//! Read queries of the operator surface on the SQLite store: the filtered
//! job listing statement and the overview counts. The indexes they use are
//! in `migrations/0002_operator_queries.sql`.

use hodei_core::{JobState, Millis};
use sqlx::sqlite::SqlitePool;

use super::rows::{finished_from_row, state_count_from_row};
use super::{FinishedCount, JobFilter, StoreError};

const COUNT_BY_STATE: &str = "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state";
/// Served by the partial index on `finished_at`.
const FINISHED_SINCE: &str = "SELECT (finished_at - ?1) / 60000 AS minute, state, \
     COUNT(*) AS n FROM jobs WHERE finished_at >= ?1 GROUP BY minute, state";

/// The listing statement for the filters that are set, and the text values
/// of its placeholders in order; the `seq` bound and the limit come last.
/// At most 16 distinct statements, each prepared once per connection.
pub(super) fn list_sql(select: &str, filter: &JobFilter) -> (String, Vec<String>) {
    let mut sql = format!("{select}WHERE ");
    let mut values = Vec::new();
    if let Some(state) = filter.state {
        sql.push_str("state = ? AND ");
        values.push(state.as_str().to_string());
    }
    if let Some(worker) = &filter.worker {
        sql.push_str("worker = ? AND ");
        values.push(worker.clone());
    }
    if let Some(prefix) = &filter.name_prefix {
        // GLOB is case-sensitive like the index; wildcards in the prefix
        // are matched literally.
        sql.push_str("name GLOB ? AND ");
        values.push(glob_prefix(prefix));
    }
    if let Some(label) = &filter.label {
        sql.push_str("EXISTS (SELECT 1 FROM json_each(spec, '$.labels') WHERE value = ?) AND ");
        values.push(label.clone());
    }
    sql.push_str("seq < ? ORDER BY seq DESC LIMIT ?");
    (sql, values)
}

/// A GLOB pattern matching every string that starts with `prefix`.
fn glob_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        match c {
            '*' => pattern.push_str("[*]"),
            '?' => pattern.push_str("[?]"),
            '[' => pattern.push_str("[[]"),
            c => pattern.push(c),
        }
    }
    pattern.push('*');
    pattern
}

pub(super) async fn count_by_state(pool: &SqlitePool) -> Result<Vec<(JobState, u64)>, StoreError> {
    let rows = sqlx::query(COUNT_BY_STATE).fetch_all(pool).await?;
    rows.iter().map(state_count_from_row).collect()
}

pub(super) async fn finished_since(
    pool: &SqlitePool,
    since: Millis,
) -> Result<Vec<FinishedCount>, StoreError> {
    let rows = sqlx::query(FINISHED_SINCE)
        .bind(since)
        .fetch_all(pool)
        .await?;
    rows.iter().map(finished_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_wildcards_literally() {
        assert_eq!(glob_prefix("build"), "build*");
        assert_eq!(glob_prefix("a*b?c[d]"), "a[*]b[?]c[[]d]*");
        assert_eq!(glob_prefix(""), "*");
    }

    #[test]
    fn only_set_filters_are_in_the_statement() {
        let (sql, values) = list_sql("SELECT * FROM jobs ", &JobFilter::default());
        assert_eq!(
            sql,
            "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?"
        );
        assert!(values.is_empty());
        let filter = JobFilter {
            state: Some(JobState::Running),
            label: Some("gpu".into()),
            worker: Some("w1".into()),
            name_prefix: Some("ci-".into()),
            ..JobFilter::default()
        };
        let (sql, values) = list_sql("", &filter);
        assert_eq!(sql.matches('?').count(), values.len() + 2);
        assert_eq!(values, ["running", "w1", "ci-*", "gpu"]);
    }
}
