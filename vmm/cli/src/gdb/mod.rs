//! The gdb remote stub of `vmm run --gdb tcp::PORT` (`-s`, `-S`), on the `gdbstub` crate
//! with `gdbstub_arch`'s i386 target description.
//!
//! Two threads: the stub thread owns the connection and runs gdbstub's blocking event
//! loop; the vCPU thread, stopped inside [`Debugger::stopped`], serves its requests
//! (registers, memory, breakpoints) over a channel and resumes when told. While the guest
//! runs, the stub thread watches the connection for gdb's Ctrl-C and the channel for
//! the next stop; an interrupt is the engine's [`DebugControl`] flag plus a kick of the
//! vCPU. The listening socket is bound, and the connection accepted on the stub thread,
//! with syscalls the monitor's allowlist keeps.
//!
//! Registers: the general registers, EIP, EFLAGS (with the guest's virtual IF) and the
//! segment selectors through gdb's i386 core registers, CR0, CR2, CR3 and CR4 after them
//! ([`i386`]); the x87 and SSE registers read as zero. Writes change the general
//! registers, EIP and EFLAGS only. `monitor cr` prints the control registers with the
//! descriptor-table and debug registers.
//!
//! Watchpoints of every kind (`watch`, `rwatch`, `awatch`) are the engine's
//! ([`vmm::vm::debug`]): they stop after the instruction that accessed the range, also
//! when it wrote the value already there; the guest's own DR0–DR3 stay its own.

