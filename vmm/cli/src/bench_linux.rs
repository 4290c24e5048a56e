//! `vmm bench linux`: Debian's i386 kernel with the busybox initramfs
//! (`scripts/setup.sh run`), timed from boot to its shell and through three workloads,
//! under this monitor in each execution mode, under `qemu-system-i386 -accel tcg` with
//! the same kernel, initramfs, command line and memory, and as the same busybox run
//! natively (a static i386 program on the x86-64 host).
//!
//! Every figure is the difference of two host-side timestamps: when the process was
//! started and when the guest's readiness line arrived on its console, or when a
//! workload's begin and end lines arrived. The guest's own clock is never read (a guest
//! clock may drift). Each workload's last output line is compared with the native one,
//! so a figure is only printed for work that was really done.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use clap::Args;

/// The line the initramfs's /init prints before it starts the shell.
const READY: &str = "vmm-initramfs: shell ready";
/// Guest memory in every virtual environment, as QEMU's `-m 256`.
const MEM_MIB: u32 = 256;
/// Console lines kept to explain a failure.
const TAIL_LINES: usize = 16;

/// One timed workload.
struct Workload {
    /// Its name in the table.
    name: &'static str,
    /// What it does, for people.
    label: &'static str,
    /// The shell command; `{bin}` is the directory of busybox's applet links.
    command: &'static str,
}

/// The workloads W1–W3: a pipe moving 64 MiB, a shell loop (guest code that
/// needs no monitor), and process creation (page faults, CR3 switches, exec).
const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "W1",
        label: "dd 64 MiB | md5sum",
        command: "dd if=/dev/zero bs=1M count=64 2>/dev/null | md5sum",
    },
    Workload {
        name: "W2",
        label: "ash loop, 200,000 iterations",
        command: "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $i",
    },
    Workload {
        name: "W3",
        label: "500 x fork+exec of true",
        command: "i=0; while [ $i -lt 500 ]; do {bin}/true; i=$((i+1)); done; echo $i",
    },
];

/// `vmm bench linux`'s options.
#[derive(Debug, Args)]
pub struct LinuxArgs {
    /// The Linux bzImage to boot.
    #[arg(long, value_name = "FILE", default_value = "target/debian/vmlinuz")]
    kernel: PathBuf,
    /// The initramfs whose /init prints the readiness line and starts a shell.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/debian/initramfs.cpio"
    )]
    initrd: PathBuf,
    /// The static i386 busybox the initramfs holds, run natively.
    #[arg(long, value_name = "FILE", default_value = "target/debian/busybox")]
    busybox: PathBuf,
    /// The kernel's command line, the same in every environment.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0 quiet")]
    append: String,
    /// Runs in every environment; the table shows medians.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Longest the boot to the shell, or one workload, may take in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    timeout: u64,
    /// Processors of the guest under vmm (`--smp`) and QEMU (`-smp`); the native runs
    /// are whatever the host gives.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    smp: u8,
}

/// Where the workloads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Environment {
    /// The same busybox as a host process.
    Native,
    /// `vmm run --exec MODE`.
    Vmm(&'static str),
    /// `qemu-system-i386 -accel tcg`.
    Qemu,
}

impl Environment {
    fn name(self) -> String {
        match self {
            Self::Native => "native".into(),
            Self::Vmm(mode) => format!("vmm {mode}"),
            Self::Qemu => "QEMU TCG".into(),
        }
    }
}

/// What one run measured, in seconds.
#[derive(Debug, Clone, Default)]
struct Measurement {
    /// Start to the readiness line; none natively (nothing boots).
    ready: Option<f64>,
    /// Each workload's time and last output line, in order; `None` for one that
    /// failed (a guest that fails one is booted again for the next).
    workloads: Vec<Option<(f64, String)>>,
    /// What went wrong, in order.
    failures: Vec<Failure>,
}

/// What went wrong in a run, and the last console lines before it.
#[derive(Debug, Clone)]
struct Failure {
    what: String,
    console: Vec<String>,
}

/// A started environment: its standard input and its output lines with the host time
/// each arrived.
#[derive(Debug)]
struct Session {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<(Instant, String)>,
    start: Instant,
    tail: VecDeque<String>,
    timeout: Duration,
}

