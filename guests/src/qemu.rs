//! Running a guest kernel under QEMU, the reference the monitor's results are compared with.

use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The emulator binary.
pub const QEMU: &str = "qemu-system-i386";

/// An IA-32 CPU model: CPUID shows SEP and PSE but no long mode and no SYSCALL, so what the
/// guests check (SYSCALL raises #UD, leaf 0x80000001 has LM clear) holds on it.
pub const CPU_MODEL: &str = "qemu32";

/// Kernel command-line words that skip checks QEMU 7.2 TCG gets wrong; the kernel that
/// checks each one says what QEMU does instead, and [`DEVIATIONS`] lists the checks each
/// word skips. The monitor runs the kernels without them.
pub const QUIRKS: &[&str] = &[
    // sensitive: MOV to CR4 with a reserved bit neither faults nor completes (livelock)
    "quirk-cr4-reserved-hangs",
    // sensitive, privileged: RDMSR/WRMSR of an unknown MSR read 0 / are dropped instead of #GP(0)
    "quirk-unknown-msr-ignored",
    // sensitive, privileged: RDPMC is unimplemented and raises #UD
    "quirk-rdpmc-ud",
    // hostile, vectors, paging: data accesses past a segment limit are not checked and wrap
    // instead of #GP(0) / #SS(0)
    "quirk-no-segment-limit-checks",
    // paging: an access through a data segment register holding the null selector is made
    // instead of raising #GP(0)
    "quirk-null-segment-usable",
    // privileged, vectors: INT1 (ICEBP, F1) raises #UD instead of a #DB trap
    "quirk-int1-ud",
    // vectors: LTR of the null selector loads an invalid TR instead of raising #GP(0)
    "quirk-ltr-null-accepted",
    // vectors: alignment checking (CR0.AM + EFLAGS.AC at CPL 3) is not implemented, no #AC
    "quirk-no-alignment-check",
    // fpu: EMMS runs with CR0.TS set instead of raising #NM
    "quirk-emms-ignores-ts",
    // fpu: an SSE instruction with CR0.EM and CR0.TS both set raises #NM instead of #UD
    "quirk-sse-ts-before-em",
    // ide: a sector beyond the medium reports ABRT instead of IDNF
    "quirk-ide-range-abrt",
    // ide: IDENTIFY DEVICE data is built once and kept, word 59 stays stale
    "quirk-ide-identify-cached",
    // apic: a write to the ESR does not clear the errors it logged
    "quirk-apic-esr-not-cleared",
];

/// A check whose QEMU result is known to differ from the architecture (and so from a
/// correct monitor): the comparison of the two counts it as a known deviation, not a
/// failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deviation {
    /// The tests.cfg test holding the check.
    pub test: &'static str,
    /// The start of the check's name (prefixes included), as the monitor reports it.
    pub check: &'static str,
    /// The [`QUIRKS`] word that makes the kernel skip the check under QEMU.
    pub quirk: &'static str,
    /// What QEMU does instead of what the SDM says.
    pub reason: &'static str,
}

