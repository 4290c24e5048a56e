//! The register set the stub gives gdb: i386's core and SSE registers (gdb's
//! `org.gnu.gdb.i386.core` and `.sse` features, in gdb's `g` packet order) followed by
//! the control registers in a feature of this monitor's own, so that `p $cr3` and `info
//! registers cr0` work as with a hardware probe.
//!
//! gdbstub_arch's `X86_SSE` names no feature with registers, so gdb falls back to its
//! built-in i386 layout and has no room for more; a full description is the way to add
//! registers, and it must then spell the core and SSE features out (gdb refuses an i386
//! description without the core feature).

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::id::X86CoreRegId;
use gdbstub_arch::x86::reg::X86CoreRegs;

/// 32-bit x86 with its control registers.
#[derive(Debug)]
pub enum I386System {}

impl Arch for I386System {
    type Usize = u32;
    type Registers = SystemRegs;
    type RegId = X86CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// Bytes of [`X86CoreRegs`] in a `g` packet: 16 registers of 4 bytes, 8 x87 registers of
/// 10, 8 x87 control registers of 4, 8 XMM registers of 16, MXCSR.
const CORE_BYTES: usize = 16 * 4 + 8 * 10 + 8 * 4 + 8 * 16 + 4;

/// The core registers and CR0, CR2, CR3, CR4.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SystemRegs {
    /// General, segment, x87 and SSE registers.
    pub core: X86CoreRegs,
    /// CR0, CR2, CR3, CR4 (read-only: a write is not applied).
    pub control: [u32; 4],
}

impl Registers for SystemRegs {
    type ProgramCounter = u32;

    fn pc(&self) -> u32 {
        self.core.eip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for byte in self.control.iter().flat_map(|r| r.to_le_bytes()) {
            write_byte(Some(byte));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let (core, control) = bytes.split_at_checked(CORE_BYTES).ok_or(())?;
        self.core.gdb_deserialize(core)?;
        for (reg, chunk) in self.control.iter_mut().zip(control.chunks_exact(4)) {
            let word: [u8; 4] = chunk.try_into().map_err(|_| ())?;
            *reg = u32::from_le_bytes(word);
        }
        Ok(())
    }
}

/// The target description: register numbers follow the `g` packet's order.
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386</architecture>
<feature name="org.gnu.gdb.i386.core">
<flags id="i386_eflags" size="4">
<field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
<field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
<field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
<field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
<field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
<field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
<field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
<field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
<field name="ID" start="21" end="21"/>
</flags>
<reg name="eax" bitsize="32" type="int32" regnum="0"/>
<reg name="ecx" bitsize="32" type="int32"/>
<reg name="edx" bitsize="32" type="int32"/>
<reg name="ebx" bitsize="32" type="int32"/>
<reg name="esp" bitsize="32" type="data_ptr"/>
<reg name="ebp" bitsize="32" type="data_ptr"/>
<reg name="esi" bitsize="32" type="int32"/>
<reg name="edi" bitsize="32" type="int32"/>
<reg name="eip" bitsize="32" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="i386_eflags"/>
<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128">
<field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
<field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
<field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/>
</union>
<flags id="i386_mxcsr" size="4">
<field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
<field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
<field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
<field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
<field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
<field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
<field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
</flags>
<reg name="xmm0" bitsize="128" type="vec128" regnum="32"/>
<reg name="xmm1" bitsize="128" type="vec128"/>
<reg name="xmm2" bitsize="128" type="vec128"/>
<reg name="xmm3" bitsize="128" type="vec128"/>
<reg name="xmm4" bitsize="128" type="vec128"/>
<reg name="xmm5" bitsize="128" type="vec128"/>
<reg name="xmm6" bitsize="128" type="vec128"/>
<reg name="xmm7" bitsize="128" type="vec128"/>
<reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
</feature>
<feature name="vmm.i386.system">
<flags id="i386_cr0" size="4">
<field name="PE" start="0" end="0"/><field name="MP" start="1" end="1"/>
<field name="EM" start="2" end="2"/><field name="TS" start="3" end="3"/>
<field name="ET" start="4" end="4"/><field name="NE" start="5" end="5"/>
<field name="WP" start="16" end="16"/><field name="AM" start="18" end="18"/>
<field name="NW" start="29" end="29"/><field name="CD" start="30" end="30"/>
<field name="PG" start="31" end="31"/>
</flags>
<flags id="i386_cr4" size="4">
<field name="VME" start="0" end="0"/><field name="PVI" start="1" end="1"/>
<field name="TSD" start="2" end="2"/><field name="DE" start="3" end="3"/>
<field name="PSE" start="4" end="4"/><field name="PAE" start="5" end="5"/>
<field name="MCE" start="6" end="6"/><field name="PGE" start="7" end="7"/>
<field name="PCE" start="8" end="8"/><field name="OSFXSR" start="9" end="9"/>
<field name="OSXMMEXCPT" start="10" end="10"/><field name="OSXSAVE" start="18" end="18"/>
</flags>
<reg name="cr0" bitsize="32" type="i386_cr0" regnum="41" group="system"/>
<reg name="cr2" bitsize="32" type="data_ptr" group="system"/>
<reg name="cr3" bitsize="32" type="int32" group="system"/>
<reg name="cr4" bitsize="32" type="i386_cr4" group="system"/>
</feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_registers_follow_the_core_ones_and_round_trip() {
        let regs = SystemRegs {
            core: X86CoreRegs {
                eip: 0x0010_0000,
                mxcsr: 0x1f80,
                ..X86CoreRegs::default()
            },
            control: [0x8000_0011, 0x1234, 0x0010_0000, 0x10],
        };
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), CORE_BYTES + 16);
        assert_eq!(
            bytes[CORE_BYTES..CORE_BYTES + 4],
            0x8000_0011u32.to_le_bytes()
        );
        let mut back = SystemRegs::default();
        back.gdb_deserialize(&bytes).expect("a whole packet");
        assert_eq!(back, regs);
        assert!(back.gdb_deserialize(&bytes[..CORE_BYTES - 1]).is_err());
    }

    #[test]
    fn description_numbers_match_the_packet() {
        // 16 core + 8 st + 8 x87 control + 8 xmm + mxcsr = 41 before cr0.
        assert!(TARGET_XML.contains(r#"name="xmm0" bitsize="128" type="vec128" regnum="32""#));
        assert!(TARGET_XML.contains(r#"name="cr0" bitsize="32" type="i386_cr0" regnum="41""#));
        assert_eq!(TARGET_XML.matches("<reg ").count(), 45);
    }
}
