//! The bare round trips beside the table: an empty gate exit, a bare signal round trip
//! and a bare far call/return from 64-bit code into compat code, timed by the host CPU
//! layer's own functions ([`vmm::hostcpu::roundtrip`]). They take LDT entries, a seccomp
//! filter and signal handlers for good, so `vmm bench` times them in a child,
//! `vmm bench round-trips` (hidden: its output is `BENCH` lines for the parent), and
//! reads its lines back like a benchmark kernel's.

use std::io::Write;

use vmm::hostcpu::roundtrip::{RoundTrip, RoundTripError, RoundTrips};

use super::runner::{RunError, RunOutput};
use super::Results;

/// Round trips per timed loop: each loop takes about a millisecond, short enough that
/// some loops on a busy host run undisturbed.
fn iterations(trip: RoundTrip) -> u32 {
    match trip {
        RoundTrip::Gate => 4_000,
        RoundTrip::Signal => 500,
        RoundTrip::FarCall => 20_000,
    }
}

/// Timed loops of each round trip; the fastest counts (on a busy host, the least
/// disturbed), as in the benchmark kernels.
pub const TRIALS: u32 = 31;

/// Times every round trip [`TRIALS`] times, the three taking turns so a slow spell on the
/// host reaches each, after an untimed warm-up of a tenth of a loop, and writes one
/// `BENCH` line per round trip to `out`: the fastest loop's cycles.
///
/// # Errors
/// [`MeasureError`]: the round trips cannot be set up or timed, or `out` cannot be
/// written.
pub fn measure(out: &mut impl Write) -> Result<(), MeasureError> {
    let trips = RoundTrips::new()?;
    for trip in RoundTrip::ALL {
        trips.time(trip, iterations(trip) / 10)?;
    }
    let mut best = RoundTrip::ALL.map(|_| u64::MAX);
    for _ in 0..TRIALS {
        for (trip, best) in RoundTrip::ALL.iter().zip(best.iter_mut()) {
            *best = (*best).min(trips.time(*trip, iterations(*trip))?);
        }
    }
    for (trip, cycles) in RoundTrip::ALL.iter().zip(best) {
        writeln!(
            out,
            "BENCH {} warmup={} iterations={} trials={TRIALS} cycles={cycles}",
            trip.name(),
            iterations(*trip) / 10,
            iterations(*trip),
        )?;
    }
    Ok(())
}

/// Why `vmm bench round-trips` failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The host CPU layer could not set up or time a round trip.
    #[error(transparent)]
    RoundTrip(#[from] RoundTripError),
    /// The lines could not be written.
    #[error("cannot write the round trips' lines: {0}")]
    Output(#[from] std::io::Error),
}

/// Files what one `vmm bench round-trips` run said about each round trip.
pub fn record(results: &mut Results, run: &Result<RunOutput, RunError>) {
    for trip in RoundTrip::ALL {
        let runs = results.round_trips.entry(trip).or_default();
        let out = match run {
            Ok(out) => out,
            Err(e) => {
                runs.errors.push(e.to_string());
                continue;
            }
        };
        match out.samples.iter().find(|s| s.name == trip.name()) {
            Some(sample) => runs.cycles_per_op.push(sample.cycles_per_op()),
            None => runs
                .errors
                .push(format!("the run printed no BENCH line for {}", trip.name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::line::parse_output;

    #[test]
    fn a_run_files_each_round_trip_or_says_why_not() {
        let text = "BENCH gate_round_trip warmup=2 iterations=10 trials=7 cycles=3000\n\
                    BENCH far_call_return warmup=2 iterations=10 trials=7 cycles=1500\n";
        let run = Ok(RunOutput {
            samples: parse_output(text).unwrap(),
            exits: None,
        });
        let mut results = Results::default();
        record(&mut results, &run);
        let gate = &results.round_trips[&RoundTrip::Gate];
        assert_eq!(gate.cycles_per_op, [300.0]);
        assert_eq!(
            results.round_trips[&RoundTrip::FarCall].cycles_per_op,
            [150.0]
        );
        let signal = &results.round_trips[&RoundTrip::Signal];
        assert!(signal.cycles_per_op.is_empty());
        assert_eq!(
            signal.errors,
            ["the run printed no BENCH line for signal_round_trip"]
        );

        let failed = Err(RunError::Timeout {
            what: "vmm bench round-trips".into(),
            timeout: std::time::Duration::from_secs(1),
        });
        record(&mut results, &failed);
        for trip in RoundTrip::ALL {
            assert!(
                results.round_trips[&trip]
                    .errors
                    .iter()
                    .any(|e| e.contains("did not finish")),
                "{trip:?}"
            );
        }
    }
}
