//! `vmm bench`: nanobenchmarks in the style of Adams and Agesen (ASPLOS 2006). Each
//! benchmark kernel (`guests/bench/`) times one operation with RDTSC; the same
//! kernel runs under the monitor in each execution mode (`--exec translate`, `--exec
//! patch`) and under QEMU's TCG, and the operations a 32-bit process can run are timed
//! natively by the same measuring code. The table puts the four side by side, medians of
//! several runs, with the exits per operation the monitor counted in each mode (through
//! the gate and through a host signal): the cost of virtualising each operation, and
//! where it goes. Beside the table, the bare round trips an exit is measured against
//! ([`round_trips`]).

pub mod line;
pub mod round_trips;
pub mod runner;
pub mod table;

use std::path::PathBuf;
use std::time::Duration;

pub use line::{parse_line, parse_output, LineError, Sample};
pub use runner::{ExitCounts, RunError};
pub use table::{
    Column, Exits, Figure, Mechanisms, Results, RoundTripRow, Row, Runs, Table, Target,
};

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// The benchmark kernel's name and the `BENCH` line's operation name.
    pub name: &'static str,
    /// What is timed, for people.
    pub label: &'static str,
    /// True if the native program times it: it runs unchanged in a 32-bit process.
    pub native: bool,
    /// Processors the kernel runs with (`--smp`, QEMU's `-smp`).
    pub cpus: u8,
}

const fn op(name: &'static str, label: &'static str, native: bool) -> Operation {
    Operation {
        name,
        label,
        native,
        cpus: 1,
    }
}

/// An operation between two processors.
const fn op2(name: &'static str, label: &'static str) -> Operation {
    Operation {
        name,
        label,
        native: false,
        cpus: 2,
    }
}

/// The operations, in the order of Adams and Agesen's table.
pub const OPERATIONS: &[Operation] = &[
    op("syscall", "syscall: INT 0x80 CPL 3->0->3", false),
    op("in_port", "IN from port 0x21 (PIC mask)", false),
    op("cli_sti", "CLI+STI", false),
    op("pushf_popf", "PUSHF+POPF", true),
    op("sreg_load", "segment load: MOV to DS", true),
    op("divide_error", "#DE through the guest IDT", false),
    op("bound_range", "#BR through the guest IDT", false),
    op("call_ret", "CALL+RET", true),
    op("compute", "compute: FNV-1a, per KiB", true),
    op("paging_fault", "page fault handled by the guest", false),
    op("paging_pte", "PTE update + touch", false),
    op("paging_cr3", "CR3 switch", false),
    op2("ipi_round_trip", "IPI round trip BSP->AP->BSP"),
    op2("vcpu_switch", "hand-off between 2 CPUs (CR3 each)"),
];

/// Why `op` has no figure in `column`, if it has none by design.
pub fn not_applicable(op: &Operation, column: Column) -> Option<String> {
    if column == Column::Native && !op.native {
        return Some("needs CPL 0".to_string());
    }
    None
}

/// How `vmm bench` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per figure; the table shows medians.
    pub reps: usize,
    /// The monitor executable that runs each kernel (`vmm run`).
    pub vmm: PathBuf,
    /// Whether QEMU is run.
    pub qemu: bool,
    /// Longest a single run may take.
    pub timeout: Duration,
}

/// Runs every benchmark `options.reps` times in every environment, and the bare round
/// trips as often, and builds the table. A run that fails is recorded in its cell; the
/// others still run. `progress` is told when each repetition starts.
pub fn run(options: &Options, mut progress: impl FnMut(&str)) -> Table {
    let mut results = Results::default();
    if !options.qemu {
        results
            .unavailable
            .insert(Column::Qemu, "qemu: not installed".to_string());
    }
    let tsc_hz = runner::tsc_hz(Duration::from_millis(200));
    // Repetitions outermost, so a slow spell on the host spreads over every operation
    // instead of spoiling every run of one.
    for rep in 1..=options.reps {
        progress(&format!("run {rep} of {}", options.reps));
        let native = runner::native(guests::bench_native(), options.timeout);
        for op in OPERATIONS.iter().filter(|o| o.native) {
            record(&mut results, op, Column::Native, &native);
        }
        for op in OPERATIONS {
            let Some(kernel) = guests::find_bench(op.name) else {
                continue;
            };
            for mode in Column::MODES {
                let exec = mode.exec_mode().expect("a monitor column");
                let vmm =
                    runner::under_vmm(&options.vmm, kernel.path, exec, op.cpus, options.timeout);
                record(&mut results, op, mode, &vmm);
            }
            if options.qemu {
                let qemu = runner::under_qemu(kernel.path, op.cpus, options.timeout);
                record(&mut results, op, Column::Qemu, &qemu);
            }
        }
        let trips = runner::round_trips(&options.vmm, options.timeout);
        round_trips::record(&mut results, &trips);
    }
    Table::build(OPERATIONS, &results, not_applicable, tsc_hz, options.reps)
}

