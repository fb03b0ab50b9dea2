//! The SQL text of the PostgreSQL store that depends on its input: the
//! filtered listing and the multi-row inserts, with numbered placeholders.

use super::JobFilter;

/// The listing statement for the filters that are set, and the text values
/// of its placeholders in order; the `seq` bound and the limit come last.
pub(super) fn list_sql(select: &str, filter: &JobFilter) -> (String, Vec<String>) {
    let mut sql = format!("{select}WHERE ");
    let mut values = Vec::new();
    let mut next = |sql: &mut String, template: &str, value: String| {
        values.push(value);
        sql.push_str(&template.replace("{}", &format!("${}", values.len())));
    };
    if let Some(state) = filter.state {
        next(&mut sql, "state = {} AND ", state.as_str().to_string());
    }
    if let Some(worker) = &filter.worker {
        next(&mut sql, "worker = {} AND ", worker.clone());
    }
    if let Some(prefix) = &filter.name_prefix {
        next(
            &mut sql,
            "name LIKE {} ESCAPE '\\' AND ",
            like_prefix(prefix),
        );
    }
    if let Some(label) = &filter.label {
        next(&mut sql, "spec -> 'labels' ? {} AND ", label.clone());
    }
    let n = values.len();
    sql.push_str(&format!(
        "seq < ${} ORDER BY seq DESC LIMIT ${}",
        n + 1,
        n + 2
    ));
    (sql, values)
}

/// A LIKE pattern matching every string that starts with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `head`, then `rows` groups of `cols` numbered placeholders (with the
/// casts of `casts` by column index), then `tail`.
pub(super) fn multi_row(
    head: &str,
    cols: usize,
    casts: &[(usize, &str)],
    rows: usize,
    tail: &str,
) -> String {
    let groups: Vec<String> = (0..rows)
        .map(|r| {
            let cells: Vec<String> = (0..cols)
                .map(|c| {
                    let cast = casts
                        .iter()
                        .find(|(i, _)| *i == c)
                        .map_or("", |(_, cast)| cast);
                    format!("${}{cast}", r * cols + c + 1)
                })
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect();
    format!("{head}{}{tail}", groups.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::JobState;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let (sql, values) = list_sql("SELECT * FROM jobs ", &JobFilter::default());
        assert_eq!(
            sql,
            "SELECT * FROM jobs WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        );
        assert!(values.is_empty());
        let filter = JobFilter {
            state: Some(JobState::Running),
            label: Some("gpu".into()),
            worker: Some("w1".into()),
            name_prefix: Some("ci_%".into()),
            ..JobFilter::default()
        };
        let (sql, values) = list_sql("", &filter);
        assert_eq!(
            sql,
            "WHERE state = $1 AND worker = $2 AND name LIKE $3 ESCAPE '\\' AND \
             spec -> 'labels' ? $4 AND seq < $5 ORDER BY seq DESC LIMIT $6"
        );
        assert_eq!(values, ["running", "w1", "ci\\_\\%%", "gpu"]);
    }

    #[test]
    fn multi_row_numbers_and_casts() {
        assert_eq!(
            multi_row("INSERT INTO t VALUES ", 2, &[(1, "::jsonb")], 2, " X"),
            "INSERT INTO t VALUES ($1, $2::jsonb), ($3, $4::jsonb) X"
        );
    }
}
