//! Aligned text columns for terminals: the one table layout of `audit`, `diff` and
//! `rollout status`.

use std::fmt::Write as _;

/// Left-aligned columns separated by two spaces, a header line first, without trailing
/// blanks; widths count characters, so names outside ASCII stay aligned.
pub fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_and_lines_end_without_blanks() {
        let rows = [
            [
                "shop".to_owned(),
                "Deployment/frontend".to_owned(),
                String::new(),
            ],
            ["données".to_owned(), "Pod/x".to_owned(), "why".to_owned()],
        ];
        assert_eq!(
            aligned(["NS", "WORKLOAD", "NOTE"], &rows),
            "NS       WORKLOAD             NOTE\n\
             shop     Deployment/frontend\n\
             données  Pod/x                why\n"
        );
    }
}