impl Session {
    fn start(mut cmd: Command, timeout: Duration) -> Result<Self, Failure> {
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failure(format!("cannot start {cmd:?}: {e}"), Vec::new()))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { return };
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if tx.send((Instant::now(), text)).is_err() {
                        return;
                    }
                }
            });
        }
        let stdin = child.stdin.take().expect("piped stdin");
        Ok(Self {
            child,
            stdin,
            lines,
            start,
            tail: VecDeque::new(),
            timeout,
        })
    }

    /// The host time of the next line equal to `want` (or, with `prefix`, starting
    /// with it), and the lines before it since the last call.
    fn wait_for(&mut self, want: &str, prefix: bool) -> Result<(Instant, Vec<String>), Failure> {
        self.wait_for_within(want, prefix, self.timeout)
    }

    fn wait_for_within(
        &mut self,
        want: &str,
        prefix: bool,
        limit: Duration,
    ) -> Result<(Instant, Vec<String>), Failure> {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.tail.push_back(line.clone());
                    if self.tail.len() > TAIL_LINES {
                        self.tail.pop_front();
                    }
                    if line == want || (prefix && line.starts_with(want)) {
                        return Ok((at, before));
                    }
                    before.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(
                        self.failed(format!("no line {want:?} within {} s", limit.as_secs()))
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map_or("?".into(), |s| s.to_string());
                    return Err(
                        self.failed(format!("it ended ({status}) before printing {want:?}"))
                    );
                }
            }
        }
    }

    fn type_line(&mut self, line: &str) -> Result<(), Failure> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.failed(format!("cannot type {line:?}: {e}")))
    }

    fn failed(&self, what: String) -> Failure {
        failure(what, self.tail.iter().cloned().collect())
    }

    /// Types `last` (`poweroff -f`, `exit`) and waits for the process to end; kills it
    /// if it does not within the time limit.
    fn finish(mut self, last: &str) -> Result<(), Failure> {
        let _ = self.type_line(last);
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(self.failed(format!("`{last}` ended it with {status}")))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(self.failed(format!("`{last}` did not end it")));
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A run that failed half-way leaves no VM behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn failure(what: String, console: Vec<String>) -> Failure {
    Failure { what, console }
}

fn seconds(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64()
}

/// How often the shell is asked for a sign of life until it answers.
const SYNC_EVERY: Duration = Duration::from_secs(2);

/// Waits for the shell to answer (characters the guest receives before its console is
/// open are lost, as on a real UART, so the question is repeated), then runs the
/// workloads `m` has no entry for yet, one after another. A failed workload's entry is
/// `None`.
fn run_workloads(session: &mut Session, bin: &str, m: &mut Measurement) -> Result<(), Failure> {
    let deadline = Instant::now() + session.timeout;
    loop {
        session.type_line("echo bench:sync")?;
        match session.wait_for_within("bench:sync", false, SYNC_EVERY) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
    }
    while let Some(w) = WORKLOADS.get(m.workloads.len()) {
        let command = w.command.replace("{bin}", bin);
        let mut timed = || {
            session.type_line(&format!(
                "echo bench:{0}:begin; {command}; echo bench:{0}:end",
                w.name
            ))?;
            let (begin, _) = session.wait_for(&format!("bench:{}:begin", w.name), false)?;
            let (end, output) = session.wait_for(&format!("bench:{}:end", w.name), false)?;
            let answer = output.last().cloned().unwrap_or_default();
            Ok::<_, Failure>((seconds(begin, end), answer))
        };
        match timed() {
            Ok(figure) => m.workloads.push(Some(figure)),
            Err(f) => {
                m.workloads.push(None);
                return Err(Failure {
                    what: format!("{}: {}", w.name, f.what),
                    console: f.console,
                });
            }
        }
    }
    Ok(())
}

/// One run in `env`: what it measured, up to a failure if one came.
fn measure(env: Environment, args: &LinuxArgs, vmm: &Path) -> Measurement {
    let mut m = Measurement::default();
    if let Err(f) = measure_into(env, args, vmm, &mut m) {
        m.failures.push(f);
    }
    m
}

fn measure_into(
    env: Environment,
    args: &LinuxArgs,
    vmm: &Path,
    m: &mut Measurement,
) -> Result<(), Failure> {
    let timeout = Duration::from_secs(args.timeout);
    if env == Environment::Native {
        let links = applet_links(&args.busybox)?;
        let mut cmd = Command::new(&args.busybox);
        cmd.arg("sh").env("PATH", &links);
        let ran = Session::start(cmd, timeout).and_then(|mut session| {
            run_workloads(&mut session, &links.to_string_lossy(), m)?;
            session.finish("exit")
        });
        let _ = std::fs::remove_dir_all(&links);
        return ran;
    }
    // A guest that fails a workload is booted again for the next one; the boot time is
    // the first boot's.
    loop {
        let cmd = match env {
            Environment::Vmm(mode) => vmm_command(mode, args, vmm),
            _ => qemu_command(args),
        };
        let mut session = Session::start(cmd, timeout)?;
        let (ready, _) = session.wait_for(READY, true)?;
        m.ready.get_or_insert(seconds(session.start, ready));
        let done = m.workloads.len();
        match run_workloads(&mut session, "/bin", m) {
            Ok(()) => return session.finish("poweroff -f"),
            // Not even the shell answered: booting again would not help.
            Err(f) if m.workloads.len() == done => return Err(f),
            Err(f) => m.failures.push(f),
        }
        if m.workloads.len() == WORKLOADS.len() {
            return Ok(());
        }
    }
}

/// `vmm run` in execution mode `mode`, the console on standard input and output.
fn vmm_command(mode: &str, args: &LinuxArgs, vmm: &Path) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("run")
        .arg("--kernel")
        .arg(&args.kernel)
        .arg("--initrd")
        .arg(&args.initrd)
        .arg("--append")
        .arg(&args.append)
        .arg("--mem")
        .arg(format!("{MEM_MIB}M"))
        .args(["--exec", mode])
        .args(["--smp", &args.smp.to_string()]);
    cmd
}

