//! The documents against the declarations they describe: README's tables of variables,
//! counters and fallback reasons (the one place users read them; docs/DESIGN.md points
//! there) must say what `config::VARS`, `stats::Counter` and `stats::Fallback` declare. On a
//! mismatch the test prints what the document should hold.

use s3dlio_engine::config::VARS;
use s3dlio_engine::stats::{Counter, Fallback};
use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The text from the line `heading` to the next heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.bytes().take_while(|&b| b == b'#').count();
    let ends = |l: &str| {
        let n = l.bytes().take_while(|&b| b == b'#').count();
        n > 0 && n <= level && l[n..].starts_with(' ')
    };
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        match start {
            None if line.trim_end() == heading => start = Some(offset),
            Some(s) if ends(line) => return &text[s..offset],
            _ => {}
        }
        offset += line.len();
    }
    &text[start.unwrap_or_else(|| panic!("no section {heading:?}"))..]
}

/// The rows (cells trimmed) of the table whose header line is `header`.
fn table(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != header);
    assert!(lines.next().is_some(), "no table with the header {header:?}");
    assert!(lines.next().is_some_and(|l| l.starts_with("|---")), "{header:?} has no separator line");
    lines
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let inner = l.trim_end().trim_start_matches('|').trim_end_matches('|');
            inner.split('|').map(|c| c.trim().to_string()).collect()
        })
        .collect()
}

fn unquote(cell: &str) -> &str {
    cell.trim_matches('`')
}

fn counter_rows() -> Vec<String> {
    Counter::ALL.iter().map(|c| format!("| `{}` | {} |", c.key(), c.doc())).collect()
}

fn fallback_rows() -> Vec<String> {
    Fallback::COUNTED.iter().map(|r| format!("| `{}` | {} |", r.key(), r.doc())).collect()
}

fn rows_of(rows: &[Vec<String>]) -> Vec<String> {
    rows.iter().map(|r| format!("| {} |", r.join(" | "))).collect()
}

#[test]
fn readme_variables_table_names_every_variable_with_its_default() {
    let readme = read("README.md");
    let rows = table(&readme, "| variable | meaning | default | example |");
    let mut problems = Vec::new();
    for row in &rows {
        assert_eq!(row.len(), 4, "{row:?}");
        let name = unquote(&row[0]);
        match VARS.iter().find(|v| v.name == name) {
            None => problems.push(format!("{name}: no such variable")),
            Some(v) if row[2] != v.default.markdown() => {
                problems.push(format!("{name}: default column {:?}, should be {:?}", row[2], v.default.markdown()))
            }
            Some(_) => {}
        }
        if rows.iter().filter(|r| unquote(&r[0]) == name).count() > 1 {
            problems.push(format!("{name}: more than one row"));
        }
    }
    for v in VARS {
        if !rows.iter().any(|r| unquote(&r[0]) == v.name) {
            problems.push(format!("{}: missing (default {})", v.name, v.default.markdown()));
        }
    }
    assert!(problems.is_empty(), "README's table of variables:\n  {}", problems.join("\n  "));
}

#[test]
fn readme_counters_table_is_the_declaration() {
    let readme = read("README.md");
    let have = rows_of(&table(&readme, "| counter | what it counts |"));
    let want = counter_rows();
    assert!(have == want, "README's table of counters should be:\n{}\n", want.join("\n"));
}

#[test]
fn readme_fallbacks_table_is_the_declaration() {
    let readme = read("README.md");
    let have = rows_of(&table(&readme, "| fallback reason | what happened |"));
    let want = fallback_rows();
    assert!(have == want, "README's table of fallback reasons should be:\n{}\n", want.join("\n"));
}

/// "counted as `x`" anywhere in README names a counter or a fallback reason.
#[test]
fn readme_counted_as_names_declared_keys() {
    let readme = read("README.md");
    let mut found = 0;
    for (i, _) in readme.match_indices("counted as `") {
        let rest = &readme[i + "counted as `".len()..];
        let key = &rest[..rest.find('`').expect("closing backtick")];
        let known = Counter::ALL.iter().any(|c| c.key() == key) || Fallback::COUNTED.iter().any(|r| r.key() == key);
        assert!(known, "README says \"counted as `{key}`\", which is neither a counter nor a fallback reason");
        found += 1;
    }
    assert!(found > 0, "README no longer says what anything is counted as; drop this test");
}

#[test]
fn sections_are_found() {
    let t = "# a\n## b\nx\n### c\ny\n## d\nz\n";
    assert_eq!(section(t, "## b"), "## b\nx\n### c\ny\n");
    assert_eq!(section(t, "### c"), "### c\ny\n");
    assert_eq!(section(t, "## d"), "## d\nz\n");
    let rows = table("x\n| a | b |\n|---|---|\n| `1` | 2 |\n| 3 | 4 |\nafter\n", "| a | b |");
    assert_eq!(rows, [["`1`", "2"], ["3", "4"]]);
}
