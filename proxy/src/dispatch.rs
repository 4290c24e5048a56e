//! Serving one call to a bound entry point: arguments in, service call, result out.
//!
//! Everything here is a function of the binding, the guest state read through
//! [`GuestAccess`] and the services: the engine applies the [`ProxyOutcome`] (EAX, EDX,
//! ESP, EIP) and re-enters the guest.

use std::time::Duration;

use services::{
    AuditRecord, CallInfo, Decision, IdleWake, ServiceError, ServiceHandle, ServiceType,
    SECTOR_SIZE,
};

use crate::binding::{
    Binding, Convention, Direction, LenUnit, Operation, Returns, MAX_ARGS, NO_DEADLINE,
};
use crate::guest::{AccessError, GuestAccess, Reg};
use crate::resolve::{KernelProxy, ServeError, ServedBy};

/// Registers regparm(3) passes the first three arguments in.
const REGPARM_REGS: [Reg; 3] = [Reg::Eax, Reg::Edx, Reg::Ecx];
/// Bytes of the return address on the stack.
const RET_ADDR_BYTES: u32 = 4;

/// A guest call whose own arguments are wrong: the call fails with the binding's error
/// value, as the real function would have refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// A stack argument could not be read.
    #[error("argument {index} cannot be read: {error}")]
    Unreadable {
        /// Which argument.
        index: u32,
        /// Why.
        error: AccessError,
    },
    /// The buffer is longer than the binding allows.
    #[error("buffer of {bytes} bytes exceeds the binding's maximum of {max}")]
    TooLong {
        /// The length asked for, in bytes.
        bytes: u64,
        /// The maximum.
        max: u32,
    },
    /// A disk buffer that is not whole sectors.
    #[error("buffer of {bytes} bytes is not whole 512-byte sectors")]
    NotWholeSectors {
        /// The length asked for.
        bytes: u64,
    },
    /// The buffer is not accessible to the caller.
    #[error("buffer {ptr:#010x}+{len:#x}: {error}")]
    GuestMemory {
        /// The pointer argument.
        ptr: u32,
        /// The length in bytes.
        len: u32,
        /// Why.
        error: AccessError,
    },
}

/// How a proxied call ended.
#[derive(Debug)]
pub enum CallStatus {
    /// The service performed the call.
    Done,
    /// The security service refused it.
    Denied {
        /// Why.
        reason: String,
    },
    /// The guest passed bad arguments.
    BadArgument(ArgError),
    /// The service failed the request.
    Service(ServiceError),
    /// No service of the type could be accessed.
    NoService {
        /// The type.
        ty: ServiceType,
        /// Why, in words.
        reason: String,
    },
}

/// What the engine does to finish a proxied call: set EAX (and EDX), pop the return
/// address (and, for callee-pops conventions, the arguments) by adding `esp_adjust` to
/// ESP, and continue at `return_to`, as the function's own `ret` would have.
#[derive(Debug)]
pub struct ProxyOutcome {
    /// The value for EAX.
    pub eax: u32,
    /// The value for EDX, when the binding returns 64 bits.
    pub edx: Option<u32>,
    /// The caller's return address, read from the stack.
    pub return_to: u32,
    /// Bytes to add to ESP.
    pub esp_adjust: u32,
    /// How the call ended.
    pub status: CallStatus,
    /// The service that performed it, if one did.
    pub served_by: Option<ServedBy>,
}

/// A call the proxy cannot return from, because the return address itself cannot be
/// read: the engine raises the fault the guest's `ret` would have met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("return address at ESP {esp:#010x} cannot be read: {error}")]
pub struct DispatchFault {
    /// ESP at the call.
    pub esp: u32,
    /// Why it cannot be read.
    pub error: AccessError,
}

/// The result of the operation itself, before the return convention applies.
#[derive(Debug, Clone, Copy)]
struct OpResult {
    /// Units done (bytes or sectors), for `Returns::Count`.
    count: u64,
    /// The operation's value, for `Returns::Value*`.
    value: u64,
}

