//! `vmm`: the monitor's command line.

mod console;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmm::addr::GuestLinear;
use vmm::memory::MAX_RAM_SIZE;
use vmm::vm::{DiskImage, RunOutcome, SyscallNeeds, Vm, VmConfig};
#[cfg(feature = "kproxy")]
use vmm_cli::kproxy;
use vmm_cli::scan::{self, ScanError, ScanOptions};
use vmm_cli::{bench, coverage, plot, EXIT_INPUT_ERROR, EXIT_MONITOR_ERROR, EXIT_USAGE_ERROR};

mod bench_linux;

/// Number of trap sites `--profile` draws.
const PROFILE_TOP_SITES: usize = 15;
/// Number of trap sites `--stats` lists.
const STATS_TOP_SITES: usize = 20;
/// The smallest guest RAM `vmm run` accepts: a kernel loads at 1 MiB.
const MIN_MEM_SIZE: u64 = 2 << 20;

/// Runs unmodified 32-bit x86 guest kernels natively inside a Linux process.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Census of the sensitive instructions in a guest code image: what the rewriter
    /// patches and what traps by itself.
    ///
    /// FILE is a 32-bit i386 ELF, a Linux bzImage (its compressed vmlinux is expanded and
    /// scanned) or, with --base, raw code. The format is recognised from the content.
    /// Exit status: 0 on success, 1 when the file cannot be scanned, 2 for a command line
    /// that cannot work (such as raw code without --base).
    Scan(ScanArgs),
    /// Boot a guest kernel (Multiboot v1, or a Linux bzImage with its 32-bit boot
    /// protocol) and run it natively until it stops.
    ///
    /// Without --kernel a built-in demo guest runs. QEMU's spellings are accepted:
    /// -kernel, -initrd, -append, -m (MiB without a suffix), -hda, -hdb, and -nographic
    /// and -no-reboot, which change nothing (the serial port is always this terminal, a
    /// reset always ends the run). The guest's serial port (COM1) is
    /// this terminal, in raw mode when it is one: Ctrl-A x quits, Ctrl-A h lists the
    /// escape keys. The exit status is the guest's debug-exit status
    /// ((value << 1) | 1, written to port 0xF4, as QEMU's isa-debug-exit gives it), 0 when
    /// the guest halts with interrupts disabled or powers the machine off (ACPI S5 through
    /// PM1a control), 2 for a kernel or memory size that cannot be used, 3 when the host
    /// cannot run guests, 4 when the guest failed (triple fault, escape attempt,
    /// unsupported feature; a register dump is printed), 6 when the guest reset the
    /// machine (i8042 output port or pulse 0xFE, port 0xCF9, port 0x92): the run ends
    /// there, as QEMU's does with -no-reboot; 8 when a stop request through the control
    /// socket (--api-sock, `vmm stop`) ended it; 10 when the seccomp wall refused a syscall
    /// the monitor made once the guest ran (a line on stderr names it).
    Run(Box<RunArgs>),
    /// Nanobenchmarks: cycles per operation of sensitive and ordinary operations,
    /// natively, under the monitor in each execution mode and under QEMU's TCG.
    ///
    /// Every benchmark kernel runs under `vmm run --exec translate` and `--exec patch`
    /// (one child process per VM) and under qemu-system-i386 when it is installed; the
    /// operations a 32-bit process can run are timed natively too. Prints medians, ns per
    /// operation from the estimated TSC rate, the ratios, the monitor's exits per
    /// operation in each mode (by reason below the table) and the translation targets.
    /// Exit status 1 if any run failed.
    Bench(BenchArgs),
    /// Which rewriter classes, encoding forms and exception vectors the guest test suite
    /// covers with a passing check.
    ///
    /// Without --results every kernel of the guests' tests.cfg is run under this monitor
    /// (as `vmm run`, one after another) and its check lines are read. With --results FILE
    /// the check lines are read from FILE instead: any text holding the kernels' `PASS:` /
    /// `FAIL:` / `SKIP:` lines, such as the results file the suite runner writes
    /// (target/tmp/suite-vmm-results.txt) or saved `vmm run` output. Exit status: 0, or 1
    /// when FILE cannot be read or a kernel cannot be started.
    Coverage(CoverageArgs),
    /// Show or replace the kernel policy of a running VM through its control socket
    /// (`vmm run --api-sock PATH`).
    ///
    /// Exit status: 0 on success, 1 when the monitor refused the policy (its message
    /// names the line and field) or could not be reached.
    #[cfg(feature = "kproxy")]
    Policy(kproxy::PolicyArgs),
    /// Stop a running VM through its control socket (`vmm run --api-sock PATH`): the VM
    /// answers, then its run ends at the next exit and `vmm run` exits with status 8.
    ///
    /// Exit status: 0 once the VM took the request, 1 when it could not be reached.
    #[cfg(feature = "kproxy")]
    Stop(kproxy::StopArgs),
    /// Run a service node: perform block and tty services for monitors over gRPC on
    /// loopback, and ship implementations (tty.write) for guests to run themselves.
    ///
    /// Prints `listening on ADDR` once it serves, then runs until killed.
    #[cfg(feature = "kproxy")]
    ServiceNode(kproxy::ServiceNodeArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Runs of every benchmark in every environment; the table shows medians.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also draw the table as an SVG picture into FILE: cycles per operation, one bar per
    /// environment, log scale.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(subcommand)]
    target: Option<BenchTarget>,
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// Debian's Linux with the busybox initramfs: start to shell ready and workloads
    /// W1-W3, under vmm (each execution mode), QEMU's TCG and natively, in seconds from
    /// host-side timestamps of console lines, with ratios. Exit status 1 if any
    /// environment failed.
    Linux(bench_linux::LinuxArgs),
    /// The bare round trips (empty gate exit, signal, far call/return), timed in this
    /// process: one `BENCH` line each, for the `vmm bench` that runs it as a child.
    #[command(hide = true)]
    RoundTrips,
}

