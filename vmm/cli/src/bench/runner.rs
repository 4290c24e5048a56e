//! Running one benchmark: a kernel under the monitor (a child `vmm run`, one VM per
//! process) or under QEMU, or the native program; and the host TSC frequency.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::line::{parse_output, LineError, Sample};

/// The host status of a kernel that wrote 0 to the debug-exit port: `(0 << 1) | 1`.
const KERNEL_SUCCESS_STATUS: i32 = 1;

/// Why a benchmark run produced no figures.
#[derive(Debug, Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The run did not end in time.
    #[error("{what} did not finish within {} s", timeout.as_secs())]
    Timeout { what: String, timeout: Duration },
    /// The run ended with a status other than success.
    #[error("{what} exited with {status} instead of {expected}; its output ends: {tail:?}")]
    Status {
        what: String,
        status: ExitStatus,
        expected: i32,
        tail: String,
    },
    /// The output held a malformed `BENCH` line.
    #[error("{what}: {source}")]
    Output {
        what: String,
        #[source]
        source: LineError,
    },
}

/// The samples of one run, and the monitor's exit counts when it was under the monitor.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Every `BENCH` line.
    pub samples: Vec<Sample>,
    /// Exits the monitor counted over the whole run.
    pub exits: Option<ExitCounts>,
}

/// The exits of one monitor run, from its `--stats-json` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// All exits.
    pub total: u64,
    /// Exits per reason, by the names `--stats` prints.
    pub by_reason: BTreeMap<String, u64>,
    /// Exits per mechanism (`gate`, `signal`, `none`: what each cost the host), by the
    /// names `--stats` prints; empty when the monitor did not say.
    pub by_mechanism: BTreeMap<String, u64>,
}

impl ExitCounts {
    /// Reads `total_exits`, `exits` and `exits_by_mechanism` of a `--stats-json`
    /// document; `None` without a total.
    pub fn from_stats_json(stats: &serde_json::Value) -> Option<Self> {
        let total = stats["total_exits"].as_u64()?;
        let counts = |key: &str| -> BTreeMap<String, u64> {
            stats[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default()
        };
        Some(Self {
            total,
            by_reason: counts("exits"),
            by_mechanism: counts("exits_by_mechanism"),
        })
    }
}

/// The last few lines of a run's output, enough to see how a kernel failed.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(4)..].join("\n")
}

fn execute(
    cmd: Command,
    what: &str,
    expected: i32,
    timeout: Duration,
) -> Result<Vec<Sample>, RunError> {
    let run = guests::qemu::run(cmd, timeout).map_err(|source| RunError::Spawn {
        what: what.to_string(),
        source,
    })?;
    let Some(status) = run.status else {
        return Err(RunError::Timeout {
            what: what.to_string(),
            timeout,
        });
    };
    if status.code() != Some(expected) {
        return Err(RunError::Status {
            what: what.to_string(),
            status,
            expected,
            tail: tail(&run.output),
        });
    }
    parse_output(&run.output).map_err(|source| RunError::Output {
        what: what.to_string(),
        source,
    })
}

/// Runs `kernel` under `vmm run --exec EXEC --smp CPUS` of the executable `vmm`, asking
/// it for its statistics.
///
/// # Errors
/// The child cannot start, times out, fails or prints a malformed `BENCH` line.
pub fn under_vmm(
    vmm: &Path,
    kernel: &str,
    exec: &str,
    cpus: u8,
    timeout: Duration,
) -> Result<RunOutput, RunError> {
    let stats = std::env::temp_dir().join(format!(
        "vmm-bench-{}-{}-{exec}.json",
        std::process::id(),
        Path::new(kernel)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kernel")
    ));
    let mut cmd = Command::new(vmm);
    cmd.args(["run", "--exec", exec, "--kernel", kernel, "--stats-json"])
        .arg(&stats)
        .args(["--smp", &cpus.to_string()]);
    let what = format!("vmm run --exec {exec} --kernel {kernel}");
    let samples = execute(cmd, &what, KERNEL_SUCCESS_STATUS, timeout);
    // The statistics only add the exit counts; a run without them still has its timings.
    let exits = std::fs::read(&stats)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| ExitCounts::from_stats_json(&v));
    let _ = std::fs::remove_file(&stats);
    Ok(RunOutput {
        samples: samples?,
        exits,
    })
}