/// The checked guest buffer of a call.
#[derive(Debug)]
struct Buffer {
    ptr: u32,
    bytes: u32,
    /// Units the length argument counted.
    units: u32,
    /// Bytes read from the guest for `Direction::In`.
    data: Option<Vec<u8>>,
}

fn args(binding: &Binding, guest: &mut dyn GuestAccess) -> Result<Vec<u32>, ArgError> {
    // Bindings built in code bypass the parser's bound; keep reads to what any
    // function could take.
    (0..binding.args.min(MAX_ARGS))
        .map(|i| {
            let stack_index = match binding.convention {
                Convention::Regparm3 => match REGPARM_REGS.get(i as usize) {
                    Some(&reg) => return Ok(guest.reg(reg)),
                    None => i - 3,
                },
                Convention::Cdecl | Convention::Stdcall => i,
            };
            guest
                .read_stack_u32(RET_ADDR_BYTES + 4 * stack_index)
                .map_err(|error| ArgError::Unreadable { index: i, error })
        })
        .collect()
}

fn esp_adjust(binding: &Binding) -> u32 {
    match binding.convention {
        Convention::Cdecl | Convention::Regparm3 => RET_ADDR_BYTES,
        Convention::Stdcall => RET_ADDR_BYTES + 4 * binding.args.min(MAX_ARGS),
    }
}

fn buffer(
    binding: &Binding,
    args: &[u32],
    guest: &mut dyn GuestAccess,
    user: bool,
) -> Result<Option<Buffer>, ArgError> {
    let (Some(b), Some(dir)) = (binding.buffer, binding.op.buffer()) else {
        return Ok(None);
    };
    // The parser keeps indices below `args`; a missing one reads as 0, a harmless
    // empty buffer, rather than a panic.
    let ptr = args.get(b.ptr as usize).copied().unwrap_or(0);
    let units = args.get(b.len as usize).copied().unwrap_or(0);
    let bytes = match b.unit {
        LenUnit::Bytes => u64::from(units),
        LenUnit::Sectors => u64::from(units) * SECTOR_SIZE as u64,
    };
    if bytes > u64::from(b.max_bytes) {
        return Err(ArgError::TooLong {
            bytes,
            max: b.max_bytes,
        });
    }
    if binding.op.service_type() == ServiceType::Block && bytes % SECTOR_SIZE as u64 != 0 {
        return Err(ArgError::NotWholeSectors { bytes });
    }
    // max_bytes is a u32, so this always converts.
    let bytes = u32::try_from(bytes).map_err(|_| ArgError::TooLong {
        bytes,
        max: b.max_bytes,
    })?;
    if u64::from(ptr) + u64::from(bytes) > 1 << 32 {
        return Err(ArgError::GuestMemory {
            ptr,
            len: bytes,
            error: AccessError::Wraps {
                addr: ptr,
                len: u64::from(bytes),
            },
        });
    }
    let data =
        match dir {
            Direction::In => Some(guest.read_buffer(ptr, bytes, user).map_err(|error| {
                ArgError::GuestMemory {
                    ptr,
                    len: bytes,
                    error,
                }
            })?),
            Direction::Out => None,
        };
    Ok(Some(Buffer {
        ptr,
        bytes,
        units,
        data,
    }))
}

fn wrong_type(h: &ServiceHandle, want: ServiceType) -> ServiceError {
    ServiceError::Unavailable {
        service: h.id().to_owned(),
        reason: format!("is a {} service, not {want}", h.service_type()),
    }
}

