//! The service types of the kernel policy.

use std::fmt;
use std::str::FromStr;

/// A type of OS service, after the patent's list. The lower-case names are stable: policy
/// files and statistics use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    /// Console output and input (`tty`).
    Tty,
    /// Sector storage (`block`).
    Block,
    /// Wall and monotonic time (`clock`).
    Clock,
    /// What the CPU does while the guest idles (`idle`).
    Idle,
    /// Whether a proxied call is allowed, and its audit (`security`).
    Security,
    /// Memory management (`memory`); reserved, no implementation yet.
    Memory,
    /// I/O scheduling (`io_scheduling`); reserved, no implementation yet.
    IoScheduling,
    /// Interrupt handling (`interrupts`); reserved, no implementation yet.
    Interrupts,
    /// File system (`filesystem`); reserved, no implementation yet.
    Filesystem,
}

impl ServiceType {
    /// Every type, in a fixed order.
    pub const ALL: [ServiceType; 9] = [
        ServiceType::Tty,
        ServiceType::Block,
        ServiceType::Clock,
        ServiceType::Idle,
        ServiceType::Security,
        ServiceType::Memory,
        ServiceType::IoScheduling,
        ServiceType::Interrupts,
        ServiceType::Filesystem,
    ];

    /// The stable lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            ServiceType::Tty => "tty",
            ServiceType::Block => "block",
            ServiceType::Clock => "clock",
            ServiceType::Idle => "idle",
            ServiceType::Security => "security",
            ServiceType::Memory => "memory",
            ServiceType::IoScheduling => "io_scheduling",
            ServiceType::Interrupts => "interrupts",
            ServiceType::Filesystem => "filesystem",
        }
    }

    /// Whether the type is only reserved (named by the patent, no trait here yet).
    pub fn is_reserved(self) -> bool {
        matches!(
            self,
            ServiceType::Memory
                | ServiceType::IoScheduling
                | ServiceType::Interrupts
                | ServiceType::Filesystem
        )
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`ServiceType`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service type `{name}` (expected one of: tty, block, clock, idle, security, memory, io_scheduling, interrupts, filesystem)")]
pub struct UnknownServiceType {
    /// The name given.
    pub name: String,
}

impl FromStr for ServiceType {
    type Err = UnknownServiceType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownServiceType { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ServiceType::ALL {
            assert_eq!(t.name().parse::<ServiceType>(), Ok(t));
        }
        assert_eq!(
            "Tty".parse::<ServiceType>(),
            Err(UnknownServiceType { name: "Tty".into() })
        );
    }
}