#[derive(Debug, Args)]
struct CoverageArgs {
    /// Read check results from FILE instead of running the suite kernels.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The guest kernel: a Multiboot v1 image (ELF32 or a.out kludge) or a Linux bzImage
    /// (boot protocol 2.02 or later), recognised from the content.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// A Linux kernel's initial ramdisk, loaded as high in RAM as the kernel allows.
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// The kernel's arguments. A Linux kernel's command line is STR; a Multiboot
    /// kernel's is, as QEMU builds it, the kernel's path, a space, then STR.
    #[arg(long, value_name = "STR", default_value = "")]
    append: String,
    /// Guest RAM: bytes, or with a K, M or G suffix (binary units). At least 2M, at most 3G
    /// (the PC's MMIO hole takes the last GiB below 4G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "128M")]
    mem: u64,
    /// QEMU's -m: a size in MiB, or with a K, M or G suffix; overrides --mem.
    #[arg(long = "qemu-m", hide = true, value_parser = parse_qemu_mem)]
    qemu_mem: Option<u64>,
    /// Processors: N, or QEMU's spelling cpus=N (also -smp N). 1 to 32; the others than
    /// the first wait for INIT and start-up IPIs, as on a PC, and share the monitor's
    /// vCPU thread.
    #[arg(long, value_name = "N", value_parser = parse_smp, default_value = "1")]
    smp: u8,
    /// QEMU's -nographic and -no-reboot: accepted, nothing to change.
    #[arg(long = "qemu-no-op", hide = true, action = clap::ArgAction::Count)]
    qemu_no_op: u8,
    /// How guest code runs. `translate`: only the translator's output executes, from a
    /// translation cache (guest bytes are data; isolating). `patch`: guest pages execute
    /// in place with sensitive instructions patched by one-byte traps: NOT isolating
    /// (code the scanner did not decode the way the CPU does runs as it is), kept for
    /// trusted guests and the study of rewriting overhead.
    #[arg(
        long,
        value_name = "MODE",
        env = "VMM_EXEC",
        default_value = "translate"
    )]
    exec: vmm::vm::ExecMode,
    /// Print exit counts per reason and the hottest trap sites at exit (to stderr).
    #[arg(long)]
    stats: bool,
    /// Write the same statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// Draw where the exits went as an SVG picture into FILE: exits by reason and the
    /// hottest trap sites with their instruction class.
    #[arg(long, value_name = "FILE.svg")]
    profile: Option<PathBuf>,
    /// A raw disk image (whole 512-byte sectors) for the primary IDE channel; repeat for
    /// the slave. FILE,ro attaches it read-only. Writes reach the file.
    #[arg(long = "disk", value_name = "FILE[,ro]", value_parser = parse_disk)]
    disks: Vec<DiskImage>,
    /// The master's image, as QEMU spells it: -hda FILE.
    #[arg(long, value_name = "FILE[,ro]", value_parser = parse_disk)]
    hda: Option<DiskImage>,
    /// The slave's image, as QEMU spells it: -hdb FILE.
    #[arg(long, value_name = "FILE[,ro]", value_parser = parse_disk)]
    hdb: Option<DiskImage>,
    /// Serve gdb's remote protocol: tcp::PORT listens on every interface, tcp:HOST:PORT
    /// on one (port 0 picks a free port; the address is printed). gdb finds the guest
    /// stopped where it was when it connected.
    #[cfg(feature = "gdb")]
    #[arg(long, value_name = "tcp::PORT", value_parser = vmm_cli::gdb::parse_address)]
    gdb: Option<String>,
    /// Short for --gdb tcp::1234, as QEMU's -s.
    #[cfg(feature = "gdb")]
    #[arg(short = 's')]
    gdb_default: bool,
    /// With --gdb or -s: the guest waits for gdb before its first instruction, as
    /// QEMU's -S.
    #[cfg(feature = "gdb")]
    #[arg(short = 'S')]
    gdb_wait: bool,
    /// The kernel proxy's options.
    #[cfg(feature = "kproxy")]
    #[command(flatten)]
    proxy: kproxy::ProxyArgs,
    /// Print the syscalls the monitor is held to once the guest runs with this
    /// configuration (the seccomp wall), one per line with the parts that need them, and
    /// exit without running the guest. The inputs are checked as for a run.
    #[arg(long)]
    print_syscalls: bool,
}

