//! From the runs' samples to the table `vmm bench` prints: medians per operation and
//! environment, ns next to cycles, the ratios, and the checksum agreement.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::Operation;

/// Where an operation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Column {
    /// The native program, a 32-bit process straight on the host.
    Native,
    /// A benchmark kernel under `vmm run`.
    Vmm,
    /// A benchmark kernel under QEMU's TCG.
    Qemu,
}

impl Column {
    /// Every column in table order.
    pub const ALL: [Column; 3] = [Column::Native, Column::Vmm, Column::Qemu];

    /// Header and JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Column::Native => "native",
            Column::Vmm => "vmm",
            Column::Qemu => "qemu",
        }
    }
}

/// Everything the runs of one operation in one column gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runs {
    /// Cycles per operation, one per successful run.
    pub cycles_per_op: Vec<f64>,
    /// Exits of the whole run per operation executed (warm-up and every trial
    /// included), when the environment counts exits (the monitor does).
    pub exits_per_op: Vec<f64>,
    /// Checksums the operation computed.
    pub checksums: Vec<u32>,
    /// Why runs failed.
    pub errors: Vec<String>,
}

/// The raw results of a whole `vmm bench` invocation.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Runs per (operation, column).
    pub runs: BTreeMap<(&'static str, Column), Runs>,
    /// Why a column cannot have any figure (QEMU not installed).
    pub unavailable: BTreeMap<Column, String>,
}

impl Results {
    /// The runs of `op` in `column`, created empty on first use.
    pub fn entry(&mut self, op: &'static str, column: Column) -> &mut Runs {
        self.runs.entry((op, column)).or_default()
    }
}

/// One cell of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    /// The median cycles per operation of `runs` runs, and the fastest run's figure
    /// (on a busy host the least disturbed one).
    Measured {
        cycles_per_op: f64,
        best: f64,
        runs: usize,
    },
    /// The operation has no figure here, for the reason given.
    NotApplicable(String),
    /// A run failed; the message says how.
    Failed(String),
}

impl Figure {
    fn cycles(&self) -> Option<f64> {
        match self {
            Figure::Measured { cycles_per_op, .. } => Some(*cycles_per_op),
            _ => None,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The operation.
    pub name: &'static str,
    /// What it is, for people.
    pub label: &'static str,
    /// Native, vmm and QEMU figures, in [`Column::ALL`] order.
    pub figures: [Figure; 3],
    /// vmm cycles over native cycles.
    pub vmm_over_native: Option<f64>,
    /// QEMU cycles over vmm cycles.
    pub qemu_over_vmm: Option<f64>,
    /// Median exits per operation under the monitor.
    pub exits_per_op: Option<f64>,
    /// The checksum every environment computed, or what disagreed.
    pub checksum: Option<Result<u32, String>>,
}

impl Row {
    /// The figure of `column`.
    pub fn figure(&self, column: Column) -> &Figure {
        &self.figures[Column::ALL
            .iter()
            .position(|c| *c == column)
            .expect("a column")]
    }
}

/// The table of a whole invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// One row per operation, in [`super::OPERATIONS`] order.
    pub rows: Vec<Row>,
    /// The host TSC frequency, when it could be estimated.
    pub tsc_hz: Option<f64>,
    /// Runs per figure asked for.
    pub reps: usize,
}

/// The median; `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

impl Table {
    /// Builds the table from the raw results: medians, ratios, checksum agreement.
    /// `not_applicable(op, column)` names why an operation never runs in a column.
    pub fn build(
        operations: &[Operation],
        results: &Results,
        not_applicable: impl Fn(&Operation, Column) -> Option<String>,
        tsc_hz: Option<f64>,
        reps: usize,
    ) -> Table {
        let empty = Runs::default();
        let rows = operations
            .iter()
            .map(|op| {
                let figures = Column::ALL.map(|column| {
                    if let Some(reason) = not_applicable(op, column) {
                        return Figure::NotApplicable(reason);
                    }
                    if let Some(reason) = results.unavailable.get(&column) {
                        return Figure::NotApplicable(reason.clone());
                    }
                    let runs = results.runs.get(&(op.name, column)).unwrap_or(&empty);
                    if let Some(e) = runs.errors.first() {
                        return Figure::Failed(e.clone());
                    }
                    match median(&runs.cycles_per_op) {
                        Some(c) => Figure::Measured {
                            cycles_per_op: c,
                            best: runs
                                .cycles_per_op
                                .iter()
                                .copied()
                                .fold(f64::INFINITY, f64::min),
                            runs: runs.cycles_per_op.len(),
                        },
                        None => Figure::Failed("no run reported this operation".to_string()),
                    }
                });
                let checksum = checksum_agreement(op.name, results);
                let exits = results
                    .runs
                    .get(&(op.name, Column::Vmm))
                    .and_then(|r| median(&r.exits_per_op));
                let [native, vmm, qemu] = &figures;
                Row {
                    name: op.name,
                    label: op.label,
                    vmm_over_native: ratio(vmm.cycles(), native.cycles()),
                    qemu_over_vmm: ratio(qemu.cycles(), vmm.cycles()),
                    exits_per_op: exits,
                    checksum,
                    figures,
                }
            })
            .collect();
        Table { rows, tsc_hz, reps }
    }

