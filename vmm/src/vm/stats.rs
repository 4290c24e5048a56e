//! Exit accounting for `--stats`: exits per reason, per mechanism and per trap site, so
//! performance work starts from a profile (which sites are hot, of which class, and what
//! each exit cost the host: a gate exit stays in the process, a signal exit goes through
//! the host kernel twice).

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::addr::GuestLinear;
use crate::hostcpu::{HostExit, HostExitKind};

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
    /// A guest write to a descriptor table the inline segment loads rely on: their
    /// records go and the write runs natively.
    DescriptorWrite,
    /// Translate mode: a block ended in an exit that is not chained yet (a direct
    /// branch or fall-through) or an indirect branch whose target was not in the lookup
    /// table; the target's block is found or translated.
    TranslationExit,
}

impl ExitReason {
    /// Every reason, in declaration order (the order `--stats` prints them).
    pub const ALL: [ExitReason; 16] = [
        Self::RewriteTrap,
        Self::Privileged,
        Self::PortIo,
        Self::Cpuid,
        Self::SoftwareInterrupt,
        Self::SyscallTrap,
        Self::CodeFetch,
        Self::CodeWrite,
        Self::GuestPageFault,
        Self::GuestException,
        Self::Async,
        Self::EmulatedAccess,
        Self::HiddenPageFault,
        Self::TableWrite,
        Self::DescriptorWrite,
        Self::TranslationExit,
    ];

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
            Self::DescriptorWrite => "descriptor_write",
            Self::TranslationExit => "translation_exit",
        }
    }
}

/// How an exit reached the monitor: what it cost on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitMechanism {
    /// Translated code left through the gate: a far jump to the monitor, no host kernel.
    Gate,
    /// A host signal: a fault or trap in guest code (the trap bytes of patch mode and of
    /// `VMM_TC_GATE=trap` among them), the vCPU timer or a kick, a seccomp SIGSYS.
    Signal,
    /// No host exit of its own: an exit the monitor found while preparing an entry (an
    /// instruction fetch that faults, an entry point it serves before the code runs), or a
    /// second exit one host exit raised (a data breakpoint after a single step).
    NoHostExit,
}

impl ExitMechanism {
    /// Every mechanism, in the order `--stats` prints them.
    pub const ALL: [ExitMechanism; 3] = [Self::Gate, Self::Signal, Self::NoHostExit];

    /// The mechanism of a host exit. A timer signal that arrived while the monitor ran
    /// ends the next entry before the guest runs, and counts as the signal it was; an
    /// entry the host refused is no exit.
    pub fn of(exit: &HostExit) -> Self {
        match exit.kind {
            HostExitKind::Gate => Self::Gate,
            HostExitKind::BadEntry(_) => Self::NoHostExit,
            HostExitKind::Fault { .. }
            | HostExitKind::PageFault { .. }
            | HostExitKind::Syscall { .. }
            | HostExitKind::Async { .. }
            | HostExitKind::Escape { .. }
            | HostExitKind::Signal => Self::Signal,
        }
    }

    /// The name `--stats` prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gate => "gate",
            Self::Signal => "signal",
            Self::NoHostExit => "none",
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

/// Counters of one VM run. Every exit counts here, so counting stays cheap: arrays
/// indexed by reason and mechanism, and sites hashed by address and the class name's
/// pointer (class names are static strings) rather than by the name's bytes.
#[derive(Debug, Default)]
pub struct Stats {
    /// By `ExitReason as usize`.
    exits: [u64; ExitReason::ALL.len()],
    /// By `ExitMechanism as usize`.
    mechanisms: [u64; ExitMechanism::ALL.len()],
    /// The mechanism of the host exit being handled, until an exit is counted for it.
    arrived: Option<ExitMechanism>,
    /// Exits by site and class (one address may exit for several reasons). Two copies
    /// of one name at different addresses make two entries, merged when read.
    sites: HashMap<(GuestLinear, usize), (&'static str, u64)>,
}

impl Stats {
    /// Notes how the host exit about to be handled arrived: the first exit counted after
    /// it is put down to its mechanism.
    pub fn host_exit(&mut self, exit: &HostExit) {
        self.arrived = Some(ExitMechanism::of(exit));
    }

    /// Counts one exit, under the mechanism of the host exit that brought it
    /// ([`Stats::host_exit`]); an exit without one of its own counts as
    /// [`ExitMechanism::NoHostExit`]. The mechanisms therefore add up to the total.
    pub fn exit(&mut self, reason: ExitReason) {
        if let Some(count) = self.exits.get_mut(reason as usize) {
            *count += 1;
        }
        let mechanism = self.arrived.take().unwrap_or(ExitMechanism::NoHostExit);
        if let Some(count) = self.mechanisms.get_mut(mechanism as usize) {
            *count += 1;
        }
    }

    /// Counts one exit at a site of the given class.
    pub fn site(&mut self, address: GuestLinear, class: &'static str) {
        let key = (address, class.as_ptr() as usize);
        self.sites.entry(key).or_insert((class, 0)).1 += 1;
    }