/// Parses a memory size: bytes, or a number with a K/M/G suffix (KiB, MiB, GiB).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a size such as 128M, 1G or 4194304, got {text:?}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses QEMU's `-m`: a bare number is MiB, `size=` may lead.
fn parse_qemu_mem(text: &str) -> Result<u64, String> {
    let t = text.strip_prefix("size=").unwrap_or(text);
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return parse_size(&format!("{t}M"));
    }
    parse_size(t)
}

/// Parses `--smp`: N or `cpus=N` (QEMU's spelling; its other keys name topology this
/// machine does not have), 1 to the most the firmware tables describe.
fn parse_smp(text: &str) -> Result<u8, String> {
    let t = text.strip_prefix("cpus=").unwrap_or(text);
    let max = vmm::firmware::MAX_CPUS;
    match t.parse::<u8>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a processor count from 1 to {max}, not {text:?}"
        )),
    }
}

/// Parses a disk image argument: a path, with `,ro` appended for a read-only drive.
fn parse_disk(text: &str) -> Result<DiskImage, String> {
    let (path, read_only) = match text.strip_suffix(",ro") {
        Some(path) => (path, true),
        None => (text, false),
    };
    if path.is_empty() {
        return Err("expected a disk image file".into());
    }
    Ok(DiskImage {
        path: PathBuf::from(path),
        read_only,
    })
}

/// The drives of the primary IDE channel: -hda and -hdb take their positions, each --disk
/// the next free one (master first).
fn plan_disks(args: &RunArgs) -> Result<[Option<DiskImage>; 2], String> {
    let mut slots = [args.hda.clone(), args.hdb.clone()];
    for disk in &args.disks {
        let Some(free) = slots.iter_mut().find(|s| s.is_none()) else {
            return Err(format!(
                "too many disks: the primary IDE channel holds two (master and slave), \
                 {} cannot be attached",
                disk.path.display()
            ));
        };
        *free = Some(disk.clone());
    }
    Ok(slots)
}