/// Performs `op` on one service. `out` receives bytes for the guest.
fn perform(
    op: Operation,
    h: &ServiceHandle,
    args: &[u32],
    binding: &Binding,
    buf: Option<&Buffer>,
    out: &mut Vec<u8>,
) -> Result<OpResult, ServiceError> {
    let arg = |i: Option<u32>| i.and_then(|i| args.get(i as usize).copied());
    let input = buf.and_then(|b| b.data.as_deref()).unwrap_or(&[]);
    let (bytes, units) = buf.map_or((0, 0), |b| (b.bytes as usize, u64::from(b.units)));
    let done = |count| OpResult { count, value: 0 };
    match (op, h) {
        (Operation::TtyWrite, ServiceHandle::Tty(t)) => Ok(done(t.write(input)? as u64)),
        (Operation::TtyRead, ServiceHandle::Tty(t)) => {
            out.resize(bytes, 0);
            let n = t.read(out)?.min(bytes);
            out.truncate(n);
            Ok(done(n as u64))
        }
        (Operation::BlockRead, ServiceHandle::Block(d)) => {
            out.resize(bytes, 0);
            d.read(u64::from(arg(binding.sector_arg).unwrap_or(0)), out)?;
            Ok(done(units))
        }
        (Operation::BlockWrite, ServiceHandle::Block(d)) => {
            d.write(u64::from(arg(binding.sector_arg).unwrap_or(0)), input)?;
            Ok(done(units))
        }
        (Operation::BlockCapacity, ServiceHandle::Block(d)) => Ok(OpResult {
            count: 0,
            value: d.capacity(),
        }),
        (Operation::BlockFlush, ServiceHandle::Block(d)) => d.flush().map(|()| done(0)),
        (Operation::ClockWall, ServiceHandle::Clock(c)) => Ok(OpResult {
            count: 0,
            value: c.wall_ns()?,
        }),
        (Operation::ClockMonotonic, ServiceHandle::Clock(c)) => Ok(OpResult {
            count: 0,
            value: c.monotonic_ns()?,
        }),
        (Operation::IdleWait, ServiceHandle::Idle(i)) => {
            let timeout = arg(binding.timeout_arg)
                .filter(|&us| us != NO_DEADLINE)
                .map(|us| Duration::from_micros(u64::from(us)));
            let woke = i.idle(timeout)?;
            Ok(OpResult {
                count: 0,
                value: u64::from(woke == IdleWake::Deadline),
            })
        }
        (op, h) => Err(wrong_type(h, op.service_type())),
    }
}

impl KernelProxy {
    /// Serves a call to the entry point at `entry`, bound by `binding`, with the guest
    /// stopped at the entry point's first instruction (ESP at the return address).
    ///
    /// Bad arguments, refused calls, failing services and unreachable services all
    /// produce the binding's error return; nothing the guest passes makes this panic.
    ///
    /// # Errors
    /// [`DispatchFault`] only when the return address cannot be read.
    pub fn dispatch(
        &self,
        entry: u32,
        binding: &Binding,
        guest: &mut dyn GuestAccess,
    ) -> Result<ProxyOutcome, DispatchFault> {
        let return_to = guest.read_stack_u32(0).map_err(|error| DispatchFault {
            esp: guest.reg(Reg::Esp),
            error,
        })?;
        let user = guest.user_caller();
        let mut outcome = ProxyOutcome {
            eax: binding.error_return,
            edx: None,
            return_to,
            esp_adjust: esp_adjust(binding),
            status: CallStatus::Done,
            served_by: None,
        };
        let args = match args(binding, guest) {
            Ok(a) => a,
            Err(e) => {
                outcome.status = CallStatus::BadArgument(e);
                return Ok(outcome);
            }
        };
        let call = CallInfo {
            op: binding.op.name().to_owned(),
            entry,
            symbol: match &binding.entry {
                crate::binding::EntryPoint::Symbol(s) => Some(s.clone()),
                crate::binding::EntryPoint::Address(_) => None,
            },
            user_caller: user,
            args: args.clone(),
        };

        // Security first: a refused call must not even touch the guest's buffers.
        let security = self.serve(ServiceType::Security, |h| match h {
            ServiceHandle::Security(s) => s.check(&call),
            other => Err(wrong_type(other, ServiceType::Security)),
        });
        let auditor = match security {
            Ok((Decision::Allow, _, h)) => h,
            Ok((Decision::Deny { reason }, _, h)) => {
                outcome.status = CallStatus::Denied { reason };
                audit(&h, &call, &outcome);
                return Ok(outcome);
            }
            Err(e) => {
                // Fail closed: with no security service nothing is allowed.
                outcome.status = CallStatus::Denied {
                    reason: format!("no security service could decide: {e}"),
                };
                return Ok(outcome);
            }
        };

        self.perform_call(binding, &args, guest, user, &mut outcome);
        audit(&auditor, &call, &outcome);
        Ok(outcome)
    }