    /// Total exits.
    pub fn total(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// Exits per reason, for the reasons that had any.
    pub fn exits(&self) -> BTreeMap<ExitReason, u64> {
        ExitReason::ALL
            .into_iter()
            .map(|r| (r, self.exits.get(r as usize).copied().unwrap_or(0)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// Exits through `mechanism`.
    pub fn by_mechanism(&self, mechanism: ExitMechanism) -> u64 {
        self.mechanisms
            .get(mechanism as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The `n` sites with the most exits, most first (ties by address).
    pub fn top_sites(&self, n: usize) -> Vec<SiteCount> {
        let mut all: HashMap<(GuestLinear, &'static str), u64> = HashMap::default();
        for ((addr, _), (class, count)) in &self.sites {
            *all.entry((*addr, *class)).or_default() += count;
        }
        let mut v: Vec<_> = all.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(n)
            .map(|((addr, class), count)| SiteCount {
                address: addr.to_string(),
                class,
                count,
            })
            .collect()
    }

    /// The exit table `--stats` prints, with extra named counters appended.
    pub fn render(&self, extra: &[(&str, u64)], top: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "exits by reason");
        for (reason, count) in self.exits() {
            let _ = writeln!(s, "  {:<28}{count:>12}", reason.name());
        }
        let _ = writeln!(s, "  {:<28}{:>12}", "total", self.total());
        let _ = writeln!(s, "exits by mechanism");
        for mechanism in ExitMechanism::ALL {
            let count = self.by_mechanism(mechanism);
            let _ = writeln!(s, "  {:<28}{count:>12}", mechanism.name());
        }
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
        let exits: BTreeMap<&str, u64> = self
            .exits()
            .into_iter()
            .map(|(r, c)| (r.name(), c))
            .collect();
        let mechanisms: BTreeMap<&str, u64> = ExitMechanism::ALL
            .iter()
            .map(|m| (m.name(), self.by_mechanism(*m)))
            .collect();
        let counters: BTreeMap<&str, u64> = extra.iter().copied().collect();
        serde_json::json!({
            "exits": exits,
            "exits_by_mechanism": mechanisms,
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

    #[test]
    fn every_reason_counts_under_its_own_name() {
        let mut s = Stats::default();
        for (i, reason) in ExitReason::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                s.exit(reason);
            }
        }
        let exits = s.exits();
        assert_eq!(exits.len(), ExitReason::ALL.len());
        for (i, reason) in ExitReason::ALL.into_iter().enumerate() {
            assert_eq!(exits[&reason], i as u64 + 1, "{}", reason.name());
        }
        // Names are unique, so the JSON keeps every reason.
        let json = s.to_json(&[], 0);
        assert_eq!(
            json["exits"].as_object().map(|o| o.len()),
            Some(ExitReason::ALL.len())
        );
        assert_eq!(json["exits"]["translation_exit"], 16);
    }

    #[test]
    fn one_site_and_class_is_one_entry_whatever_copy_of_the_name() {
        let mut s = Stats::default();
        // The same name from another allocation: the bytes decide, not the pointer.
        let other: &'static str = String::from("pushf").leak();
        s.site(GuestLinear(0x1000), "pushf");
        s.site(GuestLinear(0x1000), other);
        s.site(GuestLinear(0x1000), "popf");
        let top = s.top_sites(10);
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].class, top[0].count), ("pushf", 2));
        assert_eq!((top[1].class, top[1].count), ("popf", 1));
    }

    fn host_exit(kind: HostExitKind, signo: i32) -> HostExit {
        HostExit::not_entered(kind, signo)
    }

    #[test]
    fn each_exit_is_put_down_to_the_host_exit_that_brought_it() {
        let mut s = Stats::default();
        let gate = host_exit(HostExitKind::Gate, 0);
        let trap = host_exit(
            HostExitKind::Fault {
                vector: 3,
                error_code: 0,
            },
            libc::SIGTRAP,
        );
        let timer = host_exit(
            HostExitKind::Async {
                signo: libc::SIGALRM,
            },
            libc::SIGALRM,
        );
        s.host_exit(&gate);
        s.exit(ExitReason::PortIo);
        s.host_exit(&gate);
        s.exit(ExitReason::TranslationExit);
        // The #DB of a data breakpoint after the same gate exit: no host exit of its own.
        s.exit(ExitReason::GuestException);
        s.host_exit(&trap);
        s.exit(ExitReason::RewriteTrap);
        s.host_exit(&timer);
        s.exit(ExitReason::Async);
        // A fetch fault found while preparing the next entry.
        s.exit(ExitReason::GuestPageFault);
        // A host exit that counted nothing leaves nothing behind for the next one.
        s.host_exit(&trap);
        s.host_exit(&gate);
        s.exit(ExitReason::PortIo);
        assert_eq!(s.by_mechanism(ExitMechanism::Gate), 3);
        assert_eq!(s.by_mechanism(ExitMechanism::Signal), 2);
        assert_eq!(s.by_mechanism(ExitMechanism::NoHostExit), 2);
        assert_eq!(s.total(), 7);
        let refused = host_exit(
            HostExitKind::BadEntry(crate::hostcpu::BadEntry::Faulted {
                vector: 13,
                error_code: 0,
            }),
            0,
        );
        assert_eq!(ExitMechanism::of(&refused), ExitMechanism::NoHostExit);

        let text = s.render(&[], 10);
        let after = text
            .split("exits by mechanism\n")
            .nth(1)
            .expect("a mechanism table");
        let rows: Vec<Vec<&str>> = after
            .lines()
            .take(3)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [["gate", "3"], ["signal", "2"], ["none", "2"]],
            "{text}"
        );
        let json = s.to_json(&[], 10);
        assert_eq!(json["exits_by_mechanism"]["gate"], 3);
        assert_eq!(json["exits_by_mechanism"]["signal"], 2);
        assert_eq!(json["exits_by_mechanism"]["none"], 2);
        assert_eq!(json["total_exits"], 7);
    }
}
