//! kubectl-style tables: one row per object, columns chosen per kind, padded
//! so they line up.

/// Formats rows with columns padded to the widest cell (3 spaces apart).
pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header);
    for r in rows {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

pub use keel_controlplane::api::table::{age, columns, row};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["NAME".into(), "READY".into()],
            &[
                vec!["a-long-name".into(), "1/1".into()],
                vec!["b".into(), "0/1".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          READY\na-long-name   1/1\nb             0/1"
        );
    }
}