/// Every known QEMU deviation the test kernels meet, in one place.
pub const DEVIATIONS: &[Deviation] = &[
    Deviation {
        test: "sensitive",
        check: "cr: MOV CR4 with a reserved bit raises #GP(0)",
        quirk: "quirk-cr4-reserved-hangs",
        reason: "QEMU re-executes MOV to CR4 with a reserved bit forever instead of #GP(0)",
    },
    Deviation {
        test: "sensitive",
        check: "misc: RDMSR of an unknown MSR",
        quirk: "quirk-unknown-msr-ignored",
        reason: "QEMU reads an unknown MSR as 0 instead of #GP(0)",
    },
    Deviation {
        test: "sensitive",
        check: "misc: WRMSR of an unknown MSR",
        quirk: "quirk-unknown-msr-ignored",
        reason: "QEMU drops a write to an unknown MSR instead of #GP(0)",
    },
    Deviation {
        test: "sensitive",
        check: "misc: RDPMC",
        quirk: "quirk-rdpmc-ud",
        reason: "QEMU does not implement RDPMC and raises #UD",
    },
    Deviation {
        test: "hostile",
        check: "wrap: offset past the segment limit",
        quirk: "quirk-no-segment-limit-checks",
        reason: "QEMU TCG does not check data segment limits: the access wraps, no #GP(0)",
    },
    Deviation {
        test: "hostile",
        check: "wrap: access straddling the segment limit",
        quirk: "quirk-no-segment-limit-checks",
        reason: "QEMU TCG does not check data segment limits: no #GP(0)",
    },
    Deviation {
        test: "paging",
        check: "segment loads: a load after its limit shrank to 4 KiB faults past it",
        quirk: "quirk-no-segment-limit-checks",
        reason: "QEMU TCG does not check data segment limits: no #GP(0)",
    },
    Deviation {
        test: "paging",
        check: "segment loads: an access through the null FS raises #GP(0)",
        quirk: "quirk-null-segment-usable",
        reason: "QEMU TCG makes an access through a null data selector instead of raising \
                 #GP(0) (SDM Vol. 3A §3.4.2: a null selector in DS, ES, FS or GS faults when \
                 used)",
    },
    Deviation {
        test: "privileged",
        check: "rdmsr: [ecx] an unknown MSR",
        quirk: "quirk-unknown-msr-ignored",
        reason: "QEMU reads an unknown MSR as 0 instead of #GP(0)",
    },
    Deviation {
        test: "privileged",
        check: "wrmsr: [ecx] an unknown MSR",
        quirk: "quirk-unknown-msr-ignored",
        reason: "QEMU drops a write to an unknown MSR instead of #GP(0)",
    },
    Deviation {
        test: "privileged",
        check: "rdpmc: [cpl0]",
        quirk: "quirk-rdpmc-ud",
        reason: "QEMU does not implement RDPMC and raises #UD",
    },
    Deviation {
        test: "privileged",
        check: "int1: [cpl0]",
        quirk: "quirk-int1-ud",
        reason: "QEMU raises #UD for INT1 (F1) instead of a #DB trap",
    },
    Deviation {
        test: "vectors",
        check: "#DB: [int1]",
        quirk: "quirk-int1-ud",
        reason: "QEMU raises #UD for INT1 (F1) instead of a #DB trap",
    },
    Deviation {
        test: "vectors",
        check: "#SS: [limit]",
        quirk: "quirk-no-segment-limit-checks",
        reason: "QEMU TCG does not check the SS limit: no #SS(0)",
    },
    Deviation {
        test: "vectors",
        check: "#GP: [ltr] LTR of the null selector",
        quirk: "quirk-ltr-null-accepted",
        reason: "QEMU loads the null selector into TR instead of raising #GP(0)",
    },
    Deviation {
        test: "vectors",
        check: "#AC: [cpl3]",
        quirk: "quirk-no-alignment-check",
        reason: "QEMU TCG does not implement alignment checking: no #AC(0)",
    },
    Deviation {
        test: "fpu",
        check: "fpu: [mmx ts] EMMS with TS=1",
        quirk: "quirk-emms-ignores-ts",
        reason: "QEMU runs EMMS with CR0.TS set instead of raising #NM (SDM Vol. 2A EMMS)",
    },
    Deviation {
        test: "fpu",
        check: "fpu: [sse em ts] PXOR with EM=1 and TS=1",
        quirk: "quirk-sse-ts-before-em",
        reason: "QEMU checks CR0.TS before CR0.EM and raises #NM; with EM set the SDM \
                 (Vol. 3A Table 13-1) gives #UD whatever TS is",
    },
    Deviation {
        test: "ide",
        check: "ide: range: the error register says IDNF",
        quirk: "quirk-ide-range-abrt",
        reason: "QEMU's IDE drive sets ABRT for a sector beyond the medium; ATA/ATAPI-6 \
                 (READ SECTORS error outputs) reports an address that is not found with IDNF",
    },
    Deviation {
        test: "ide",
        check: "ide: multiple: IDENTIFY word 59 shows",
        quirk: "quirk-ide-identify-cached",
        reason: "QEMU builds a drive's IDENTIFY data once and returns that copy afterwards, so \
                 word 59 misses a later SET MULTIPLE MODE; ATA/ATAPI-6 word 59 is the current \
                 multiple setting",
    },
    Deviation {
        test: "apic",
        check: "lapic: ESR: ESR write clears the logged errors",
        quirk: "quirk-apic-esr-not-cleared",
        reason: "QEMU's ESR accumulates errors and ignores writes; the SDM (Vol. 3A \
                 §10.5.3) has a write latch the errors since the previous write and clear \
                 the internal ones, so a second write with no new error reads 0",
    },
];

