//! String instructions over hundreds of MiB stay interruptible (against the release
//! monitor; 64 MiB against the debug one): a single `rep insb` of 256 MiB from a port (emulated by the monitor in bounded batches, one exit each) and a
//! single `rep movsb` of 256 MiB (native) run while the PIT ticks inside them and while
//! console input is typed: the guest's receive interrupt lands mid-instruction and echoes
//! the line there and then, before the instruction ends (kernels/longrep.c in `console`
//! mode). The suite runs the same kernel at 8 and 32 MiB, without input, beside QEMU.

mod console_support;

use std::time::{Duration, Instant};

use console_support::Console;

/// The sizes, in MiB, of the string operations: 256 against the release monitor (CI runs
/// this test with `--release`); 64 against the debug one, which emulates each byte of the
/// `rep insb` about 15 times slower (3 minutes for 256 MiB on a shared two-core machine).
const INSB_MIB: u32 = if cfg!(debug_assertions) { 64 } else { 256 };
const MOVSB_MIB: u32 = if cfg!(debug_assertions) { 64 } else { 256 };
/// Guest RAM for them: the `rep insb` lands at 16 MiB, the copy goes from 16 MiB to
/// 16 MiB + its size.
const MEM: &str = "576M";
/// Seconds the run may take: the monitor emulates every element of the `rep insb`, about
/// 50 ns a byte in a release build and 15 times that in a debug build (measured: 13 s
/// and 3 minutes for 256 MiB on a shared two-core machine).
const RUN_LIMIT_S: u32 = 900;
/// How long the guest may take to reach the inside of the first instruction, and a
/// typed line to come back.
const STEP: Duration = Duration::from_secs(60);
/// How long the guest may take to reach the inside of the second instruction: the first
/// one runs in between.
const FIRST_INSTRUCTION: Duration = Duration::from_secs(600);

/// Types a line once `instruction` has started (within `limit`) and waits for its echo;
/// returns the echo's position in the output.
fn type_during(vm: &mut Console, instruction: &str, limit: Duration) -> usize {
    let prompt = format!("{instruction}: inside the instruction, type a line");
    vm.wait_for_line(&prompt, limit);
    let line = format!("typed during {instruction}");
    vm.send(&format!("{line}\n"));
    vm.wait_for_line(&line, STEP);
    vm.seen.len() - 1
}

#[test]
fn hundreds_of_mib_of_rep_string_keep_the_timer_and_the_console_served() {
    let append = format!("insb-mib={INSB_MIB} movsb-mib={MOVSB_MIB} console");
    let started = Instant::now();
    let mut vm = Console::spawn(
        RUN_LIMIT_S,
        &[
            "run",
            "--kernel",
            support::guest_kernel("longrep"),
            "--mem",
            MEM,
            "--append",
            &append,
        ],
    );
    let insb_echo = type_during(&mut vm, "rep insb", STEP);
    let movsb_echo = type_during(&mut vm, "rep movsb", FIRST_INSTRUCTION);
    let ended = vm.finish();
    println!(
        "{INSB_MIB} MiB rep insb and {MOVSB_MIB} MiB rep movsb with console input: {:.1} s",
        ended.at.duration_since(started).as_secs_f64()
    );
    let out = &ended.stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        ended.status,
        Some(1),
        "debug-exit status 1: every check passed\nstdout:\n{out}\nstderr:\n{}",
        ended.stderr
    );
    // Echoed while the instruction was still running: before the line the guest prints
    // once it is over.
    for (echo, summary) in [
        (insb_echo, format!("  {INSB_MIB} MiB from port 0x21: ")),
        (movsb_echo, format!("  {MOVSB_MIB} MiB copied ")),
    ] {
        let end = lines
            .iter()
            .position(|l| l.starts_with(&summary))
            .unwrap_or_else(|| panic!("no line {summary:?} in:\n{out}"));
        assert!(
            echo < end,
            "the echo (line {echo}) came after the instruction ended (line {end}):\n{out}"
        );
    }
    for check in [
        format!("PASS: rep insb: ECX ran down to 0 and EDI advanced by {INSB_MIB} MiB"),
        "PASS: rep insb: every byte is the PIC mask read before".to_owned(),
        "PASS: rep insb: timer interrupts arrived during the instruction".to_owned(),
        "PASS: rep insb: console input arrived during the instruction and was echoed".to_owned(),
        format!("PASS: rep movsb: ECX ran down to 0, ESI and EDI advanced by {MOVSB_MIB} MiB"),
        "PASS: rep movsb: the copy equals the source".to_owned(),
        "PASS: rep movsb: timer interrupts arrived during the instruction".to_owned(),
        "PASS: rep movsb: console input arrived during the instruction and was echoed".to_owned(),
        "8 passed, 0 failed".to_owned(),
    ] {
        assert!(
            lines.contains(&check.as_str()),
            "no line {check:?} in:\n{out}"
        );
    }
}