/// The command line with QEMU's single-dash options (`-kernel`, `-initrd`, `-append`,
/// `-m`, `-hda`, `-hdb`, `-nographic`, `-no-reboot`) spelled as the long options they
/// stand for (clap's short options are one letter). The value of an `-append` is the
/// guest's, whatever it looks like.
fn qemu_spellings(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let long = match arg.to_str() {
            Some("-hda") => "--hda",
            Some("-hdb") => "--hdb",
            Some("-kernel") => "--kernel",
            Some("-initrd") => "--initrd",
            Some("-m") => "--qemu-m",
            Some("-smp") => "--smp",
            Some("-nographic" | "-no-reboot") => "--qemu-no-op",
            Some("-append" | "--append") => {
                // Joined, so a value that starts with a dash stays the value.
                let mut joined = std::ffi::OsString::from("--append=");
                joined.push(args.next().unwrap_or_default());
                out.push(joined);
                continue;
            }
            _ => {
                out.push(arg);
                continue;
            }
        };
        out.push(long.into());
    }
    out
}

#[derive(Debug, Args)]
struct ScanArgs {
    /// The image to scan.
    file: PathBuf,
    /// Treat FILE as raw code loaded at this guest linear address (0x-prefixed hex or
    /// decimal); its first byte is the entry point.
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    base: Option<GuestLinear>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Measure instruction boundaries against a linear disassembly of the ELF's
    /// function symbols (precision and recall).
    #[arg(long)]
    truth: bool,
    /// List the N symbols holding the most patch sites.
    #[arg(long, value_name = "N")]
    top: Option<usize>,
}