/// The known QEMU deviation covering `check` (a name as the monitor reports it) of `test`.
pub fn deviation(test: &str, check: &str) -> Option<&'static Deviation> {
    DEVIATIONS
        .iter()
        .find(|d| d.test == test && check.starts_with(d.check))
}

/// The QEMU command line for one kernel: TCG, [`CPU_MODEL`], 128 MiB, Multiboot `-kernel`,
/// the isa-debug-exit device at 0xF4 (status `(code << 1) | 1`), COM1 on stdout, no other
/// devices, no reboot on triple fault. `extra` is split on whitespace (no quoting).
pub fn command(kernel: &str, append: &str, extra: &str) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-accel", "tcg", "-cpu", CPU_MODEL, "-m", "128", "-kernel", kernel,
    ])
    .args(["-append", append])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .args([
        "-serial",
        "stdio",
        "-display",
        "none",
        "-no-reboot",
        "-nodefaults",
    ])
    .args(extra.split_whitespace());
    cmd
}

/// QEMU's arguments attaching `images` as raw IDE drives of the primary channel: the
/// first as its master (index 0), the second as its slave (index 1).
pub fn drive_args(images: &[std::path::PathBuf]) -> Vec<String> {
    images
        .iter()
        .enumerate()
        .flat_map(|(index, path)| {
            [
                "-drive".to_string(),
                format!("file={},format=raw,if=ide,index={index}", path.display()),
            ]
        })
        .collect()
}

/// `append` with the [`QUIRKS`] words added.
pub fn with_quirks(append: &str) -> String {
    let mut words: Vec<&str> = append.split_whitespace().collect();
    words.extend_from_slice(QUIRKS);
    words.join(" ")
}

/// True if [`QEMU`] can be started.
pub fn available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The end of one run.
#[derive(Debug)]
pub struct Run {
    /// Exit status, or None if the run was killed at its timeout.
    pub status: Option<ExitStatus>,
    /// Everything the guest wrote to its serial port.
    pub output: String,
}

/// Runs `cmd` (stdout is the guest's serial port), killing it after `timeout`.
///
/// # Errors
/// The process cannot be started or waited for.
pub fn run(mut cmd: Command, timeout: Duration) -> io::Result<Run> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only truncates the output; the report parser then sees what is missing.
        let _ = stdout.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // The child may exit between try_wait and kill; either way it is gone after wait.
            let _ = child.kill();
            child.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = reader.join().expect("serial reader thread panicked");
    Ok(Run { status, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_the_exit_device_and_the_cpu_model() {
        let cmd = command("/k.elf", "a b", "-smp 1");
        let args: Vec<&str> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(cmd.get_program(), QEMU);
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(after("-kernel"), "/k.elf");
        assert_eq!(after("-append"), "a b");
        assert_eq!(after("-cpu"), CPU_MODEL);
        assert_eq!(after("-device"), "isa-debug-exit,iobase=0xf4,iosize=0x04");
        assert_eq!(&args[args.len() - 2..], ["-smp", "1"]);
    }

    #[test]
    fn every_deviation_names_a_quirk_and_every_quirk_a_deviation() {
        for d in DEVIATIONS {
            assert!(QUIRKS.contains(&d.quirk), "{d:?}");
            assert!(!d.reason.is_empty());
        }
        for q in QUIRKS {
            assert!(
                DEVIATIONS.iter().any(|d| d.quirk == *q),
                "{q} has no deviation"
            );
        }
        let d = deviation("vectors", "#AC: [cpl3] misaligned load").expect("listed");
        assert_eq!(d.quirk, "quirk-no-alignment-check");
        assert_eq!(deviation("forms", "#AC: [cpl3] misaligned load"), None);
        assert_eq!(deviation("vectors", "#DE: [div]"), None);
    }

    #[test]
    fn drives_are_primary_master_then_slave() {
        let args = drive_args(&["/a.img".into(), "/b.img".into()]);
        assert_eq!(
            args,
            [
                "-drive",
                "file=/a.img,format=raw,if=ide,index=0",
                "-drive",
                "file=/b.img,format=raw,if=ide,index=1"
            ]
        );
    }

    #[test]
    fn quirks_are_appended_as_words() {
        let s = with_quirks(" x  y ");
        assert!(s.starts_with("x y quirk-"));
        assert_eq!(s.split(' ').count(), 2 + QUIRKS.len());
    }
}
