//! `vmm`: the monitor's command line.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vmm::addr::GuestLinear;
use vmm::scan::{self, ScanError, ScanOptions};

/// Exit status for a file that could not be scanned.
const EXIT_INPUT_ERROR: u8 = 1;
/// Exit status for a command line that cannot work, the same clap uses.
const EXIT_USAGE_ERROR: u8 = 2;

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
    let cli = Cli::parse();
    match cli.command {
        Command::Scan(args) => scan_command(&args),
    }
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
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