/// Parses a 32-bit address written as `0x…` hex or decimal.
fn parse_address(text: &str) -> Result<GuestLinear, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse::<u32>(),
    };
    parsed
        .map(GuestLinear)
        .map_err(|e| format!("expected a 32-bit address as 0x-prefixed hex or decimal: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(qemu_spellings(std::env::args_os()));
    match cli.command {
        Command::Scan(args) => scan_command(&args),
        Command::Run(args) => run_command(*args),
        Command::Bench(args) => bench_command(&args),
        Command::Coverage(args) => coverage_command(&args),
        #[cfg(feature = "kproxy")]
        Command::Policy(args) => kproxy::policy_command(&args),
        #[cfg(feature = "kproxy")]
        Command::Stop(args) => kproxy::stop_command(&args),
        #[cfg(feature = "kproxy")]
        Command::ServiceNode(args) => kproxy::service_node_command(&args),
    }
}

/// Longest a single benchmark run may take; a kernel that hangs fails its cell.
const BENCH_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

fn bench_command(args: &BenchArgs) -> ExitCode {
    let vmm = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vmm: error: cannot find the vmm executable to run the kernels: {e}");
            return ExitCode::from(EXIT_MONITOR_ERROR);
        }
    };
    if let Some(BenchTarget::RoundTrips) = &args.target {
        let measured = bench::round_trips::measure(&mut std::io::stdout().lock());
        return match measured {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmm: error: cannot time the round trips: {e}");
                ExitCode::from(EXIT_MONITOR_ERROR)
            }
        };
    }
    if let Some(BenchTarget::Linux(linux)) = &args.target {
        let ok = bench_linux::run(linux, &vmm, |step| eprintln!("vmm bench linux: {step}"));
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let options = bench::Options {
        reps: args.reps as usize,
        vmm,
        qemu: guests::qemu::available(),
        timeout: BENCH_RUN_TIMEOUT,
    };
    let table = bench::run(&options, |step| eprintln!("vmm bench: {step}"));
    if args.json {
        println!("{:#}", table.to_json());
    } else {
        print!("{}", table.render());
    }
    if let Some(path) = &args.plot {
        let written = std::fs::File::create(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
            .and_then(|file| write_svg(path, file, plot::bench_svg(&table)));
        if let Err(e) = written {
            eprintln!("vmm: error: {e}");
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    }
    if table.failures().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes a drawn picture to `path`; the error names the file.
fn write_svg(
    path: &Path,
    mut file: std::fs::File,
    svg: Result<String, plot::PlotError>,
) -> Result<(), String> {
    let svg = svg.map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(svg.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Kernel files up to this size are read whatever `--mem` says: an ELF kernel's file may
/// hold much more than it loads (symbols, debug information).
const KERNEL_FILE_MAX: u64 = 1 << 30;

/// Reads the `what` (kernel, initrd) file at `path`, refusing an empty one and, without
/// reading it all, one larger than `limit` bytes (more than can be loaded): a huge file or
/// a device that never ends would otherwise fill host memory before any check.
/// `bound` says what the limit is, for the message.
fn read_input(what: &str, path: &Path, limit: u64, bound: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let cannot = |e: io::Error| format!("cannot read {what} {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let too_large = || {
        format!(
            "{what} {} is larger than {bound} ({limit} bytes): it cannot be loaded",
            path.display()
        )
    };
    // A regular file says its size; anything else is read up to the limit.
    let meta = file.metadata().map_err(cannot)?;
    if meta.is_file() && meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Prints an error with its chain of causes on one line.
fn print_error(err: &dyn std::error::Error) {
    let mut msg = format!("vmm: error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{msg}");
}

fn run_command(mut args: RunArgs) -> ExitCode {
    if let Some(mem) = args.qemu_mem {
        args.mem = mem;
    }
    if args.mem < MIN_MEM_SIZE {
        eprintln!(
            "vmm: error: --mem {} is too small: a guest needs at least 2M",
            args.mem
        );
        return ExitCode::from(EXIT_USAGE_ERROR);
    }
    if args.mem > MAX_RAM_SIZE {
        eprintln!(
            "vmm: error: --mem {} is too large: at most 3G, since a PC's RAM ends where the \
             MMIO hole below 4G (IOAPIC, local APIC, firmware) begins",
            args.mem
        );
        return ExitCode::from(EXIT_USAGE_ERROR);
    }
    let disks = match plan_disks(&args) {
        Ok(disks) => disks,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    };
    // The output files are created before the guest runs: a path that cannot be written
    // is refused now, not after the run (whose status it would then replace).
    let mut stats_json = None;
    let mut profile = None;
    for (path, file) in [
        (&args.stats_json, &mut stats_json),
        (&args.profile, &mut profile),
    ] {
        if let Some(path) = path {
            match std::fs::File::create(path) {
                Ok(f) => *file = Some((path, f)),
                Err(e) => {
                    eprintln!("vmm: error: cannot write {}: {e}", path.display());
                    return ExitCode::from(EXIT_USAGE_ERROR);
                }
            }
        }
    }
    let (kernel, kernel_path) = match &args.kernel {
        Some(path) => match read_input(
            "kernel",
            path,
            args.mem.max(KERNEL_FILE_MAX),
            "both the guest's RAM and 1 GiB",
        ) {
            Ok(bytes) => (bytes, path.display().to_string()),
            Err(e) => {
                eprintln!("vmm: error: {e}");
                return ExitCode::from(EXIT_USAGE_ERROR);
            }
        },
        None => (
            guests::demo_kernel().to_vec(),
            guests::find("demo")
                .map_or("demo.elf", |g| g.path)
                .to_string(),
        ),
    };
    let initrd = match &args.initrd {
        Some(path) => match read_input("initrd", path, args.mem, "the guest's RAM") {
            Ok(bytes) => Some((path.display().to_string(), bytes)),
            Err(e) => {
                eprintln!("vmm: error: {e}");
                return ExitCode::from(EXIT_USAGE_ERROR);
            }
        },
        None => None,
    };
    let config = VmConfig {
        mem_size: args.mem,
        kernel: kernel.clone(),
        kernel_path,
        append: args.append.clone(),
        initrd,
        serial_out: Box::new(io::stdout()),
        disks,
        exec: args.exec,
        cpus: args.smp,
    };
    let mut vm = match Vm::new(config) {
        Ok(vm) => vm,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    };
    #[cfg(feature = "gdb")]
    let gdb_address = {
        let address = match (&args.gdb, args.gdb_default) {
            (Some(a), _) => Some(a.clone()),
            (None, true) => Some("0.0.0.0:1234".to_string()),
            (None, false) => None,
        };
        if args.gdb_wait && address.is_none() {
            eprintln!("vmm: error: -S waits for gdb: give --gdb tcp::PORT or -s too");
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
        address
    };
    // What the parts around the engine need once the guest runs (the engine adds its
    // own): the terminal, the gdb stub, the kernel proxy.
    let mut needs = SyscallNeeds::default();
    #[cfg(feature = "gdb")]
    {
        needs.gdb_stub = gdb_address.is_some();
    }
    if args.print_syscalls {
        use std::io::IsTerminal;
        needs.terminal = io::stdin().is_terminal();
        // The policy is loaded and checked, its control socket not served.
        #[cfg(feature = "kproxy")]
        match kproxy::attach(&mut vm, &args.proxy, &kernel, false) {
            Ok(proxy) => {
                if let Some(proxy) = &proxy {
                    needs = needs.union(proxy.syscall_needs());
                }
            }
            Err(e) => {
                eprintln!("vmm: error: {e}");
                return ExitCode::from(EXIT_USAGE_ERROR);
            }
        }
        vm.add_syscall_needs(needs);
        print!("{}", vm.monitor_allowlist());
        return ExitCode::SUCCESS;
    }
    // Before any other thread starts: the console's signals are blocked in all of them.
    let console = console::Console::attach();
    needs.terminal = console.is_raw();
    // Kernel proxy: bound before the guest runs.
    #[cfg(feature = "kproxy")]
    let proxy = match kproxy::attach(&mut vm, &args.proxy, &kernel, true) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    };
    #[cfg(feature = "kproxy")]
    if let Some(proxy) = &proxy {
        needs = needs.union(proxy.syscall_needs());
    }
    #[cfg(feature = "gdb")]
    let gdb_pending = match gdb_address
        .map(|a| vmm_cli::gdb::attach(&mut vm, &a, args.gdb_wait).map_err(|e| (a, e)))
    {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err((a, e))) => {
            eprintln!("vmm: error: --gdb: cannot listen on {a}: {e}");
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    };
    vm.add_syscall_needs(needs);
    #[cfg(feature = "gdb")]
    let mut gdb_stub = None;
    let input = vm.serial_input();
    let result = vm.run(|kicker| {
        if let Err(e) = console.spawn_reader(input, kicker) {
            eprintln!("vmm: warning: no serial input: {e}");
        }
        #[cfg(feature = "gdb")]
        if let Some(pending) = gdb_pending {
            match pending.start(kicker) {
                Ok(stub) => gdb_stub = Some(stub),
                Err(e) => eprintln!("vmm: warning: no gdb stub: {e}"),
            }
        }
    });
    let _ = io::stdout().flush();
    drop(console);
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(EXIT_MONITOR_ERROR);
        }
    };
    #[cfg(feature = "gdb")]
    if let Some(stub) = gdb_stub {
        stub.finish(u8::try_from(outcome.exit_code()).unwrap_or(u8::MAX));
    }
    match &outcome {
        RunOutcome::DebugExit { .. } => {}
        RunOutcome::Shutdown { reason } => eprintln!("vmm: {reason}"),
        RunOutcome::Reset => eprintln!("vmm: the guest reset the machine"),
        RunOutcome::GuestFailure { reason, dump } => {
            eprintln!("vmm: guest stopped: {reason}\n{dump}");
        }
        RunOutcome::Stopped => eprintln!("vmm: stopped by request"),
        // The exit handler wrote the diagnostic when the wall refused the syscall.
        RunOutcome::SyscallRefused(_) => {}
    }
    if args.stats {
        eprint!("{}", vm.stats().render(&vm.counters(), STATS_TOP_SITES));
        let unclaimed = vm.unclaimed_accesses();
        if !unclaimed.is_empty() {
            eprintln!("unclaimed accesses (reads, writes)");
            for (at, reads, writes) in &unclaimed {
                eprintln!("  {at:<28}{reads:>12}{writes:>12}");
            }
        }
        #[cfg(feature = "kproxy")]
        if let Some(proxy) = &proxy {
            proxy.print_stats();
        }
    }
    if let Some((path, mut file)) = stats_json {
        let mut json = vm.stats().to_json(&vm.counters(), STATS_TOP_SITES);
        json["unclaimed_accesses"] = vm
            .unclaimed_accesses()
            .into_iter()
            .map(|(at, reads, writes)| serde_json::json!({ "at": at, "reads": reads, "writes": writes }))
            .collect();
        #[cfg(feature = "kproxy")]
        if let Some(proxy) = &proxy {
            proxy.add_stats_json(&mut json);
        }
        if let Err(e) = file.write_all(format!("{json:#}\n").as_bytes()) {
            eprintln!("vmm: error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    }
    if let Some((path, file)) = profile {
        let reasons: Vec<(&str, u64)> = vm
            .stats()
            .exits()
            .into_iter()
            .map(|(reason, count)| (reason.name(), count))
            .collect();
        let sites = vm.stats().top_sites(PROFILE_TOP_SITES);
        if let Err(e) = write_svg(path, file, plot::profile_svg(&reasons, &sites)) {
            eprintln!("vmm: error: {e}");
            return ExitCode::from(EXIT_USAGE_ERROR);
        }
    }
    // Exit codes are a status byte (0..=255).
    ExitCode::from(u8::try_from(outcome.exit_code()).unwrap_or(u8::MAX))
}

/// Runs every tests.cfg kernel under this binary (`vmm run`) and returns its serial output,
/// or reads `results`; then prints the coverage tables.
fn coverage_command(args: &CoverageArgs) -> ExitCode {
    let text = match &args.results {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("vmm: error: cannot read results {}: {e}", path.display());
                return ExitCode::from(EXIT_INPUT_ERROR);
            }
        },
        None => match run_suite_kernels() {
            Ok(text) => text,
            Err(e) => {
                eprintln!("vmm: error: {e}");
                return ExitCode::from(EXIT_INPUT_ERROR);
            }
        },
    };
    let checks = guests::parse_report(&text).checks;
    let (classes, vectors) = coverage::compute(&checks);
    print!("{}", coverage::render(&classes, &vectors));
    ExitCode::SUCCESS
}

/// The serial output of every tests.cfg kernel run by this binary, one after another.
fn run_suite_kernels() -> Result<String, String> {
    let entries =
        guests::parse_config(guests::tests_cfg()).map_err(|e| format!("tests.cfg: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the vmm binary: {e}"))?;
    let mut text = String::new();
    for entry in entries {
        let name = entry.file.trim_end_matches(".elf");
        let guest = guests::find(name).ok_or(format!("tests.cfg names unbuilt kernel {name}"))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["run", "--kernel", guest.path, "--append", &entry.append])
            .stderr(std::process::Stdio::null());
        // Fresh disk images, as the suite runner makes them.
        let mut images = Vec::new();
        for (disk, &size) in (0u8..).zip(&entry.disks) {
            let path = std::env::temp_dir().join(format!(
                "vmm-coverage-{}-{name}-hd{disk}.img",
                std::process::id()
            ));
            guests::disk_image::create(&path, disk, size)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            cmd.arg("--disk").arg(&path);
            images.push(path);
        }
        let timeout = std::time::Duration::from_secs(entry.timeout.into());
        let run = guests::qemu::run(cmd, timeout);
        for image in &images {
            let _ = std::fs::remove_file(image);
        }
        let run = run.map_err(|e| format!("cannot run {name}: {e}"))?;
        if run.status.is_none() {
            eprintln!("vmm: warning: {name} timed out after {} s", entry.timeout);
        }
        text.push_str(&run.output);
    }
    Ok(text)
}

fn scan_command(args: &ScanArgs) -> ExitCode {
    let options = ScanOptions {
        base: args.base,
        truth: args.truth,
        top: args.top,
    };
    let report = match scan::run(&args.file, &options) {
        Ok(report) => report,
        Err(err) => return report_error(&err),
    };
    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let written = if args.json {
        report.write_json(&mut out)
    } else {
        report.write_table(&mut out)
    }
    .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) got what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: error: writing the report: {e}");
            ExitCode::from(EXIT_INPUT_ERROR)
        }
    }
}

/// Prints `err` and picks the exit status. The messages embed their causes, so the
/// top-level one says everything.
fn report_error(err: &ScanError) -> ExitCode {
    eprintln!("vmm: error: {err}");
    ExitCode::from(if err.is_usage() {
        EXIT_USAGE_ERROR
    } else {
        EXIT_INPUT_ERROR
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_hex_and_decimal() {
        assert_eq!(parse_address("0x8000"), Ok(GuestLinear(0x8000)));
        assert_eq!(parse_address("0XC000_0000"), Ok(GuestLinear(0xc000_0000)));
        assert_eq!(parse_address("4096"), Ok(GuestLinear(4096)));
        assert_eq!(parse_address("0xffffffff"), Ok(GuestLinear(u32::MAX)));
        assert!(parse_address("0x100000000").is_err());
        assert!(parse_address("-1").is_err());
        assert!(parse_address("0x").is_err());
        assert!(parse_address("ten").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn disks_in_both_spellings() {
        let args = |v: &[&str]| qemu_spellings(v.iter().map(std::ffi::OsString::from));
        let Cli {
            command: Command::Run(run),
        } = Cli::try_parse_from(args(&[
            "vmm",
            "run",
            "-hdb",
            "b.img,ro",
            "--disk",
            "a.img",
            "--append=-hda",
        ]))
        .unwrap()
        else {
            panic!("not a run command");
        };
        assert_eq!(run.append, "-hda", "the guest's command line is left alone");
        let [master, slave] = plan_disks(&run).unwrap();
        let master = master.unwrap();
        let slave = slave.unwrap();
        assert_eq!(
            (master.path.to_str(), master.read_only),
            (Some("a.img"), false)
        );
        assert_eq!(
            (slave.path.to_str(), slave.read_only),
            (Some("b.img"), true)
        );
        let Cli {
            command: Command::Run(run),
        } = Cli::try_parse_from(args(&[
            "vmm", "run", "--disk", "a", "--disk", "b", "--disk", "c",
        ]))
        .unwrap()
        else {
            panic!("not a run command");
        };
        let e = plan_disks(&run).unwrap_err();
        assert!(e.contains("two") && e.contains('c'), "{e}");
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn qemu_spellings_for_linux() {
        let args = |v: &[&str]| qemu_spellings(v.iter().map(std::ffi::OsString::from));
        let Cli {
            command: Command::Run(run),
        } = Cli::try_parse_from(args(&[
            "vmm",
            "run",
            "-kernel",
            "bz",
            "-initrd",
            "rd",
            "-append",
            "-m",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ]))
        .unwrap()
        else {
            panic!("not a run command");
        };
        assert_eq!(run.kernel.as_deref(), Some(std::path::Path::new("bz")));
        assert_eq!(run.initrd.as_deref(), Some(std::path::Path::new("rd")));
        assert_eq!(run.append, "-m", "the guest's command line is left alone");
        assert_eq!(run.qemu_mem, Some(256 << 20), "QEMU's -m counts MiB");
        assert_eq!(parse_qemu_mem("size=1G"), Ok(1 << 30));
        assert_eq!(parse_qemu_mem("512k"), Ok(512 << 10));
        assert!(parse_qemu_mem("-1").is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
