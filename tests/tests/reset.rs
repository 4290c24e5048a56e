//! The ways a guest ends the machine without the debug-exit port, as `vmm run` reports
//! them: a reset through the i8042 (pulse 0xFE), the PIIX reset control register (0xCF9)
//! or port 0x92 ends the run with status 6 and says so; an ACPI S5 power-off ends it with
//! status 0.

use guests::parse_report;

/// The documented status of a run the guest ended with a reset (`vmm run --help`;
/// `vmm::vm::RESET_EXIT_STATUS`).
const RESET_STATUS: i32 = 6;

/// `vmm run` of the legacy kernel with `append`: status, stdout, stderr.
fn run_legacy(append: &str) -> support::Run {
    let kernel = support::guest_kernel("legacy");
    let run = support::run_vmm(60, &["run", "--kernel", kernel, "--append", append]);
    assert!(!run.timed_out(), "vmm timed out:\n{}", run.all_output());
    run
}

fn assert_reset(append: &str, announced: &str) {
    let run = run_legacy(append);
    let output = run.all_output();
    assert_eq!(run.status, Some(RESET_STATUS), "{append}:\n{output}");
    assert!(run.stdout.contains(announced), "{append}:\n{output}");
    assert!(
        run.stderr.contains("the guest reset the machine"),
        "{append}:\n{output}"
    );
    // The kernel reports a failure only if it is still running after the write.
    assert!(!run.stdout.contains("FAIL"), "{append}:\n{output}");
}

#[test]
fn i8042_reset_pulse_ends_the_run_with_status_6() {
    assert_reset("reset-i8042", "resetting through the i8042");
}

#[test]
fn reset_control_register_ends_the_run_with_status_6() {
    assert_reset("reset-cf9", "resetting through 0xCF9");
}

#[test]
fn port92_fast_reset_ends_the_run_with_status_6() {
    assert_reset("reset-port92", "resetting through port 0x92");
}

#[test]
fn acpi_s5_powers_off_with_status_0() {
    let kernel = support::guest_kernel("poweroff");
    let run = support::run_vmm(60, &["run", "--kernel", kernel]);
    let output = run.all_output();
    assert_eq!(run.status, Some(0), "{output}");
    assert!(parse_report(&run.stdout).all_passed(), "{output}");
    assert!(run.stderr.contains("powered the machine off"), "{output}");
}
