//! `vmm bench` as a user runs it: every operation gets a row with a figure from each of
//! the monitor's execution modes, and one from QEMU where QEMU is installed (always on
//! CI). Only the shape of the table and the presence and sign of figures are checked:
//! timings on a shared machine prove nothing.

use vmm_cli::bench::{Column, Table, OPERATIONS};

/// QEMU figures are required where QEMU runs, and on CI, where a missing QEMU is a
/// broken set-up rather than a reason to skip.
fn qemu_expected() -> bool {
    guests::qemu::available() || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn bench(extra: &[&str]) -> String {
    let run = support::run(support::vmm(900, &["bench", "--reps", "1"]).args(extra));
    assert!(
        run.status == Some(0),
        "vmm bench failed ({:?}):\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    run.stdout
}

/// The cycles of a cell such as `3.02 (1.16 ns)`, if it is a figure.
fn cycles(cell: &str) -> Option<f64> {
    cell.split_whitespace().next()?.parse().ok()
}

/// A ratio or exit count cell: a number, or `-` where a figure it needs is missing.
fn number(cell: &str) -> Option<f64> {
    cell.parse().ok()
}

#[test]
fn the_table_has_every_operation_with_a_figure_per_execution_mode() {
    let svg = support::scratch_dir("bench_cli").join("bench.svg");
    let _ = std::fs::remove_file(&svg);
    let out = bench(&["--plot", svg.to_str().expect("a UTF-8 path")]);
    let lines: Vec<&str> = out.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("operation"))
        .unwrap_or_else(|| panic!("no table header:\n{out}"));
    assert!(lines[0].starts_with("host TSC:"), "{out}");
    // Header cells hold single spaces too; they are separated by two or more.
    let heads: Vec<&str> = lines[header]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(heads, Table::HEADER, "{out}");
    for op in OPERATIONS {
        let row = lines[header + 1..]
            .iter()
            .find(|l| l.starts_with(op.label))
            .unwrap_or_else(|| panic!("no row for {}:\n{out}", op.name));
        let cells: Vec<&str> = row[op.label.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), Table::HEADER.len() - 1, "{row}");
        let [native, translate, patch, qemu, tr_native, pa_native, qemu_tr, exits_tr, exits_pa] =
            cells[..]
        else {
            unreachable!("nine cells")
        };
        assert!(cycles(translate).is_some_and(|c| c > 0.0), "{row}");
        assert!(cycles(patch).is_some_and(|c| c > 0.0), "{row}");
        assert!(number(exits_tr).is_some_and(|e| e >= 0.0), "{row}");
        assert!(number(exits_pa).is_some_and(|e| e >= 0.0), "{row}");
        if qemu_expected() {
            assert!(cycles(qemu).is_some_and(|c| c > 0.0), "{row}");
            assert!(number(qemu_tr).is_some_and(|r| r > 0.0), "{row}");
        } else {
            assert_eq!(qemu, "n/a (qemu: not installed)", "{row}");
            assert_eq!(qemu_tr, "-", "{row}");
        }
        if op.native {
            assert!(cycles(native).is_some_and(|c| c > 0.0), "{row}");
            assert!(number(tr_native).is_some_and(|r| r > 0.0), "{row}");
            assert!(number(pa_native).is_some_and(|r| r > 0.0), "{row}");
        } else {
            assert!(native.starts_with("n/a"), "{row}");
            assert_eq!((tr_native, pa_native), ("-", "-"), "{row}");
        }
        // Below the table: the exits of each mode by reason.
        assert!(
            lines
                .iter()
                .any(|l| l.trim_start().starts_with(op.name) && l.contains(" | ")),
            "no exits by reason for {}:\n{out}",
            op.name
        );
    }
    // The translation targets are read off the same run, whatever the verdict.
    for target in ["compute, translate/native", "CALL+RET, translate/native"] {
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(target)
                && (l.ends_with("met") || l.ends_with("MISSED"))),
            "no target line {target}:\n{out}"
        );
    }
    assert!(out.contains("compute: checksum 0x"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    // --plot drew the same table: every operation, a series per environment.
    let picture = std::fs::read_to_string(&svg).expect("--plot wrote the picture");
    assert!(picture.starts_with("<svg"), "not an SVG document");
    for op in OPERATIONS {
        assert!(picture.contains(op.name), "no {} in the picture", op.name);
    }
    assert!(
        picture.contains("vmm --exec translate"),
        "no translate series"
    );
    assert!(picture.contains("vmm --exec patch"), "no patch series");
    assert!(
        picture.lines().any(|l| l.trim() == "native"),
        "no native series"
    );
    if qemu_expected() {
        assert!(picture.contains("QEMU TCG"), "no QEMU series");
    }
}

#[test]
fn json_has_the_same_rows() {
    let out = bench(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let rows = v["operations"].as_array().expect("operations");
    assert_eq!(rows.len(), OPERATIONS.len());
    assert_eq!(v["reps"], 1);
    assert!(v["failures"].as_array().is_some_and(Vec::is_empty), "{out}");
    assert_eq!(v["targets"].as_array().map(Vec::len), Some(3), "{out}");
    for (row, op) in rows.iter().zip(OPERATIONS) {
        assert_eq!(row["operation"], op.name);
        for mode in Column::MODES {
            let figure = &row[mode.name()];
            assert_eq!(figure["status"], "ok", "{row}");
            assert!(
                figure["cycles_per_op"].as_f64().is_some_and(|c| c > 0.0),
                "{row}"
            );
            let exits = &row["exits_per_op"][mode.name()];
            assert!(exits["per_op"].as_f64().is_some(), "{row}");
            assert!(exits["by_reason"].is_object(), "{row}");
        }
        if qemu_expected() {
            assert_eq!(row[Column::Qemu.name()]["status"], "ok", "{row}");
        }
    }
}