/// QEMU's TCG with the same kernel, initramfs, command line and memory, the serial
/// console on standard input and output.
fn qemu_command(args: &LinuxArgs) -> Command {
    let mut cmd = Command::new(guests::qemu::QEMU);
    cmd.args(["-accel", "tcg", "-m", &MEM_MIB.to_string(), "-kernel"])
        .arg(&args.kernel)
        .arg("-initrd")
        .arg(&args.initrd)
        .arg("-append")
        .arg(&args.append)
        .args(["-serial", "stdio", "-display", "none", "-monitor", "none"])
        .args(["-smp", &args.smp.to_string()])
        .arg("-no-reboot");
    cmd
}

/// A fresh directory of links to `busybox` named after the applets the workloads run,
/// so the native shell finds them as the guest's does in /bin.
fn applet_links(busybox: &Path) -> Result<PathBuf, Failure> {
    let busybox = std::fs::canonicalize(busybox)
        .map_err(|e| failure(format!("busybox {}: {e}", busybox.display()), Vec::new()))?;
    let dir = std::env::temp_dir().join(format!("vmm-bench-linux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let made = std::fs::create_dir_all(&dir).and_then(|()| {
        ["true", "dd", "md5sum", "sh"]
            .iter()
            .try_for_each(|applet| std::os::unix::fs::symlink(&busybox, dir.join(applet)))
    });
    made.map_err(|e| {
        failure(
            format!("cannot link applets in {}: {e}", dir.display()),
            Vec::new(),
        )
    })?;
    Ok(dir)
}

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The figures of one environment: medians over its runs.
#[derive(Debug, Clone)]
struct Column {
    env: Environment,
    figures: Measurement,
}

/// The medians of `runs`: of each figure every run has. The failures are those of the
/// runs.
fn medians(runs: &[Measurement]) -> Measurement {
    let ready = runs
        .iter()
        .map(|m| m.ready)
        .collect::<Option<Vec<_>>>()
        .map(median);
    let workloads = (0..WORKLOADS.len())
        .map(|i| {
            let figures = runs
                .iter()
                .map(|m| m.workloads.get(i).cloned().flatten())
                .collect::<Option<Vec<_>>>()?;
            let times = figures.iter().map(|f| f.0).collect();
            Some((median(times), figures.first()?.1.clone()))
        })
        .collect();
    let failures = runs.iter().flat_map(|m| m.failures.clone()).collect();
    Measurement {
        ready,
        workloads,
        failures,
    }
}

/// Runs every environment `reps` times (an environment that fails is not run again) and
/// prints the table; returns false if any environment failed.
///
/// `vmm` is this monitor's executable; `progress` is told what runs.
pub fn run(args: &LinuxArgs, vmm: &Path, mut progress: impl FnMut(&str)) -> bool {
    let inputs = [
        ("kernel", &args.kernel),
        ("initramfs", &args.initrd),
        ("busybox", &args.busybox),
    ];
    for (what, path) in inputs {
        if !path.is_file() {
            eprintln!(
                "vmm: error: {what} {} is missing: `scripts/setup.sh run` fetches Debian's \
                 kernel and busybox and builds the initramfs",
                path.display()
            );
            return false;
        }
    }
    let mut envs = vec![
        Environment::Native,
        Environment::Vmm("translate"),
        Environment::Vmm("patch"),
    ];
    let qemu = guests::qemu::available();
    if qemu {
        envs.push(Environment::Qemu);
    }
    let mut columns = Vec::new();
    for env in envs {
        let mut runs = Vec::new();
        for rep in 1..=args.reps {
            progress(&format!("{} run {rep} of {}", env.name(), args.reps));
            let m = measure(env, args, vmm);
            let failed = !m.failures.is_empty();
            runs.push(m);
            if failed {
                break;
            }
        }
        columns.push(Column {
            env,
            figures: medians(&runs),
        });
    }
    let ok = check_answers(&mut columns);
    print!("{}", render(args, &columns, qemu));
    ok
}