    /// Every failure in the table: failed runs and checksums that disagree.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for row in &self.rows {
            for column in Column::ALL {
                if let Figure::Failed(e) = row.figure(column) {
                    out.push(format!("{} under {}: {e}", row.name, column.name()));
                }
            }
            if let Some(Err(e)) = &row.checksum {
                out.push(format!("{}: {e}", row.name));
            }
        }
        out
    }

    fn ns(&self, cycles: f64) -> Option<f64> {
        self.tsc_hz.map(|hz| cycles / hz * 1e9)
    }

    fn cell_text(&self, figure: &Figure) -> String {
        match figure {
            Figure::Measured { cycles_per_op, .. } => match self.ns(*cycles_per_op) {
                Some(ns) => format!("{} ({} ns)", number(*cycles_per_op), number(ns)),
                None => number(*cycles_per_op),
            },
            Figure::NotApplicable(reason) => format!("n/a ({reason})"),
            Figure::Failed(_) => "FAILED".to_string(),
        }
    }

    /// The table as text, with a header naming the units and notes below.
    pub fn render(&self) -> String {
        let mut s = String::new();
        match self.tsc_hz {
            Some(hz) => {
                let _ = writeln!(s, "host TSC: {:.3} GHz (estimated)", hz / 1e9);
            }
            None => {
                let _ = writeln!(s, "host TSC: frequency unknown, cycles only");
            }
        }
        let _ = writeln!(
            s,
            "cycles per operation (ns per operation), median of {} run{}",
            self.reps,
            if self.reps == 1 { "" } else { "s" }
        );
        let header = [
            "operation",
            "native",
            "vmm",
            "QEMU TCG",
            "vmm/native",
            "QEMU/vmm",
            "exits/op",
        ];
        let mut lines: Vec<[String; 7]> = vec![header.map(str::to_string)];
        for row in &self.rows {
            let optional = |v: Option<f64>, digits: usize| match v {
                Some(x) => format!("{x:.digits$}"),
                None => "-".to_string(),
            };
            lines.push([
                row.label.to_string(),
                self.cell_text(&row.figures[0]),
                self.cell_text(&row.figures[1]),
                self.cell_text(&row.figures[2]),
                optional(row.vmm_over_native, 2),
                optional(row.qemu_over_vmm, 3),
                optional(row.exits_per_op, 2),
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in &lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i == 0 {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                } else {
                    text.push_str("  ");
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                }
            }
            let _ = writeln!(s, "{}", text.trim_end());
        }
        for row in &self.rows {
            if let Some(Ok(sum)) = &row.checksum {
                let _ = writeln!(s, "{}: checksum {sum:#010x} in every environment", row.name);
            }
        }
        for failure in self.failures() {
            let _ = writeln!(s, "FAILED: {failure}");
        }
        s
    }

    /// The table as one JSON object.
    pub fn to_json(&self) -> Value {
        let figure = |f: &Figure| match f {
            Figure::Measured {
                cycles_per_op,
                best,
                runs,
            } => json!({
                "status": "ok",
                "cycles_per_op": cycles_per_op,
                "ns_per_op": self.ns(*cycles_per_op),
                "best_cycles_per_op": best,
                "runs": runs,
            }),
            Figure::NotApplicable(reason) => json!({ "status": "n/a", "reason": reason }),
            Figure::Failed(e) => json!({ "status": "failed", "error": e }),
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut o = json!({
                    "operation": row.name,
                    "label": row.label,
                    "vmm_over_native": row.vmm_over_native,
                    "qemu_over_vmm": row.qemu_over_vmm,
                    "exits_per_op": row.exits_per_op,
                });
                for (column, f) in Column::ALL.iter().zip(&row.figures) {
                    o[column.name()] = figure(f);
                }
                match &row.checksum {
                    Some(Ok(sum)) => o["checksum"] = json!(format!("{sum:#010x}")),
                    Some(Err(e)) => o["checksum_error"] = json!(e),
                    None => {}
                }
                o
            })
            .collect();
        json!({
            "tsc_hz": self.tsc_hz,
            "reps": self.reps,
            "operations": rows,
            "failures": self.failures(),
        })
    }
}

