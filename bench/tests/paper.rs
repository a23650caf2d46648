//! `nham-bench paper --quick` as CI runs it: every experiment of the
//! paper's evaluation (one repetition, short runs) through `nhamd`, real VNF
//! processes and CRIU; the CSVs, figures and REPORT.md produced and well
//! formed, and the soak's exactly-once counters zero.

use std::path::Path;
use std::process::Command;

/// Splits a CSV line, honouring double quotes.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("a field").push(c),
        }
    }
    out
}

/// A CSV file: its header and rows, each row as long as the header.
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = fields(lines.next().expect("a header"));
    let rows: Vec<Vec<String>> = lines.map(fields).collect();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), header.len(), "{} row {i}: {r:?}", path.display());
    }
    (header, rows)
}

#[test]
fn the_quick_profile_writes_every_csv_figure_and_the_report_exactly_once() {
    let out = std::env::temp_dir().join(nham_netns::unique_name("nham-paper-"));
    let started = std::time::Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_nham-bench"))
        .args(["paper", "--quick", "--seed", "16", "--out"])
        .arg(&out)
        .env("NHAM_VNF", env!("CARGO_BIN_EXE_nham-vnf"))
        .output()
        .expect("nham-bench runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!(
        "nham-bench paper --quick: {:.0} s, {}",
        started.elapsed().as_secs_f64(),
        run.status
    );
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap_or_default();
    assert!(
        run.status.success(),
        "nham-bench paper --quick failed: {}\nREPORT.md:\n{report}",
        stderr
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for section in [
        "Fig. 5a", "Fig. 5b", "Fig. 6a", "Fig. 6b", "Table 1", "Soak",
    ] {
        assert!(
            report.contains(&format!("## {section}")),
            "REPORT.md has no {section}"
        );
    }
    assert!(report.contains("Every trial exactly-once"), "{report}");
    for fig in ["fig5a", "fig5b", "fig6a", "fig6b"] {
        let png = std::fs::read(out.join(format!("{fig}.png"))).expect("a PNG");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{fig}.png"
        );
        let svg = std::fs::read_to_string(out.join(format!("{fig}.svg"))).expect("an SVG");
        assert!(svg.starts_with("<svg") && svg.contains("Fig."), "{fig}.svg");
        let (_, rows) = csv(&out.join(format!("{fig}.csv")));
        assert!(!rows.is_empty(), "{fig}.csv has no rows");
    }
    for table in ["table1.csv", "table1_runs.csv", "soak.csv"] {
        let (_, rows) = csv(&out.join(table));
        assert!(!rows.is_empty(), "{table} has no rows");
    }
    let (header, rows) = csv(&out.join("soak_segments.csv"));
    assert!(!rows.is_empty());
    for counter in [
        "lost",
        "duplicated",
        "reordered",
        "state_mismatches",
        "recovery_failures",
    ] {
        let i = header.iter().position(|h| h == counter).expect(counter);
        for r in &rows {
            assert_eq!(r[i], "0", "soak segment {}: {counter} {}", r[1], r[i]);
        }
    }
    let faults: usize = {
        let i = header
            .iter()
            .position(|h| h == "failures")
            .expect("failures");
        rows.iter()
            .map(|r| r[i].parse::<usize>().expect("a count"))
            .sum()
    };
    assert!(faults >= 20, "the soak injected {faults} faults");
    let _ = std::fs::remove_dir_all(&out);
}
