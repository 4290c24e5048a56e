//! Exit accounting for `--stats`: exits per reason and per trap site, so performance work
//! starts from a profile (which sites are hot, of which class).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::addr::GuestLinear;

/// Why the guest left native execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// A trap byte the rewriter planted (the original instruction was emulated).
    RewriteTrap,
    /// A privileged instruction that faulted natively (#GP) and was emulated.
    Privileged,
    /// An I/O instruction (a privileged instruction routed to the port bus).
    PortIo,
    /// CPUID, trapped through CPUID faulting.
    Cpuid,
    /// `INT n` through a guest IDT gate.
    SoftwareInterrupt,
    /// `INT 0x80` caught by the seccomp backstop.
    SyscallTrap,
    /// A first fetch from a page: scanned and made executable.
    CodeFetch,
    /// A write to a scanned code page: reverted and made writable.
    CodeWrite,
    /// A page fault the guest gets (with paging off: an access outside RAM).
    GuestPageFault,
    /// Another exception reflected into the guest (#DE, #UD, #BP, #GP ...).
    GuestException,
    /// The host timer or a kick.
    Async,
    /// An access emulated by the monitor (page 0, unassigned physical memory, a read of
    /// patched code).
    EmulatedAccess,
    /// A host page fault the guest's page tables allow: a shadow mapping was filled.
    HiddenPageFault,
    /// A guest write to one of its page-table pages, applied by the monitor.
    TableWrite,
    /// Translate mode: a block ended in an exit that is not chained yet (a direct
    /// branch or fall-through) or an indirect branch whose target was not in the lookup
    /// table; the target's block is found or translated.
    TranslationExit,
}

impl ExitReason {
    /// The name `--stats` prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::RewriteTrap => "rewrite_trap",
            Self::Privileged => "privileged",
            Self::PortIo => "port_io",
            Self::Cpuid => "cpuid",
            Self::SoftwareInterrupt => "software_interrupt",
            Self::SyscallTrap => "syscall_trap",
            Self::CodeFetch => "code_fetch",
            Self::CodeWrite => "code_write",
            Self::GuestPageFault => "guest_page_fault",
            Self::GuestException => "guest_exception",
            Self::Async => "async",
            Self::EmulatedAccess => "emulated_access",
            Self::HiddenPageFault => "hidden_page_fault",
            Self::TableWrite => "table_write",
            Self::TranslationExit => "translation_exit",
        }
    }
}

/// One trap site's count.
#[derive(Clone, Debug, Serialize)]
pub struct SiteCount {
    /// Guest address of the instruction.
    pub address: String,
    /// Rewriter class of the instruction.
    pub class: &'static str,
    /// Exits taken there.
    pub count: u64,
}

/// Counters of one VM run.
#[derive(Debug, Default)]
pub struct Stats {
    exits: BTreeMap<ExitReason, u64>,
    sites: HashMap<GuestLinear, (&'static str, u64)>,
}

impl Stats {
    /// Counts one exit.
    pub fn exit(&mut self, reason: ExitReason) {
        *self.exits.entry(reason).or_default() += 1;
    }

    /// Counts one exit at a site of the given class.
    pub fn site(&mut self, address: GuestLinear, class: &'static str) {
        self.sites.entry(address).or_insert((class, 0)).1 += 1;
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.exits.values().sum()
    }

    /// Exits per reason.
    pub fn exits(&self) -> &BTreeMap<ExitReason, u64> {
        &self.exits
    }

    /// The `n` sites with the most exits, most first (ties by address).
    pub fn top_sites(&self, n: usize) -> Vec<SiteCount> {
        let mut v: Vec<_> = self.sites.iter().collect();
        v.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(addr, (class, count))| SiteCount {
                address: addr.to_string(),
                class,
                count: *count,
            })
            .collect()
    }

    /// The exit table `--stats` prints, with extra named counters appended.
    pub fn render(&self, extra: &[(&str, u64)], top: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "exits by reason");
        for (reason, count) in &self.exits {
            let _ = writeln!(s, "  {:<28}{count:>12}", reason.name());
        }
        let _ = writeln!(s, "  {:<28}{:>12}", "total", self.total());
        if !extra.is_empty() {
            let _ = writeln!(s, "counters");
            for (name, value) in extra {
                let _ = writeln!(s, "  {name:<28}{value:>12}");
            }
        }
        let sites = self.top_sites(top);
        if !sites.is_empty() {
            let _ = writeln!(s, "top trap sites");
            for site in sites {
                let _ = writeln!(
                    s,
                    "  {}  {:<16}{:>12}",
                    site.address, site.class, site.count
                );
            }
        }
        s
    }

    /// The same as JSON.
    pub fn to_json(&self, extra: &[(&str, u64)], top: usize) -> serde_json::Value {
        let exits: BTreeMap<&str, u64> = self.exits.iter().map(|(r, c)| (r.name(), *c)).collect();
        let counters: BTreeMap<&str, u64> = extra.iter().copied().collect();
        serde_json::json!({
            "exits": exits,
            "total_exits": self.total(),
            "counters": counters,
            "top_sites": self.top_sites(top),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ranks_sites() {
        let mut s = Stats::default();
        for _ in 0..3 {
            s.exit(ExitReason::RewriteTrap);
            s.site(GuestLinear(0x1000), "pushf");
        }
        s.exit(ExitReason::Privileged);
        s.site(GuestLinear(0x2000), "cli");
        assert_eq!(s.total(), 4);
        let top = s.top_sites(1);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].address, "0x00001000");
        assert_eq!(top[0].count, 3);
        let text = s.render(&[("pages_scanned", 2)], 10);
        assert!(text.contains("rewrite_trap"));
        assert!(text.contains("pages_scanned"));
        let json = s.to_json(&[], 10);
        assert_eq!(json["exits"]["privileged"], 4 - 3);
    }
}