    fn perform_call(
        &self,
        binding: &Binding,
        args: &[u32],
        guest: &mut dyn GuestAccess,
        user: bool,
        outcome: &mut ProxyOutcome,
    ) {
        let buf = match buffer(binding, args, guest, user) {
            Ok(b) => b,
            Err(e) => {
                outcome.status = CallStatus::BadArgument(e);
                return;
            }
        };
        let mut out = Vec::new();
        let served = self.serve(binding.op.service_type(), |h| {
            out.clear();
            perform(binding.op, h, args, binding, buf.as_ref(), &mut out)
        });
        let result = match served {
            Ok((r, by, _)) => {
                outcome.served_by = Some(by);
                r
            }
            Err(ServeError::NoService(e)) => {
                outcome.status = CallStatus::NoService {
                    ty: e.ty,
                    reason: e.to_string(),
                };
                return;
            }
            Err(ServeError::Service { served, error }) => {
                outcome.served_by = Some(*served);
                outcome.status = CallStatus::Service(error);
                return;
            }
        };
        if let (Some(b), Some(Direction::Out)) = (&buf, binding.op.buffer()) {
            if let Err(error) = guest.write_buffer(b.ptr, &out, user) {
                outcome.status = CallStatus::BadArgument(ArgError::GuestMemory {
                    ptr: b.ptr,
                    len: b.bytes,
                    error,
                });
                return;
            }
        }
        // Counts fit 32 bits: they are bounded by the buffer's u32 length.
        let (low, high) = edx_eax(result.value);
        let (eax, edx) = match binding.returns {
            Returns::Status => (0, None),
            Returns::Count => (u32::try_from(result.count).unwrap_or(u32::MAX), None),
            Returns::Value => (low, None),
            Returns::Value64 => (low, Some(high)),
        };
        outcome.eax = eax;
        outcome.edx = edx;
    }
}

fn audit(h: &ServiceHandle, call: &CallInfo, outcome: &ProxyOutcome) {
    if let ServiceHandle::Security(s) = h {
        s.audit(&AuditRecord {
            call: call.clone(),
            allowed: !matches!(outcome.status, CallStatus::Denied { .. }),
            eax: outcome.eax,
        });
    }
}

