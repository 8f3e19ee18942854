//! kubectl-style aligned columns: a header row in capitals, cells padded to the widest in their
//! column, three spaces between columns, the last column unpadded (so long messages wrap in
//! the terminal instead of pushing every row wide).

/// Renders `header` and `rows` (each as long as `header`; shorter rows leave cells empty).
/// Empty cells are shown as `-`. No trailing newline.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |row: &[String], i: usize| -> String {
        match row.get(i) {
            Some(c) if !c.is_empty() => c.clone(),
            _ => "-".to_string(),
        }
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, w) in widths.iter_mut().enumerate() {
            *w = (*w).max(cell(row, i).chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(
        rows.iter()
            .map(|row| line((0..header.len()).map(|i| cell(row, i)).collect())),
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_and_empty_cells_show_a_dash() {
        let rows = vec![
            vec!["worker-long".to_string(), "done".into(), "".into()],
            vec!["w2".to_string(), "evicting".into(), "PDB refuses".into()],
        ];
        let got = render(&["NODE", "STATE", "MESSAGE"], &rows);
        let want = "\
NODE          STATE      MESSAGE
worker-long   done       -
w2            evicting   PDB refuses";
        assert_eq!(got, want);
    }

    #[test]
    fn no_rows_is_the_header_alone() {
        assert_eq!(render(&["A", "B"], &[]), "A   B");
    }
}
