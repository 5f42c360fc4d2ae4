//! An all-pairs (pairwise) covering: rows of factor levels in which every pair of levels of
//! any two factors appears at least once, for far fewer rows than every combination. Rows that
//! a constraint rejects are never made, and the pairs that only such rows could hold are not
//! required.
//!
//! Greedy and deterministic: each row starts from the first pair not yet covered, then gives
//! each other factor (most uncovered pairs first) the level that covers the most new pairs
//! with the levels already chosen (ties: the level used least so far, then the lowest).

/// `allowed(row)` says whether a row, possibly partial (`None` = not chosen yet), can be part
/// of a valid row: it must reject exactly the partial rows that already break a constraint.
pub fn all_pairs(sizes: &[usize], allowed: impl Fn(&[Option<usize>]) -> bool) -> Vec<Vec<usize>> {
    let k = sizes.len();
    let pair_allowed = |i: usize, a: usize, j: usize, b: usize| {
        let mut row = vec![None; k];
        row[i] = Some(a);
        row[j] = Some(b);
        allowed(&row)
    };
    // uncovered[i][j][a * sizes[j] + b], for i < j.
    let mut uncovered: Vec<Vec<Vec<bool>>> = (0..k)
        .map(|i| {
            (0..k)
                .map(|j| {
                    if j <= i {
                        return Vec::new();
                    }
                    (0..sizes[i] * sizes[j]).map(|ab| pair_allowed(i, ab / sizes[j], j, ab % sizes[j])).collect()
                })
                .collect()
        })
        .collect();
    let mut uses: Vec<Vec<usize>> = sizes.iter().map(|&s| vec![0; s]).collect();
    let mut rows = Vec::new();
    loop {
        let Some((i, a, j, b)) = first_uncovered(sizes, &uncovered) else { break };
        let mut row = vec![None; k];
        row[i] = Some(a);
        row[j] = Some(b);
        let open = |f: usize, unc: &Vec<Vec<Vec<bool>>>| -> usize {
            (0..k).filter(|&g| g != f).map(|g| {
                let (lo, hi) = (f.min(g), f.max(g));
                unc[lo][hi].iter().filter(|&&u| u).count()
            }).sum()
        };
        let mut order: Vec<usize> = (0..k).filter(|&f| f != i && f != j).collect();
        order.sort_by_key(|&f| std::cmp::Reverse(open(f, &uncovered)));
        for f in order {
            let mut best: Option<(usize, usize, usize)> = None; // (new pairs, uses, level)
            for v in 0..sizes[f] {
                row[f] = Some(v);
                if !allowed(&row) {
                    continue;
                }
                let new = (0..k)
                    .filter_map(|g| row[g].filter(|_| g != f).map(|w| (g, w)))
                    .filter(|&(g, w)| {
                        let (lo, l, hi, h) = if f < g { (f, v, g, w) } else { (g, w, f, v) };
                        uncovered[lo][hi][l * sizes[hi] + h]
                    })
                    .count();
                let better = match best {
                    None => true,
                    Some((bn, bu, _)) => new > bn || (new == bn && uses[f][v] < bu),
                };
                if better {
                    best = Some((new, uses[f][v], v));
                }
            }
            let (_, _, v) = best.expect("a pair that a constraint allows can be completed to an allowed row");
            row[f] = Some(v);
        }
        let row: Vec<usize> = row.into_iter().map(|v| v.expect("every factor chosen")).collect();
        for f in 0..k {
            uses[f][row[f]] += 1;
            for g in f + 1..k {
                uncovered[f][g][row[f] * sizes[g] + row[g]] = false;
            }
        }
        rows.push(row);
    }
    rows
}

fn first_uncovered(sizes: &[usize], uncovered: &[Vec<Vec<bool>>]) -> Option<(usize, usize, usize, usize)> {
    for i in 0..sizes.len() {
        for j in i + 1..sizes.len() {
            if let Some(ab) = uncovered[i][j].iter().position(|&u| u) {
                return Some((i, ab / sizes[j], j, ab % sizes[j]));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counted independently of the generator's bookkeeping: every allowed pair of levels is
    /// in some row, and every row is allowed.
    fn check(sizes: &[usize], allowed: &dyn Fn(&[Option<usize>]) -> bool, rows: &[Vec<usize>]) {
        for r in rows {
            assert_eq!(r.len(), sizes.len());
            assert!(r.iter().zip(sizes).all(|(v, s)| v < s), "{r:?}");
            assert!(allowed(&r.iter().map(|&v| Some(v)).collect::<Vec<_>>()), "row {r:?} breaks the constraint");
        }
        for i in 0..sizes.len() {
            for j in i + 1..sizes.len() {
                for a in 0..sizes[i] {
                    for b in 0..sizes[j] {
                        let mut partial = vec![None; sizes.len()];
                        partial[i] = Some(a);
                        partial[j] = Some(b);
                        let covered = rows.iter().any(|r| r[i] == a && r[j] == b);
                        assert_eq!(covered, allowed(&partial), "factors {i}={a}, {j}={b}");
                    }
                }
            }
        }
    }

    fn any(_: &[Option<usize>]) -> bool {
        true
    }

    #[test]
    fn covers_every_pair_with_few_rows() {
        // (sizes, most rows expected): the optimum is 4 for 2^3, 9 for 3^4, 6 for 2^10, and
        // never under the product of the two largest sizes (25 for the last but one).
        for (sizes, most) in [(vec![2, 2, 2], 4), (vec![3, 3, 3, 3], 12), (vec![2; 10], 10), (vec![5, 5, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], 27), (vec![4, 1, 3], 12)] {
            let rows = all_pairs(&sizes, any);
            check(&sizes, &any, &rows);
            let mut s = sizes.clone();
            s.sort_unstable_by(|a, b| b.cmp(a));
            assert!(rows.len() >= s[0] * s[1] && rows.len() <= most, "{sizes:?}: {} rows", rows.len());
            assert_eq!(rows, all_pairs(&sizes, any), "deterministic");
        }
        // Far fewer rows than every combination: 5 * 5 * 3 * 2^12 = 307200.
        assert!(all_pairs(&[5, 5, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], any).len() < 40);
    }

    /// Factor 2's levels 1 and 2 need factor 0's level 1 or 2 (as label smoothing needs a BCE
    /// loss): no row breaks that, and exactly the pairs that can appear do.
    #[test]
    fn constrained_rows_are_never_made() {
        let sizes = [5, 5, 3, 2, 2, 2];
        let allowed = |r: &[Option<usize>]| !matches!((r[0], r[2]), (Some(k), Some(s)) if s > 0 && !(1..=2).contains(&k));
        let rows = all_pairs(&sizes, allowed);
        check(&sizes, &allowed, &rows);
        assert!(rows.iter().any(|r| r[2] == 2 && r[0] == 1) && rows.iter().all(|r| r[2] == 0 || r[0] == 1 || r[0] == 2));
    }
}