/// A 64-bit result as the (EAX, EDX) halves a 32-bit function returns it in; a 32-bit
/// return keeps the low half.
#[allow(clippy::cast_possible_truncation)] // Taking each half is the point.
fn edx_eax(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use services::{ServiceRegistry, ServiceType};

    use super::*;
    use crate::guest::fake::FakeGuest;
    use crate::policy::{DefaultTable, Policy, PolicyHandle, ServiceSpec};
    use crate::resolve::Source;

    const RET: u32 = 0xc010_beef;
    const ESP: u32 = 0x0009_0000;
    const EIO: u32 = 5u32.wrapping_neg();

    /// A proxy whose policy is `services` plus one binding `binding`.
    fn setup(services: &str, binding: &str) -> (KernelProxy, Binding) {
        let registry = Arc::new(ServiceRegistry::new());
        let src = format!("{services}\n[[bindings]]\n{binding}");
        let policy = Policy::from_toml(&src, "policy.toml", &registry).unwrap();
        let b = policy.bindings[0].clone();
        let mut defaults = DefaultTable::builtin();
        defaults
            .services
            .insert(ServiceType::Tty, ServiceSpec::local("discard"));
        (
            KernelProxy::new(PolicyHandle::new(policy), defaults, registry),
            b,
        )
    }

    const TTY: &str = "[services.tty]\nid = \"buffer\"\n[services.security]\nid = \"audit-log\"\n";
    const TTY_WRITE: &str = "symbol = \"console_write\"\nop = \"tty.write\"\n\
        buffer = { ptr = 0, len = 1, max = 64 }\nerror_return = -1\n";
    const DISK: &str = "[services.block]\nid = \"memory\"\nparams = { sectors = 8 }\n\
        [services.security]\nid = \"audit-log\"\n";

    fn kernel_guest(words: &[u32]) -> FakeGuest {
        let mut g = FakeGuest::default();
        g.stack(ESP, words);
        g
    }

    fn disk(p: &KernelProxy) -> Arc<dyn services::Block> {
        match p.resolve(ServiceType::Block).unwrap().0 {
            ServiceHandle::Block(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cdecl_tty_write_reads_stack_arguments() {
        let (p, b) = setup(TTY, &format!("{TTY_WRITE}convention = \"cdecl\"\n"));
        let mut g = kernel_guest(&[RET, 0xc000_1000, 5]);
        g.map(0xc000_1000, 16, false, false);
        g.poke(0xc000_1000, b"hello, world");
        let out = p.dispatch(0xc010_0000, &b, &mut g).unwrap();
        assert!(matches!(out.status, CallStatus::Done), "{:?}", out.status);
        assert_eq!((out.eax, out.edx), (5, None));
        assert_eq!((out.return_to, out.esp_adjust), (RET, 4));
        assert_eq!(p.registry().buffer_tty().output(), b"hello");
        let by = out.served_by.unwrap();
        assert_eq!((by.id.as_str(), by.source), ("buffer", Source::Policy));
        let audit = p.registry().audit_log().records();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].call.symbol.as_deref(), Some("console_write"));
        assert_eq!(audit[0].call.args, vec![0xc000_1000, 5]);
    }

    #[test]
    fn regparm3_takes_eax_edx_ecx_then_the_stack() {
        let (p, b) = setup(
            DISK,
            "address = 0xc0123450\nop = \"block.read\"\nconvention = \"regparm3\"\nargs = 4\n\
             sector_arg = 0\nbuffer = { ptr = 1, len = 2, max = 4096, unit = \"sectors\" }\n",
        );
        let image: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        disk(&p).write(3, &image).unwrap();
        let mut g = kernel_guest(&[RET, 0x77]);
        g.regs.insert(Reg::Eax, 3);
        g.regs.insert(Reg::Edx, 0xc020_0000);
        g.regs.insert(Reg::Ecx, 2);
        g.map(0xc020_0000, 1024, false, true);
        let out = p.dispatch(0xc012_3450, &b, &mut g).unwrap();
        assert!(matches!(out.status, CallStatus::Done), "{:?}", out.status);
        assert_eq!((out.eax, out.return_to, out.esp_adjust), (0, RET, 4));
        assert_eq!(g.peek(0xc020_0000, 1024), image);
        let audit = p.registry().audit_log().records();
        assert_eq!(audit[0].call.args, vec![3, 0xc020_0000, 2, 0x77]);
        assert_eq!(audit[0].call.symbol, None);
    }

    #[test]
    fn stdcall_pops_its_arguments() {
        let (p, b) = setup(
            DISK,
            "symbol = \"disk_write\"\nop = \"block.write\"\nconvention = \"stdcall\"\n\
             sector_arg = 2\nbuffer = { ptr = 0, len = 1, max = 512 }\nreturns = \"count\"\n",
        );
        let mut g = kernel_guest(&[RET, 0x5000, 512, 7]);
        g.map(0x5000, 512, false, false);
        g.poke(0x5000, &[0xA5; 512]);
        let out = p.dispatch(0, &b, &mut g).unwrap();
        assert_eq!((out.eax, out.esp_adjust), (512, 16));
        let mut sector = [0u8; 512];
        disk(&p).read(7, &mut sector).unwrap();
        assert_eq!(sector, [0xA5; 512]);
    }

    #[test]
    fn value64_returns_in_edx_eax() {
        let (p, b) = setup(
            "[services.clock]\nid = \"virtual\"\nparams = { start_ns = 0x100000005, step_ns = 3 }\n",
            "symbol = \"read_clock\"\nop = \"clock.monotonic\"\n",
        );
        let mut g = kernel_guest(&[RET]);
        let first = p.dispatch(0, &b, &mut g).unwrap();
        assert_eq!((first.eax, first.edx), (5, Some(1)));
        let second = p.dispatch(0, &b, &mut g).unwrap();
        assert_eq!((second.eax, second.edx), (8, Some(1)));
    }

    /// Runs a hostile call and checks it fails with the binding's error value.
    fn refused(p: &KernelProxy, b: &Binding, g: &mut FakeGuest) -> CallStatus {
        let out = p.dispatch(0, b, g).unwrap();
        assert_eq!(out.eax, b.error_return, "{:?}", out.status);
        assert_eq!((out.return_to, out.esp_adjust), (RET, 4));
        out.status
    }

    #[test]
    fn hostile_console_buffers_get_the_error_return() {
        let (p, b) = setup(TTY, TTY_WRITE);
        // A user-mode caller pointing at kernel memory.
        let mut g = kernel_guest(&[RET, 0xc000_0000, 4]);
        g.user = true;
        g.map(0xc000_0000, 16, false, true);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::GuestMemory {
                error: AccessError::Supervisor { .. },
                ..
            })
        ));
        // An unmapped pointer.
        let mut g = kernel_guest(&[RET, 0x4000_0000, 4]);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::GuestMemory {
                error: AccessError::Unmapped { addr: 0x4000_0000 },
                ..
            })
        ));
        // A length beyond the binding's maximum.
        let mut g = kernel_guest(&[RET, 0x1000, u32::MAX]);
        g.map(0x1000, 64, false, true);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::TooLong { .. })
        ));
        // A range running past 4 GiB.
        let mut g = kernel_guest(&[RET, 0xffff_fff0, 64]);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::GuestMemory {
                error: AccessError::Wraps { .. },
                ..
            })
        ));
        assert!(p.registry().buffer_tty().output().is_empty());
    }

    #[test]
    fn hostile_disk_requests_get_the_error_return() {
        let (p, b) = setup(
            DISK,
            "symbol = \"disk_read\"\nop = \"block.read\"\nsector_arg = 0\n\
             buffer = { ptr = 1, len = 2, max = 4096, unit = \"sectors\" }\nerror_return = -5\n",
        );
        // A sector past the end of the disk.
        let mut g = kernel_guest(&[RET, u32::MAX, 0x2000, 1]);
        g.map(0x2000, 4096, false, true);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::Service(ServiceError::OutOfRange { .. })
        ));
        // A sector count whose byte length would overflow 32 bits.
        let mut g = kernel_guest(&[RET, 0, 0x2000, 0x8000_0000]);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::TooLong { .. })
        ));
        // A destination the guest cannot write.
        let mut g = kernel_guest(&[RET, 0, 0x2000, 1]);
        g.map(0x2000, 512, false, false);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::GuestMemory {
                error: AccessError::ReadOnly { .. },
                ..
            })
        ));
        // A stack that ends (at a page end) before the last argument.
        let mut g = FakeGuest::default();
        g.stack(0x0009_0ff4, &[RET, 0, 0x2000]);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::Unreadable { index: 2, .. })
        ));
        assert_eq!(b.error_return, EIO);
    }

    #[test]
    fn partial_sector_writes_are_refused() {
        let (p, b) = setup(
            DISK,
            "symbol = \"w\"\nop = \"block.write\"\nsector_arg = 0\n\
             buffer = { ptr = 1, len = 2, max = 4096 }\nerror_return = -5\n",
        );
        let mut g = kernel_guest(&[RET, 0, 0x2000, 100]);
        g.map(0x2000, 4096, false, true);
        assert!(matches!(
            refused(&p, &b, &mut g),
            CallStatus::BadArgument(ArgError::NotWholeSectors { bytes: 100 })
        ));
    }

    #[test]
    fn unreadable_return_address_is_a_fault_for_the_engine() {
        let (p, b) = setup(TTY, TTY_WRITE);
        let mut g = FakeGuest::default();
        g.regs.insert(Reg::Esp, 0xdead_0000);
        let fault = p.dispatch(0, &b, &mut g).unwrap_err();
        assert_eq!(fault.esp, 0xdead_0000);
        assert_eq!(fault.error, AccessError::Unmapped { addr: 0xdead_0000 });
    }

    #[test]
    fn denied_calls_do_not_reach_the_service() {
        let (p, b) = setup(
            "[services.block]\nid = \"memory\"\nparams = { sectors = 8 }\n\
             [services.security]\nid = \"deny-list\"\nparams = { ops = [\"block.write\"] }\n",
            "symbol = \"w\"\nop = \"block.write\"\nsector_arg = 0\n\
             buffer = { ptr = 1, len = 2, max = 4096 }\nerror_return = -13\n",
        );
        let mut g = kernel_guest(&[RET, 0, 0x2000, 512]);
        g.map(0x2000, 512, false, true);
        g.poke(0x2000, &[1; 512]);
        let out = p.dispatch(0, &b, &mut g).unwrap();
        assert!(
            matches!(out.status, CallStatus::Denied { .. }),
            "{:?}",
            out.status
        );
        assert_eq!(out.eax, 13u32.wrapping_neg());
        let mut sector = [0xFFu8; 512];
        disk(&p).read(0, &mut sector).unwrap();
        assert_eq!(sector, [0; 512]);
    }

    #[test]
    fn tty_read_copies_only_what_is_pending() {
        let (p, b) = setup(
            TTY,
            "symbol = \"getc\"\nop = \"tty.read\"\nbuffer = { ptr = 0, len = 1, max = 64 }\n",
        );
        p.registry().buffer_tty().push_input(b"ls\n");
        let mut g = kernel_guest(&[RET, 0x3000, 64]);
        g.map(0x3000, 64, false, true);
        g.poke(0x3000, &[0xEE; 8]);
        let out = p.dispatch(0, &b, &mut g).unwrap();
        assert_eq!(out.eax, 3);
        assert_eq!(g.peek(0x3000, 4), b"ls\n\xEE");
    }

    #[test]
    fn policy_change_reaches_the_next_dispatched_call() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (p, b) = setup(TTY, TTY_WRITE);
        let mut g = kernel_guest(&[RET, 0x1000, 3]);
        g.map(0x1000, 16, false, false);
        g.poke(0x1000, b"one");
        p.dispatch(0, &b, &mut g).unwrap();
        let next = Policy::from_toml(
            &format!(
                "[services.tty]\nid = \"logfile\"\nparams = {{ path = {:?} }}\n",
                log
            ),
            "admin",
            p.registry(),
        )
        .unwrap();
        p.policy().replace(next);
        g.poke(0x1000, b"two");
        let out = p.dispatch(0, &b, &mut g).unwrap();
        assert_eq!(out.served_by.unwrap().id, "logfile");
        assert_eq!(p.registry().buffer_tty().output(), b"one");
        assert_eq!(std::fs::read(&log).unwrap(), b"two");
    }

    #[test]
    fn unreachable_policy_service_serves_the_call_from_the_default() {
        let (p, b) = setup(
            "[services.tty]\nid = \"logfile\"\nparams = { path = \"/nonexistent/dir/log\" }\n",
            TTY_WRITE,
        );
        let mut g = kernel_guest(&[RET, 0x1000, 3]);
        g.map(0x1000, 16, false, false);
        let out = p.dispatch(0, &b, &mut g).unwrap();
        assert_eq!(out.eax, 3);
        let by = out.served_by.unwrap();
        assert_eq!(by.id, "discard");
        assert!(matches!(by.source, Source::Default(_)));
        assert_eq!(p.stats()[&ServiceType::Tty].fell_back_inaccessible, 1);
    }
}
