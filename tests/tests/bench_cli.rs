//! `vmm bench` as a user runs it: every operation gets a row with a figure from each of
//! the monitor's execution modes, and one from QEMU where QEMU is installed (always on
//! CI), with the exits per operation through the gate and through a host signal; the bare
//! round trips follow the table. Only the shape of the table, the presence and sign of
//! figures and the exit counts are checked: timings on a shared machine prove nothing.

use vmm::hostcpu::roundtrip::RoundTrip;
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
        let [native, translate, patch, qemu, tr_native, pa_native, qemu_tr, gate_tr, signal_tr, gate_pa, signal_pa] =
            cells[..]
        else {
            unreachable!("eleven cells")
        };
        assert!(cycles(translate).is_some_and(|c| c > 0.0), "{row}");
        assert!(cycles(patch).is_some_and(|c| c > 0.0), "{row}");
        for exits in [gate_tr, signal_tr, signal_pa] {
            assert!(number(exits).is_some_and(|e| e >= 0.0), "{row}");
        }
        // Patch mode has no gate: every exit is a signal.
        assert_eq!(gate_pa, "0.00", "{row}");
        // A port read exits once in either mode: through the gate when translated, through
        // the #GP signal when patched.
        if op.name == "in_port" {
            assert!(number(gate_tr).is_some_and(|e| e >= 0.99), "{row}");
            assert!(number(signal_tr).is_some_and(|e| e < 0.1), "{row}");
            assert!(number(signal_pa).is_some_and(|e| e >= 0.99), "{row}");
        }
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
    // The bare round trips, each a figure, and the gate's ratio to the far call.
    for trip in RoundTrip::ALL {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(trip.label()))
            .unwrap_or_else(|| panic!("no {} line:\n{out}", trip.name()));
        let cell = line.trim_start()[trip.label().len()..].trim();
        assert!(cycles(cell).is_some_and(|c| c > 0.0), "{line}");
    }
    let ratios = lines
        .iter()
        .find(|l| l.trim_start().starts_with("gate / far call "))
        .unwrap_or_else(|| panic!("no gate / far call ratio:\n{out}"));
    let ratio = ratios.trim_start()["gate / far call ".len()..]
        .split(',')
        .next()
        .and_then(|r| r.trim().parse::<f64>().ok());
    assert!(ratio.is_some_and(|r| r > 0.0), "{ratios}");
    // The translation targets are read off the same run, whatever the verdict.
    for target in [
        "compute, translate/native",
        "CALL+RET, translate/native",
        "empty gate exit <= 2 x bare far call/return",
    ] {
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
    assert_eq!(v["targets"].as_array().map(Vec::len), Some(4), "{out}");
    let trips = v["round_trips"].as_array().expect("round_trips");
    assert_eq!(trips.len(), RoundTrip::ALL.len(), "{out}");
    for (trip, expected) in trips.iter().zip(RoundTrip::ALL) {
        assert_eq!(trip["round_trip"], expected.name(), "{trip}");
        assert_eq!(trip["status"], "ok", "{trip}");
        assert!(
            trip["cycles_per_op"].as_f64().is_some_and(|c| c > 0.0),
            "{trip}"
        );
    }
    assert!(
        v["gate_over_far_call"].as_f64().is_some_and(|r| r > 0.0),
        "{out}"
    );
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
            for mechanism in ["gate", "signal", "none"] {
                assert!(exits["by_mechanism"][mechanism].as_f64().is_some(), "{row}");
            }
        }
        if qemu_expected() {
            assert_eq!(row[Column::Qemu.name()]["status"], "ok", "{row}");
        }
    }
}

/// The child `vmm bench` runs for the round trips: one `BENCH` line each, which the
/// parent reads like a benchmark kernel's.
#[test]
fn round_trips_child_prints_a_line_per_round_trip() {
    let run = support::run(&mut support::vmm(120, &["bench", "round-trips"]));
    assert_eq!(run.status, Some(0), "{}{}", run.stdout, run.stderr);
    let samples = vmm_cli::bench::parse_output(&run.stdout).expect("well-formed lines");
    assert_eq!(samples.len(), RoundTrip::ALL.len(), "{}", run.stdout);
    for (sample, trip) in samples.iter().zip(RoundTrip::ALL) {
        assert_eq!(sample.name, trip.name());
        assert!(sample.iterations > 0 && sample.trials > 0, "{sample:?}");
        assert!(sample.cycles_per_op() > 0.0, "{sample:?}");
    }
}