/// Takes away every figure of a workload whose output differs from the native one,
/// with a failure that says so: a figure counts only for the same work done.
fn check_answers(columns: &mut [Column]) -> bool {
    let native = columns
        .iter()
        .find(|c| c.env == Environment::Native)
        .map(|c| c.figures.workloads.clone())
        .unwrap_or_default();
    for column in columns.iter_mut() {
        let m = &mut column.figures;
        for (i, (mine, theirs)) in m.workloads.iter_mut().zip(&native).enumerate() {
            let (Some(g), Some(n)) = (mine.as_ref(), theirs) else {
                continue;
            };
            if g.1 != n.1 {
                let what = format!(
                    "{} printed {:?}, natively {:?}",
                    WORKLOADS[i].name, g.1, n.1
                );
                m.failures.push(failure(what, Vec::new()));
                *mine = None;
            }
        }
    }
    columns.iter().all(|c| c.figures.failures.is_empty())
}

/// The table: seconds per environment, ratios of each monitor mode to native and to
/// QEMU, then what went wrong. A figure that failed reads
/// `failed`; one that does not apply (native boot), `-`.
fn render(args: &LinuxArgs, columns: &[Column], qemu: bool) -> String {
    let mut out = format!(
        "{} with {}, -m {MEM_MIB}, append \"{}\"\n",
        args.kernel.display(),
        args.initrd.display(),
        args.append
    );
    out.push_str(&format!(
        "seconds from host-side timestamps of console lines, median of {}\n",
        args.reps
    ));
    if !qemu {
        out.push_str(&format!(
            "{} is not installed: no QEMU column\n",
            guests::qemu::QEMU
        ));
    }
    // Row 0 is the boot, rows 1.. the workloads.
    let figure = |c: &Column, row: usize| -> Option<f64> {
        match row {
            0 => c.figures.ready,
            _ => c.figures.workloads.get(row - 1)?.as_ref().map(|w| w.0),
        }
    };
    let cell = |c: &Column, row: usize| match figure(c, row) {
        Some(s) => format!("{s:.3}"),
        None if row == 0 && c.env == Environment::Native => "-".into(),
        None => "failed".into(),
    };
    let find = |env: Environment| columns.iter().find(|c| c.env == env);
    let (native, qemu_column) = (find(Environment::Native), find(Environment::Qemu));
    let modes: Vec<&Column> = columns
        .iter()
        .filter(|c| matches!(c.env, Environment::Vmm(_)))
        .collect();
    let mut header = vec![String::new()];
    header.extend(columns.iter().map(|c| c.env.name()));
    for c in &modes {
        let Environment::Vmm(mode) = c.env else {
            continue;
        };
        header.push(format!("{mode}/native"));
        if qemu_column.is_some() {
            header.push(format!("{mode}/QEMU"));
        }
    }
    let mut rows = vec![header];
    let labels = std::iter::once("start to shell ready".to_string())
        .chain(WORKLOADS.iter().map(|w| format!("{} {}", w.name, w.label)));
    for (row, label) in labels.enumerate() {
        let mut cells = vec![label];
        cells.extend(columns.iter().map(|c| cell(c, row)));
        for c in &modes {
            let ratio =
                |other: Option<&Column>| match (figure(c, row), other.and_then(|o| figure(o, row)))
                {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
            cells.push(ratio(native));
            if qemu_column.is_some() {
                cells.push(ratio(qemu_column));
            }
        }
        rows.push(cells);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = format!("{:<w$}", r[0], w = widths[0]);
        for (text, w) in r.iter().zip(&widths).skip(1) {
            line.push_str(&format!("  {text:>w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for c in columns {
        for f in &c.figures.failures {
            out.push_str(&format!("{} failed: {}\n", c.env.name(), f.what));
            for line in &f.console {
                out.push_str(&format!("  | {line}\n"));
            }
        }
    }
    out
}
