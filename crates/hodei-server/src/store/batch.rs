//! Multi-row statements, for both stores: a batch of N rows is written with
//! a few statements of 1, 2, 4, … [`ROWS_PER_INSERT`] rows, each prepared
//! once per connection, instead of one statement (and one round trip) per
//! row.

/// The most rows one statement carries.
pub const ROWS_PER_INSERT: usize = 64;

/// Statement sizes: every power of two from 1 to [`ROWS_PER_INSERT`].
pub const SHAPES: usize = ROWS_PER_INSERT.trailing_zeros() as usize + 1;

/// The statement for each size, `build(rows)` for 1, 2, 4, … rows.
pub fn shapes(build: impl Fn(usize) -> String) -> [String; SHAPES] {
    std::array::from_fn(|k| build(1 << k))
}

/// The items in groups, each with its statement from `sql` (built by
/// [`shapes`]): the largest size that fits, each time. N items take N / 64
/// statements plus one per bit set in N % 64 (at most 6 more).
pub fn batches<'a, T>(
    items: &'a [T],
    sql: &'static [String; SHAPES],
) -> impl Iterator<Item = (&'static str, &'a [T])> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let fits = rest.len().min(ROWS_PER_INSERT);
        if fits == 0 {
            return None;
        }
        let k = fits.ilog2() as usize;
        let (group, tail) = rest.split_at(1 << k);
        rest = tail;
        Some((sql[k].as_str(), group))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static SQL: LazyLock<[String; SHAPES]> = LazyLock::new(|| shapes(|n| n.to_string()));

    #[test]
    fn batches_cover_every_item_in_order_with_few_statements() {
        for n in 0..300usize {
            let items: Vec<usize> = (0..n).collect();
            let groups: Vec<_> = batches(&items, &SQL).collect();
            let flat: Vec<usize> = groups.iter().flat_map(|(_, g)| g.iter().copied()).collect();
            assert_eq!(flat, items, "n = {n}");
            for (sql, g) in &groups {
                assert!(g.len().is_power_of_two() && g.len() <= ROWS_PER_INSERT);
                assert_eq!(*sql, g.len().to_string(), "the statement fits the group");
            }
            let expected = n / ROWS_PER_INSERT + (n % ROWS_PER_INSERT).count_ones() as usize;
            assert_eq!(groups.len(), expected, "n = {n}");
        }
    }
}