/// Runs `kernel` under QEMU's TCG with the reference command line of the test kernels
/// and `cpus` processors.
///
/// # Errors
/// QEMU cannot start, times out, fails or prints a malformed `BENCH` line.
pub fn under_qemu(kernel: &str, cpus: u8, timeout: Duration) -> Result<RunOutput, RunError> {
    let cmd = guests::qemu::command(kernel, "", &format!("-smp {cpus}"));
    let what = format!("{} -kernel {kernel}", guests::qemu::QEMU);
    Ok(RunOutput {
        samples: execute(cmd, &what, KERNEL_SUCCESS_STATUS, timeout)?,
        exits: None,
    })
}

/// Runs `vmm bench round-trips` of the executable `vmm`: the bare round trips, timed in a
/// process of their own (they take LDT entries, a seccomp filter and signal handlers for
/// good).
///
/// # Errors
/// The child cannot start, times out, fails or prints a malformed `BENCH` line.
pub fn round_trips(vmm: &Path, timeout: Duration) -> Result<RunOutput, RunError> {
    let mut cmd = Command::new(vmm);
    cmd.args(["bench", "round-trips"]);
    Ok(RunOutput {
        samples: execute(cmd, "vmm bench round-trips", 0, timeout)?,
        exits: None,
    })
}

/// Runs the native program straight on the host.
///
/// # Errors
/// The program cannot start (a host without 32-bit process support), times out, fails
/// or prints a malformed `BENCH` line.
pub fn native(program: &str, timeout: Duration) -> Result<RunOutput, RunError> {
    Ok(RunOutput {
        samples: execute(Command::new(program), program, 0, timeout)?,
        exits: None,
    })
}

/// The host TSC's rate, measured against the monotonic clock over `window`. The guests'
/// RDTSC reads the same counter: natively under the monitor, and through QEMU's TCG,
/// which returns the host's TSC.
pub fn tsc_hz(window: Duration) -> Option<f64> {
    let t0 = Instant::now();
    let c0 = read_tsc();
    std::thread::sleep(window);
    let c1 = read_tsc();
    let elapsed = t0.elapsed().as_secs_f64();
    (c1 > c0 && elapsed > 0.0).then(|| (c1 - c0) as f64 / elapsed)
}

fn read_tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; every x86-64 CPU has it and the
    // monitor never sets CR4.TSD for itself.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_ticks_at_a_plausible_rate() {
        let hz = tsc_hz(Duration::from_millis(20)).expect("the TSC advances");
        assert!(hz > 1e8 && hz < 1e11, "{hz}");
    }

    #[test]
    fn exit_counts_from_the_stats_file() {
        let stats = serde_json::json!({
            "exits": { "rewrite_trap": 40, "async": 2 },
            "exits_by_mechanism": { "gate": 30, "signal": 12, "none": 0 },
            "total_exits": 42,
            "counters": { "tc_blocks_translated": 9 },
        });
        let counts = ExitCounts::from_stats_json(&stats).expect("counts");
        assert_eq!(counts.total, 42);
        assert_eq!(counts.by_reason["rewrite_trap"], 40);
        assert_eq!(counts.by_reason.len(), 2);
        assert_eq!(counts.by_mechanism["gate"], 30);
        assert_eq!(counts.by_mechanism["signal"], 12);
        // A monitor that does not split its exits.
        let old = serde_json::json!({ "exits": {}, "total_exits": 0 });
        let counts = ExitCounts::from_stats_json(&old).expect("counts");
        assert!(counts.by_mechanism.is_empty());
        assert_eq!(ExitCounts::from_stats_json(&serde_json::json!({})), None);
    }

    #[test]
    fn a_failing_program_is_an_error_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo BENCH x iterations=1 cycles=2; exit 3"]);
        let err = execute(cmd, "sh", 0, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, RunError::Status { .. }), "{err}");
        assert!(err.to_string().contains("one"), "{err}");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo BENCH x iterations=4 cycles=2"]);
        let samples = execute(cmd, "sh", 0, Duration::from_secs(30)).unwrap();
        assert_eq!(samples.len(), 1);

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo BENCH x cycles=2"]);
        let err = execute(cmd, "sh", 0, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, RunError::Output { .. }), "{err}");

        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let err = execute(cmd, "sleep", 0, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, RunError::Timeout { .. }), "{err}");
    }
}