mod i386;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::outputln;
use gdbstub::stub::run_blocking::{self, BlockingEventLoop, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::{X86CoreRegs, X86SegmentRegs};
use vmm::addr::GuestLinear;
use vmm::hostcpu::timer::Kicker;
use vmm::vm::debug::WatchKind as EngineWatch;
use vmm::vm::debug::{DebugControl, DebugGuest, DebugResume, DebugStop, Debugger};
use vmm::x86::SegReg;

use i386::{I386System, SystemRegs};

/// How often the stub looks at the connection while the guest runs.
const POLL: Duration = Duration::from_millis(10);

/// Where the stub listens: `tcp::PORT` (every interface, as QEMU) or `tcp:HOST:PORT`.
///
/// # Errors
/// What is wrong with the text.
pub fn parse_address(text: &str) -> Result<String, String> {
    let rest = text
        .strip_prefix("tcp:")
        .ok_or_else(|| format!("{text:?}: expected tcp::PORT or tcp:HOST:PORT"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected tcp::PORT or tcp:HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?}: {port:?} is not a TCP port"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(format!("{host}:{port}"))
}

/// A request from the stub thread to the stopped vCPU.
#[derive(Debug)]
enum Request {
    Registers,
    SetRegisters(Box<SystemRegs>),
    Read(u32, usize),
    Write(u32, Vec<u8>),
    AddBreak(u32),
    RemoveBreak(u32),
    AddWatch(u32, usize, EngineWatch),
    RemoveWatch(u32, usize, EngineWatch),
    Monitor,
    Resume(DebugResume),
}

/// The vCPU's answer.
#[derive(Debug)]
enum Reply {
    Registers(Box<SystemRegs>),
    Bytes(Option<Vec<u8>>),
    Done(bool),
    Text(String),
}

/// What the vCPU thread tells the stub thread.
#[derive(Debug, Clone, Copy)]
enum Event {
    Stopped(DebugStop),
    Exited(u8),
}

/// The vCPU side: the engine's [`Debugger`].
struct VcpuSide {
    events: Sender<Event>,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
}

fn registers(guest: &DebugGuest<'_>) -> SystemRegs {
    let s = guest.state();
    let sel = |r: SegReg| u32::from(s.sreg(r).selector);
    let core = X86CoreRegs {
        eax: s.gpr[0],
        ecx: s.gpr[1],
        edx: s.gpr[2],
        ebx: s.gpr[3],
        esp: s.gpr[4],
        ebp: s.gpr[5],
        esi: s.gpr[6],
        edi: s.gpr[7],
        eip: s.eip,
        eflags: s.eflags,
        segments: X86SegmentRegs {
            cs: sel(SegReg::Cs),
            ss: sel(SegReg::Ss),
            ds: sel(SegReg::Ds),
            es: sel(SegReg::Es),
            fs: sel(SegReg::Fs),
            gs: sel(SegReg::Gs),
        },
        ..X86CoreRegs::default()
    };
    SystemRegs {
        core,
        control: [s.cr0, s.cr2, s.cr3, s.cr4],
    }
}

fn control_registers(guest: &DebugGuest<'_>) -> String {
    let s = guest.state();
    format!(
        "cr0 {:#010x}  cr2 {:#010x}  cr3 {:#010x}  cr4 {:#010x}\n\
         gdtr {:#010x}/{:#06x}  idtr {:#010x}/{:#06x}  dr6 {:#010x}  dr7 {:#010x}  cpl {}",
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.gdtr.base,
        s.gdtr.limit,
        s.idtr.base,
        s.idtr.limit,
        s.dr[6],
        s.dr[7],
        s.cpl()
    )
}

impl Debugger for VcpuSide {
    fn stopped(&mut self, guest: &mut DebugGuest<'_>, why: DebugStop) -> DebugResume {
        if self.events.send(Event::Stopped(why)).is_err() {
            return DebugResume::Detach;
        }
        loop {
            // The stub thread is gone (connection lost): run on without it.
            let Ok(request) = self.requests.recv() else {
                return DebugResume::Detach;
            };
            let reply = match request {
                Request::Resume(how) => return how,
                Request::Registers => Reply::Registers(Box::new(registers(guest))),
                Request::SetRegisters(r) => {
                    let r = &r.core;
                    let gpr = [r.eax, r.ecx, r.edx, r.ebx, r.esp, r.ebp, r.esi, r.edi];
                    guest.set_registers(gpr, r.eip, r.eflags);
                    Reply::Done(true)
                }
                Request::Read(addr, len) => {
                    let mut buf = vec![0; len];
                    Reply::Bytes(
                        guest
                            .read_memory(GuestLinear(addr), &mut buf)
                            .ok()
                            .map(|()| buf),
                    )
                }
                Request::Write(addr, data) => {
                    Reply::Done(guest.write_memory(GuestLinear(addr), &data).is_ok())
                }
                Request::AddBreak(addr) => {
                    Reply::Done(guest.add_breakpoint(GuestLinear(addr)).is_ok())
                }
                Request::RemoveBreak(addr) => {
                    Reply::Done(guest.remove_breakpoint(GuestLinear(addr)))
                }
                Request::AddWatch(addr, len, kind) => {
                    Reply::Done(guest.add_watchpoint(GuestLinear(addr), len, kind).is_ok())
                }
                Request::RemoveWatch(addr, len, kind) => {
                    Reply::Done(guest.remove_watchpoint(GuestLinear(addr), len, kind))
                }
                Request::Monitor => Reply::Text(control_registers(guest)),
            };
            if self.replies.send(reply).is_err() {
                return DebugResume::Detach;
            }
        }
    }
}

/// The stub side: gdbstub's target, forwarding to the vCPU thread.
struct Remote {
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    events: Receiver<Event>,
    control: DebugControl,
    kicker: Kicker,
}

impl Remote {
    fn ask(&mut self, request: Request) -> Result<Reply, String> {
        self.requests
            .send(request)
            .map_err(|_| "the vCPU thread is gone".to_string())?;
        self.replies
            .recv()
            .map_err(|_| "the vCPU thread is gone".to_string())
    }

    fn done(&mut self, request: Request) -> TargetResult<bool, Self> {
        match self.ask(request).map_err(TargetError::Fatal)? {
            Reply::Done(ok) => Ok(ok),
            other => Err(TargetError::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    fn interrupt(&self) {
        self.control.interrupt();
        // A failed kick only delays the stop to the next exit.
        let _ = self.kicker.kick();
    }
}

impl Target for Remote {
    type Arch = I386System;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for Remote {
    fn read_registers(&mut self, regs: &mut SystemRegs) -> TargetResult<(), Self> {
        match self.ask(Request::Registers).map_err(TargetError::Fatal)? {
            Reply::Registers(r) => {
                *regs = *r;
                Ok(())
            }
            other => Err(TargetError::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    fn write_registers(&mut self, regs: &SystemRegs) -> TargetResult<(), Self> {
        self.done(Request::SetRegisters(Box::new(regs.clone())))
            .map(|_| ())
    }

    fn read_addrs(&mut self, start_addr: u32, data: &mut [u8]) -> TargetResult<usize, Self> {
        match self
            .ask(Request::Read(start_addr, data.len()))
            .map_err(TargetError::Fatal)?
        {
            Reply::Bytes(Some(bytes)) => {
                data.copy_from_slice(&bytes);
                Ok(data.len())
            }
            // An address without RAM behind it: gdb gets an error reply.
            Reply::Bytes(None) => Err(TargetError::NonFatal),
            other => Err(TargetError::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    fn write_addrs(&mut self, start_addr: u32, data: &[u8]) -> TargetResult<(), Self> {
        if self.done(Request::Write(start_addr, data.to_vec()))? {
            Ok(())
        } else {
            Err(TargetError::NonFatal)
        }
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Remote {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.requests
            .send(Request::Resume(DebugResume::Continue))
            .map_err(|_| "the vCPU thread is gone".to_string())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Remote {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.requests
            .send(Request::Resume(DebugResume::Step))
            .map_err(|_| "the vCPU thread is gone".to_string())
    }
}

impl Breakpoints for Remote {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Remote {
    fn add_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.done(Request::AddBreak(addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.done(Request::RemoveBreak(addr))
    }
}

/// Hardware breakpoints are the same pinned traps: the guest's DR0–DR3 stay its own.
impl HwBreakpoint for Remote {
    fn add_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.done(Request::AddBreak(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.done(Request::RemoveBreak(addr))
    }
}

/// The engine's kind for gdb's.
fn engine_watch(kind: WatchKind) -> EngineWatch {
    match kind {
        WatchKind::Write => EngineWatch::Write,
        WatchKind::Read => EngineWatch::Read,
        WatchKind::ReadWrite => EngineWatch::Access,
    }
}

/// Watchpoints of every kind, over up to a page.
impl HwWatchpoint for Remote {
    fn add_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Ok(len) = usize::try_from(len) else {
            return Ok(false);
        };
        if len == 0 || len > 4096 {
            return Ok(false);
        }
        self.done(Request::AddWatch(addr, len, engine_watch(kind)))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Ok(len) = usize::try_from(len) else {
            return Ok(false);
        };
        self.done(Request::RemoveWatch(addr, len, engine_watch(kind)))
    }
}

impl MonitorCmd for Remote {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        match cmd {
            b"cr" => match self.ask(Request::Monitor)? {
                Reply::Text(text) => outputln!(out, "{}", text),
                other => return Err(format!("unexpected reply {other:?}")),
            },
            _ => outputln!(
                out,
                "monitor commands: cr (control and descriptor-table registers)"
            ),
        }
        Ok(())
    }
}

/// The stop reason gdb gets for an engine stop.
fn stop_reason(event: Event) -> SingleThreadStopReason<u32> {
    match event {
        Event::Stopped(DebugStop::Breakpoint) => SingleThreadStopReason::SwBreak(()),
        Event::Stopped(DebugStop::Step) => SingleThreadStopReason::DoneStep,
        Event::Stopped(DebugStop::Watch { addr, kind }) => SingleThreadStopReason::Watch {
            tid: (),
            kind: match kind {
                EngineWatch::Write => WatchKind::Write,
                EngineWatch::Read => WatchKind::Read,
                EngineWatch::Access => WatchKind::ReadWrite,
            },
            addr: addr.raw(),
        },
        Event::Stopped(DebugStop::Start | DebugStop::Interrupted) => {
            SingleThreadStopReason::Signal(Signal::SIGINT)
        }
        Event::Exited(status) => SingleThreadStopReason::Exited(status),
    }
}

enum EventLoop {}

impl BlockingEventLoop for EventLoop {
    type Target = Remote;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u32>;

    fn wait_for_stop_reason(
        target: &mut Remote,
        conn: &mut TcpStream,
    ) -> Result<
        run_blocking::Event<Self::StopReason>,
        WaitForStopReasonError<String, <TcpStream as Connection>::Error>,
    > {
        loop {
            match target.events.recv_timeout(POLL) {
                Ok(event) => return Ok(run_blocking::Event::TargetStopped(stop_reason(event))),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(WaitForStopReasonError::Target(
                        "the vCPU thread is gone".to_string(),
                    ))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if conn
                .peek()
                .map_err(WaitForStopReasonError::Connection)?
                .is_some()
            {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(run_blocking::Event::IncomingData(byte));
            }
        }
    }

    fn on_interrupt(target: &mut Remote) -> Result<Option<Self::StopReason>, String> {
        target.interrupt();
        // The stop comes from the vCPU as an `Interrupted` event.
        Ok(None)
    }
}

/// A stub listening for gdb, attached to a VM.
#[derive(Debug)]
pub struct GdbStubHandle {
    events: Sender<Event>,
    thread: JoinHandle<()>,
}

/// The parts a stub needs once the guest's thread is known.
#[derive(Debug)]
pub struct Pending {
    listener: TcpListener,
    remote_requests: Sender<Request>,
    remote_replies: Receiver<Reply>,
    remote_events: Receiver<Event>,
    control: DebugControl,
    wait: bool,
    events: Sender<Event>,
}

/// Binds `address`, attaches the vCPU side to `vm` (stopping before the first instruction
/// with `wait`), and returns what [`Pending::start`] needs to serve gdb.
///
/// # Errors
/// The address cannot be bound.
pub fn attach(vm: &mut vmm::vm::Vm, address: &str, wait: bool) -> io::Result<Pending> {
    let listener = TcpListener::bind(address)?;
    let (events_tx, events_rx) = mpsc::channel();
    let (requests_tx, requests_rx) = mpsc::channel();
    let (replies_tx, replies_rx) = mpsc::channel();
    let vcpu = VcpuSide {
        events: events_tx.clone(),
        requests: requests_rx,
        replies: replies_tx,
    };
    let control = vm.attach_debugger(Box::new(vcpu), wait);
    eprintln!(
        "vmm: gdb: listening on {}{}",
        listener.local_addr()?,
        if wait {
            "; the guest waits for gdb before its first instruction"
        } else {
            ""
        }
    );
    Ok(Pending {
        listener,
        remote_requests: requests_tx,
        remote_replies: replies_rx,
        remote_events: events_rx,
        control,
        wait,
        events: events_tx,
    })
}

impl Pending {
    /// Starts the stub thread (before the monitor's syscall allowlist is installed).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(self, kicker: Kicker) -> io::Result<GdbStubHandle> {
        let Pending {
            listener,
            remote_requests,
            remote_replies,
            remote_events,
            control,
            wait,
            events,
        } = self;
        let mut remote = Remote {
            requests: remote_requests,
            replies: remote_replies,
            events: remote_events,
            control,
            kicker,
        };
        let thread = std::thread::Builder::new()
            .name("gdb stub".into())
            .spawn(move || serve(&listener, &mut remote, wait))?;
        Ok(GdbStubHandle { events, thread })
    }
}

/// The stub thread: one gdb connection, then the guest runs on without a debugger.
fn serve(listener: &TcpListener, remote: &mut Remote, wait: bool) {
    let conn = match listener.accept() {
        Ok((conn, _)) => conn,
        Err(e) => {
            eprintln!("vmm: gdb: accept failed: {e}");
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    // gdb finds the target stopped: at the first instruction (-S), or stopped now.
    if !wait {
        remote.interrupt();
    }
    match remote.events.recv() {
        Ok(Event::Stopped(_)) => {}
        Ok(Event::Exited(_)) | Err(_) => return,
    }
    let outcome = GdbStub::new(conn).run_blocking::<EventLoop>(remote);
    let resume = match outcome {
        Ok(DisconnectReason::Kill) => Some(DebugResume::Kill),
        Ok(DisconnectReason::Disconnect) => Some(DebugResume::Detach),
        Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => None,
        Err(e) => {
            eprintln!("vmm: gdb: {e}");
            Some(DebugResume::Detach)
        }
    };
    if let Some(how) = resume {
        let _ = remote.requests.send(Request::Resume(how));
    }
}

impl GdbStubHandle {
    /// The run ended with `status`: gdb hears that the target exited; waits a moment for
    /// the stub to tell it.
    pub fn finish(self, status: u8) {
        let _ = self.events.send(Event::Exited(status));
        for _ in 0..200 {
            if self.thread.is_finished() {
                let _ = self.thread.join();
                return;
            }
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_qemu_spells_them() {
        assert_eq!(parse_address("tcp::1234").unwrap(), "0.0.0.0:1234");
        assert_eq!(parse_address("tcp:127.0.0.1:0").unwrap(), "127.0.0.1:0");
        assert!(parse_address("1234").is_err());
        assert!(parse_address("tcp::99999").is_err());
        assert!(parse_address("udp::1").is_err());
    }
}
