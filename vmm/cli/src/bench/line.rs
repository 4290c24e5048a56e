//! The `BENCH` lines the benchmark kernels and the native program print
//! (`guests/bench/bench.h` writes them).

use thiserror::Error;

/// One timed loop as a benchmark reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The operation, the benchmark kernel's name.
    pub name: String,
    /// Untimed operations that ran before the timed loop.
    pub warmup: u64,
    /// Operations in one timed loop; never 0.
    pub iterations: u64,
    /// Timed loops that ran; `cycles` is the fastest. 1 when the line does not say.
    pub trials: u64,
    /// TSC cycles the (fastest) timed loop took.
    pub cycles: u64,
    /// A value the operation computed that every environment must agree on.
    pub checksum: Option<u32>,
}

impl Sample {
    /// Cycles per operation.
    pub fn cycles_per_op(&self) -> f64 {
        self.cycles as f64 / self.iterations as f64
    }

    /// Every operation the run executed: warm-up and all timed loops.
    pub fn operations_executed(&self) -> u64 {
        self.warmup
            .saturating_add(self.iterations.saturating_mul(self.trials))
    }
}

/// A `BENCH` line that does not say what it must.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LineError {
    /// A line starting with `BENCH` without an operation name.
    #[error("BENCH line without an operation name: {line:?}")]
    NoName { line: String },
    /// A required field is absent.
    #[error("BENCH line for {name} has no {field}= field: {line:?}")]
    MissingField {
        name: String,
        field: &'static str,
        line: String,
    },
    /// A field whose value is no number of the expected kind.
    #[error("BENCH line for {name}: {field}={value:?} is not a valid number")]
    BadValue {
        name: String,
        field: String,
        value: String,
    },
    /// A timed loop of no operations has no cost per operation.
    #[error("BENCH line for {name} reports 0 iterations or 0 trials")]
    NoIterations { name: String },
}

/// Parses one line: `Ok(None)` for any line that is not a `BENCH` line (the kernels'
/// other serial output), the sample otherwise. Unknown fields are ignored so the format
/// can grow; `cycles_per_op` is recomputed from the exact totals rather than trusted.
///
/// # Errors
/// A `BENCH` line without a name, `iterations` or `cycles`, or with a malformed number.
pub fn parse_line(line: &str) -> Result<Option<Sample>, LineError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some("BENCH") {
        return Ok(None);
    }
    let name = match words.next() {
        Some(n) if !n.contains('=') => n.to_string(),
        _ => {
            return Err(LineError::NoName {
                line: line.to_string(),
            })
        }
    };
    let (mut warmup, mut iterations, mut trials, mut cycles, mut checksum) =
        (None, None, None, None, None);
    let bad = |field: &str, value: &str| LineError::BadValue {
        name: name.clone(),
        field: field.to_string(),
        value: value.to_string(),
    };
    for word in words {
        let Some((field, value)) = word.split_once('=') else {
            continue;
        };
        let decimal = || value.parse::<u64>().map_err(|_| bad(field, value));
        match field {
            "warmup" => warmup = Some(decimal()?),
            "iterations" => iterations = Some(decimal()?),
            "trials" => trials = Some(decimal()?),
            "cycles" => cycles = Some(decimal()?),
            "checksum" => {
                let hex = value.strip_prefix("0x").ok_or_else(|| bad(field, value))?;
                checksum = Some(u32::from_str_radix(hex, 16).map_err(|_| bad(field, value))?);
            }
            _ => {}
        }
    }
    let missing = |field| LineError::MissingField {
        name: name.clone(),
        field,
        line: line.to_string(),
    };
    let iterations = iterations.ok_or_else(|| missing("iterations"))?;
    let cycles = cycles.ok_or_else(|| missing("cycles"))?;
    if iterations == 0 || trials == Some(0) {
        return Err(LineError::NoIterations { name });
    }
    Ok(Some(Sample {
        name,
        warmup: warmup.unwrap_or(0),
        iterations,
        trials: trials.unwrap_or(1),
        cycles,
        checksum,
    }))
}

/// Every `BENCH` line of a run's output, in order.
///
/// # Errors
/// The first malformed `BENCH` line.
pub fn parse_output(text: &str) -> Result<Vec<Sample>, LineError> {
    text.lines()
        .filter_map(|l| parse_line(l).transpose())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_line() {
        let s = parse_line(
            "BENCH compute warmup=32768 iterations=32768 trials=5 cycles=95047290 cycles_per_op=2900.6 checksum=0x1fd6392d\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.name, "compute");
        assert_eq!(s.warmup, 32768);
        assert_eq!(s.iterations, 32768);
        assert_eq!(s.trials, 5);
        assert_eq!(s.operations_executed(), 6 * 32768);
        assert_eq!(s.cycles, 95_047_290);
        assert_eq!(s.checksum, Some(0x1fd6_392d));
        assert!((s.cycles_per_op() - 2900.61).abs() < 0.01);
    }

    #[test]
    fn other_serial_output_is_skipped() {
        assert_eq!(parse_line("PASS: demo: something"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
        assert_eq!(parse_line("BENCHMARK x"), Ok(None));
        let out = "booting\nBENCH a iterations=2 cycles=10\nnoise\nBENCH b iterations=4 cycles=2 extra=yes\n";
        let samples = parse_output(out).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].cycles_per_op(), 5.0);
        assert_eq!(samples[1].cycles_per_op(), 0.5);
        assert_eq!(samples[1].checksum, None);
        assert_eq!(samples[1].warmup, 0);
        assert_eq!(samples[1].trials, 1);
        assert_eq!(samples[1].operations_executed(), 4);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(matches!(parse_line("BENCH"), Err(LineError::NoName { .. })));
        assert!(matches!(
            parse_line("BENCH iterations=3 cycles=4"),
            Err(LineError::NoName { .. })
        ));
        assert!(matches!(
            parse_line("BENCH x cycles=4"),
            Err(LineError::MissingField {
                field: "iterations",
                ..
            })
        ));
        assert!(matches!(
            parse_line("BENCH x iterations=4"),
            Err(LineError::MissingField {
                field: "cycles",
                ..
            })
        ));
        assert!(matches!(
            parse_line("BENCH x iterations=-4 cycles=1"),
            Err(LineError::BadValue { .. })
        ));
        assert!(matches!(
            parse_line("BENCH x iterations=4 cycles=1 checksum=12"),
            Err(LineError::BadValue { .. })
        ));
        assert_eq!(
            parse_line("BENCH x iterations=0 cycles=1"),
            Err(LineError::NoIterations { name: "x".into() })
        );
        assert_eq!(
            parse_line("BENCH x iterations=3 trials=0 cycles=1"),
            Err(LineError::NoIterations { name: "x".into() })
        );
        assert!(parse_output("BENCH ok iterations=1 cycles=1\nBENCH bad cycles=1\n").is_err());
    }
}
