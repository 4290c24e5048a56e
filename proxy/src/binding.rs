//! Entry-point bindings: which guest function the proxy takes over, and how its
//! arguments and return value are laid out.

use std::fmt;
use std::str::FromStr;

use services::ServiceType;

/// Most 32-bit arguments a binding may declare.
pub const MAX_ARGS: u32 = 16;
/// Largest guest buffer a binding may allow, in bytes: it bounds what one guest call can
/// make the monitor allocate.
pub const MAX_BUFFER_BYTES: u32 = 16 << 20;
/// Timeout argument value meaning "no deadline" for `idle.wait`.
pub const NO_DEADLINE: u32 = u32::MAX;

/// Where a bound entry point is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPoint {
    /// A symbol of the guest kernel's ELF symbol table.
    Symbol(String),
    /// A guest linear address.
    Address(u32),
}

impl fmt::Display for EntryPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryPoint::Symbol(s) => f.write_str(s),
            EntryPoint::Address(a) => write!(f, "{a:#010x}"),
        }
    }
}

/// How the bound function takes its arguments and who removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// All arguments on the stack after the return address; the caller pops them.
    Cdecl,
    /// GCC `regparm(3)` as Linux i386 uses it: EAX, EDX, ECX, then the stack; the
    /// caller pops the stack arguments.
    Regparm3,
    /// All arguments on the stack; the callee pops them (`ret n`).
    Stdcall,
}

impl Convention {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Convention::Cdecl => "cdecl",
            Convention::Regparm3 => "regparm3",
            Convention::Stdcall => "stdcall",
        }
    }
}

impl FromStr for Convention {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "cdecl" => Ok(Convention::Cdecl),
            "regparm3" => Ok(Convention::Regparm3),
            "stdcall" => Ok(Convention::Stdcall),
            _ => Err(()),
        }
    }
}

/// Whether the service reads a guest buffer or fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest → service (writes).
    In,
    /// Service → guest (reads).
    Out,
}

/// An operation a bound entry point performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Write a guest buffer to the console.
    TtyWrite,
    /// Read pending console input into a guest buffer.
    TtyRead,
    /// Read sectors into a guest buffer.
    BlockRead,
    /// Write sectors from a guest buffer.
    BlockWrite,
    /// Disk capacity in sectors.
    BlockCapacity,
    /// Make disk writes durable.
    BlockFlush,
    /// Wall time in ns since the epoch.
    ClockWall,
    /// Monotonic time in ns.
    ClockMonotonic,
    /// Idle until an event or a timeout (µs; `NO_DEADLINE` for none).
    IdleWait,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 9] = [
        Operation::TtyWrite,
        Operation::TtyRead,
        Operation::BlockRead,
        Operation::BlockWrite,
        Operation::BlockCapacity,
        Operation::BlockFlush,
        Operation::ClockWall,
        Operation::ClockMonotonic,
        Operation::IdleWait,
    ];

    /// The name used in policy files and by the security service.
    pub fn name(self) -> &'static str {
        match self {
            Operation::TtyWrite => "tty.write",
            Operation::TtyRead => "tty.read",
            Operation::BlockRead => "block.read",
            Operation::BlockWrite => "block.write",
            Operation::BlockCapacity => "block.capacity",
            Operation::BlockFlush => "block.flush",
            Operation::ClockWall => "clock.wall",
            Operation::ClockMonotonic => "clock.monotonic",
            Operation::IdleWait => "idle.wait",
        }
    }

    /// The service type that performs it.
    pub fn service_type(self) -> ServiceType {
        match self {
            Operation::TtyWrite | Operation::TtyRead => ServiceType::Tty,
            Operation::BlockRead
            | Operation::BlockWrite
            | Operation::BlockCapacity
            | Operation::BlockFlush => ServiceType::Block,
            Operation::ClockWall | Operation::ClockMonotonic => ServiceType::Clock,
            Operation::IdleWait => ServiceType::Idle,
        }
    }

    /// The guest buffer it needs, if any.
    pub fn buffer(self) -> Option<Direction> {
        match self {
            Operation::TtyWrite | Operation::BlockWrite => Some(Direction::In),
            Operation::TtyRead | Operation::BlockRead => Some(Direction::Out),
            _ => None,
        }
    }

    /// Whether it needs a sector-number argument.
    pub fn needs_sector(self) -> bool {
        matches!(self, Operation::BlockRead | Operation::BlockWrite)
    }

    /// Whether it may take a timeout argument.
    pub fn takes_timeout(self) -> bool {
        self == Operation::IdleWait
    }

    /// The return conventions that make sense for it; the first is the default.
    pub fn returns(self) -> &'static [Returns] {
        match self {
            Operation::TtyWrite | Operation::TtyRead => &[Returns::Count, Returns::Status],
            Operation::BlockRead | Operation::BlockWrite => &[Returns::Status, Returns::Count],
            Operation::BlockCapacity => &[Returns::Value, Returns::Value64],
            Operation::ClockWall | Operation::ClockMonotonic => &[Returns::Value64, Returns::Value],
            Operation::BlockFlush => &[Returns::Status],
            Operation::IdleWait => &[Returns::Status, Returns::Value],
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Operation {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Operation::ALL.into_iter().find(|o| o.name() == s).ok_or(())
    }
}

/// What the bound function returns in EAX (and EDX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    /// 0 on success, the binding's error value on failure.
    Status,
    /// Units done: bytes for consoles, the buffer's length unit for disks.
    Count,
    /// The operation's value, low 32 bits in EAX (`idle.wait`: 0 woken by an event,
    /// 1 by the deadline).
    Value,
    /// The operation's 64-bit value in EDX:EAX, as GCC returns `long long`.
    Value64,
}

impl Returns {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Returns::Status => "status",
            Returns::Count => "count",
            Returns::Value => "value",
            Returns::Value64 => "value64",
        }
    }
}

impl FromStr for Returns {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        [
            Returns::Status,
            Returns::Count,
            Returns::Value,
            Returns::Value64,
        ]
        .into_iter()
        .find(|r| r.name() == s)
        .ok_or(())
    }
}

/// The unit a buffer's length argument counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenUnit {
    /// Bytes.
    Bytes,
    /// 512-byte sectors.
    Sectors,
}

/// A guest buffer passed as a (pointer, length) pair of arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferArg {
    /// Index of the pointer argument.
    pub ptr: u32,
    /// Index of the length argument.
    pub len: u32,
    /// Largest buffer allowed, in bytes; a longer one fails the call.
    pub max_bytes: u32,
    /// What the length counts.
    pub unit: LenUnit,
}

/// One bound guest OS-service entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Where the function is.
    pub entry: EntryPoint,
    /// What it does.
    pub op: Operation,
    /// How it takes arguments.
    pub convention: Convention,
    /// How many 32-bit arguments it takes.
    pub args: u32,
    /// Index of the sector argument (disk operations).
    pub sector_arg: Option<u32>,
    /// Index of the timeout argument (`idle.wait`).
    pub timeout_arg: Option<u32>,
    /// The guest buffer, for operations that move bytes.
    pub buffer: Option<BufferArg>,
    /// What it returns.
    pub returns: Returns,
    /// The value returned in EAX when the call fails (bad argument, denied, service
    /// error), e.g. `-1` or `-EIO` as the function itself would.
    pub error_return: u32,
    /// Line of the binding in its policy file, for diagnostics.
    pub line: usize,
}