/// Every checksum of `op` across columns and runs must be the same value.
fn checksum_agreement(op: &str, results: &Results) -> Option<Result<u32, String>> {
    let mut seen: Vec<(Column, u32)> = Vec::new();
    for column in Column::ALL {
        if let Some(runs) = results.runs.get(&(op, column)) {
            for &sum in &runs.checksums {
                if !seen.contains(&(column, sum)) {
                    seen.push((column, sum));
                }
            }
        }
    }
    let first = seen.first()?.1;
    if seen.iter().all(|(_, s)| *s == first) {
        return Some(Ok(first));
    }
    let listed: Vec<String> = seen
        .iter()
        .map(|(c, s)| format!("{} {s:#010x}", c.name()))
        .collect();
    Some(Err(format!(
        "checksums disagree ({}): the environments did not compute the same thing",
        listed.join(", ")
    )))
}

/// A figure with as many decimals as its size deserves.
fn number(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPS: &[Operation] = &[
        Operation {
            name: "a",
            label: "op a",
            native: true,
        },
        Operation {
            name: "b",
            label: "op b",
            native: false,
        },
    ];

    fn na(op: &Operation, column: Column) -> Option<String> {
        (column == Column::Native && !op.native).then(|| "not in a process".to_string())
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn figures_ratios_and_rendering() {
        let mut r = Results::default();
        r.entry("a", Column::Native).cycles_per_op = vec![10.0, 12.0, 11.0];
        r.entry("a", Column::Native).checksums = vec![7, 7, 7];
        r.entry("a", Column::Vmm).cycles_per_op = vec![20.0, 24.0, 22.0];
        r.entry("a", Column::Vmm).exits_per_op = vec![0.0, 0.0, 0.0];
        r.entry("a", Column::Vmm).checksums = vec![7];
        r.entry("a", Column::Qemu).cycles_per_op = vec![44.0, 44.0, 44.0];
        r.entry("b", Column::Vmm).cycles_per_op = vec![1000.0];
        r.entry("b", Column::Vmm).exits_per_op = vec![2.0];
        r.entry("b", Column::Qemu).errors = vec!["qemu exited with status 3".into()];
        let t = Table::build(OPS, &r, na, Some(2e9), 3);

        let a = &t.rows[0];
        assert_eq!(
            a.figure(Column::Native),
            &Figure::Measured {
                cycles_per_op: 11.0,
                best: 10.0,
                runs: 3
            }
        );
        assert_eq!(a.vmm_over_native, Some(2.0));
        assert_eq!(a.qemu_over_vmm, Some(2.0));
        assert_eq!(a.exits_per_op, Some(0.0));
        assert_eq!(a.checksum, Some(Ok(7)));

        let b = &t.rows[1];
        assert_eq!(
            b.figure(Column::Native),
            &Figure::NotApplicable("not in a process".into())
        );
        assert!(matches!(b.figure(Column::Qemu), Figure::Failed(_)));
        assert_eq!(b.vmm_over_native, None);
        assert_eq!(b.qemu_over_vmm, None);
        assert_eq!(b.checksum, None);
        assert_eq!(t.failures(), ["b under qemu: qemu exited with status 3"]);

        let text = t.render();
        assert!(text.contains("host TSC: 2.000 GHz"), "{text}");
        assert!(text.contains("median of 3 runs"), "{text}");
        let line_a = text.lines().find(|l| l.starts_with("op a")).unwrap();
        // 11 cycles at 2 GHz is 5.5 ns
        assert!(line_a.contains("11.0 (5.50 ns)"), "{line_a}");
        assert!(line_a.contains("2.00"), "{line_a}");
        let line_b = text.lines().find(|l| l.starts_with("op b")).unwrap();
        assert!(line_b.contains("n/a (not in a process)"), "{line_b}");
        assert!(line_b.contains("FAILED"), "{line_b}");
        assert!(text.contains("a: checksum 0x00000007 in every environment"));
        assert!(text.contains("FAILED: b under qemu"));

        let j = t.to_json();
        assert_eq!(j["operations"][0]["vmm"]["cycles_per_op"], 22.0);
        assert_eq!(j["operations"][0]["vmm"]["ns_per_op"], 11.0);
        assert_eq!(j["operations"][0]["vmm"]["best_cycles_per_op"], 20.0);
        assert_eq!(j["operations"][1]["native"]["status"], "n/a");
        assert_eq!(j["operations"][1]["qemu"]["status"], "failed");
        assert_eq!(j["failures"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn an_unavailable_column_and_missing_runs() {
        let mut r = Results::default();
        r.unavailable
            .insert(Column::Qemu, "qemu: not installed".into());
        r.entry("a", Column::Vmm).cycles_per_op = vec![5.0];
        let t = Table::build(OPS, &r, na, None, 1);
        assert_eq!(
            t.rows[0].figure(Column::Qemu),
            &Figure::NotApplicable("qemu: not installed".into())
        );
        // the native run of "a" never reported it
        assert!(matches!(
            t.rows[0].figure(Column::Native),
            Figure::Failed(_)
        ));
        let text = t.render();
        assert!(text.contains("frequency unknown"));
        assert!(text.contains("median of 1 run\n"));
        assert!(text.contains("n/a (qemu: not installed)"));
    }

    #[test]
    fn disagreeing_checksums_are_a_failure() {
        let mut r = Results::default();
        r.unavailable
            .insert(Column::Qemu, "qemu: not installed".into());
        r.entry("a", Column::Native).cycles_per_op = vec![1.0];
        r.entry("a", Column::Native).checksums = vec![1];
        r.entry("a", Column::Vmm).cycles_per_op = vec![1.0];
        r.entry("a", Column::Vmm).checksums = vec![2];
        let t = Table::build(&OPS[..1], &r, na, None, 1);
        assert!(matches!(t.rows[0].checksum, Some(Err(_))));
        assert_eq!(t.failures().len(), 1);
        assert!(t.failures()[0].contains("native 0x00000001, vmm 0x00000002"));
    }
}