/// Files what one run said about `op` in `column`.
fn record(
    results: &mut Results,
    op: &Operation,
    column: Column,
    run: &Result<runner::RunOutput, RunError>,
) {
    let runs = results.entry(op.name, column);
    let out = match run {
        Ok(out) => out,
        Err(e) => {
            runs.errors.push(e.to_string());
            return;
        }
    };
    let Some(sample) = out.samples.iter().find(|s| s.name == op.name) else {
        runs.errors
            .push(format!("the run printed no BENCH line for {}", op.name));
        return;
    };
    runs.cycles_per_op.push(sample.cycles_per_op());
    if let Some(sum) = sample.checksum {
        runs.checksums.push(sum);
    }
    if let Some(exits) = &out.exits {
        let ops = sample.operations_executed() as f64;
        runs.exits_per_op.push(exits.total as f64 / ops);
        runs.exits_by_reason.push(
            exits
                .by_reason
                .iter()
                .map(|(reason, n)| (reason.clone(), *n as f64 / ops))
                .collect(),
        );
        if let Some(m) = Mechanisms::per_op(&exits.by_mechanism, ops) {
            runs.exits_by_mechanism.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_kernel_has_a_row_and_every_row_a_kernel() {
        for kernel in guests::benches() {
            assert!(
                OPERATIONS.iter().any(|o| o.name == kernel.name),
                "bench/{}.c has no row in OPERATIONS",
                kernel.name
            );
        }
        for op in OPERATIONS {
            assert!(
                guests::find_bench(op.name).is_some(),
                "no benchmark kernel for {}",
                op.name
            );
        }
        let mut names: Vec<&str> = OPERATIONS.iter().map(|o| o.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPERATIONS.len(), "duplicate operation names");
    }

    #[test]
    fn rows_without_a_figure_say_why() {
        let compute = OPERATIONS.iter().find(|o| o.name == "compute").unwrap();
        assert_eq!(not_applicable(compute, Column::Native), None);
        let cli = OPERATIONS.iter().find(|o| o.name == "cli_sti").unwrap();
        assert!(not_applicable(cli, Column::Native).is_some());
        assert_eq!(not_applicable(cli, Column::Translate), None);
        assert_eq!(not_applicable(cli, Column::Patch), None);
    }

    #[test]
    fn a_run_without_the_operations_line_is_a_failure() {
        let mut results = Results::default();
        let op = &OPERATIONS[0];
        let out = runner::RunOutput {
            samples: vec![Sample {
                name: "other".into(),
                warmup: 0,
                iterations: 1,
                trials: 1,
                cycles: 1,
                checksum: None,
            }],
            exits: Some(ExitCounts {
                total: 10,
                ..ExitCounts::default()
            }),
        };
        record(&mut results, op, Column::Translate, &Ok(out));
        assert_eq!(results.runs[&(op.name, Column::Translate)].errors.len(), 1);

        let out = runner::RunOutput {
            samples: vec![Sample {
                name: op.name.into(),
                warmup: 20,
                iterations: 90,
                trials: 2,
                cycles: 900,
                checksum: Some(5),
            }],
            // 20 warm-up and 2 x 90 timed operations
            exits: Some(ExitCounts {
                total: 400,
                by_reason: [
                    ("rewrite_trap".to_string(), 300),
                    ("async".to_string(), 100),
                ]
                .into_iter()
                .collect(),
                by_mechanism: [("signal".to_string(), 380), ("none".to_string(), 20)]
                    .into_iter()
                    .collect(),
            }),
        };
        record(&mut results, op, Column::Patch, &Ok(out));
        let runs = &results.runs[&(op.name, Column::Patch)];
        assert_eq!(runs.cycles_per_op, [10.0]);
        assert_eq!(runs.exits_per_op, [2.0]);
        assert_eq!(runs.exits_by_reason[0]["rewrite_trap"], 1.5);
        assert_eq!(runs.exits_by_reason[0]["async"], 0.5);
        assert_eq!(
            runs.exits_by_mechanism,
            [Mechanisms {
                gate: 0.0,
                signal: 1.9,
                none: 0.1
            }]
        );
        assert_eq!(runs.checksums, [5]);
    }
}
