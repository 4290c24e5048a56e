//! Parser for the result lines a guest prints on its serial port (lib/report.c):
//! `PASS: prefix: name`, `FAIL: …`, `SKIP: …`, then
//! `SUMMARY: N tests, N unexpected failures, N skipped` and `N passed, N failed`.

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The check held.
    Pass,
    /// The check did not hold.
    Fail,
    /// The check could not run in this configuration.
    Skip,
}

/// Everything a guest reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each check in output order: full name (with prefixes) and outcome.
    pub checks: Vec<(String, Outcome)>,
    /// Number of `PASS:` lines.
    pub passed: usize,
    /// Number of `FAIL:` lines.
    pub failed: usize,
    /// Number of `SKIP:` lines.
    pub skipped: usize,
    /// The guest's own closing line `N passed, N failed`, if it got that far.
    pub closing: Option<(usize, usize)>,
}

impl Report {
    /// True when the guest finished (printed its closing line), that line agrees with the
    /// check lines, and nothing failed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.closing == Some((self.passed, 0))
    }
}

fn closing_line(line: &str) -> Option<(usize, usize)> {
    let (passed, failed) = line.split_once(" passed, ")?;
    let failed = failed.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Parses a guest's serial output. Lines that are not result lines (banners, INFO lines,
/// firmware noise) are ignored; `\r\n` line ends are accepted.
pub fn parse_report(output: &str) -> Report {
    let mut r = Report::default();
    for line in output.lines().map(|l| l.trim_end_matches('\r')) {
        let (outcome, name) = if let Some(n) = line.strip_prefix("PASS: ") {
            r.passed += 1;
            (Outcome::Pass, n)
        } else if let Some(n) = line.strip_prefix("FAIL: ") {
            r.failed += 1;
            (Outcome::Fail, n)
        } else if let Some(n) = line.strip_prefix("SKIP: ") {
            r.skipped += 1;
            (Outcome::Skip, n)
        } else {
            if let Some(c) = closing_line(line) {
                r.closing = Some(c);
            }
            continue;
        };
        r.checks.push((name.to_string(), outcome));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_prefixes_and_closing_line() {
        let out = "demo banner\r\nPASS: eflags: pushf IF=0 after cli\r\n\
                   FAIL: cr0: TS set\r\nSKIP: #PF (paging is off)\r\nINFO: x\r\n\
                   SUMMARY: 3 tests, 1 unexpected failures, 1 skipped\r\n1 passed, 1 failed\r\n";
        let r = parse_report(out);
        assert_eq!(
            r.checks,
            vec![
                ("eflags: pushf IF=0 after cli".to_string(), Outcome::Pass),
                ("cr0: TS set".to_string(), Outcome::Fail),
                ("#PF (paging is off)".to_string(), Outcome::Skip),
            ]
        );
        assert_eq!((r.passed, r.failed, r.skipped), (1, 1, 1));
        assert_eq!(r.closing, Some((1, 1)));
        assert!(!r.all_passed());
    }

    #[test]
    fn all_passed_needs_the_closing_line_to_agree() {
        assert!(parse_report("PASS: a\nPASS: b\n2 passed, 0 failed\n").all_passed());
        // A guest that died before its summary did not pass, whatever it printed before.
        assert!(!parse_report("PASS: a\n").all_passed());
        // A closing line that disagrees with the check lines means lost or forged output.
        assert!(!parse_report("PASS: a\n2 passed, 0 failed\n").all_passed());
        assert!(!parse_report("").all_passed());
    }

    #[test]
    fn result_words_only_count_at_line_start() {
        let r = parse_report("note: PASS: not a check\nxPASS: no\n3 passed, 0 failed extra\n");
        assert!(r.checks.is_empty());
        assert_eq!(r.closing, None);
    }
}
