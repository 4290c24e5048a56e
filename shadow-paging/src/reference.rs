//! A second, deliberately plain page walk written straight from the SDM's tables, for the
//! property tests to compare [`crate::walk()`] and the shadow state against. It shares no
//! code with the crate: bit positions are spelled out here, one rule per line.

use crate::testutil::FakeMemory;

/// Control-register inputs of a walk.
#[derive(Clone, Copy, Debug)]
pub struct Regs {
    pub cr0: u32,
    pub cr3: u32,
    pub cr4: u32,
    pub efer: u64,
}

impl Regs {
    pub fn paging(&self) -> bool {
        bit(u64::from(self.cr0), 31)
    }
    pub fn wp(&self) -> bool {
        bit(u64::from(self.cr0), 16)
    }
    pub fn pse(&self) -> bool {
        bit(u64::from(self.cr4), 4)
    }
    pub fn pae(&self) -> bool {
        bit(u64::from(self.cr4), 5)
    }
    pub fn pge(&self) -> bool {
        bit(u64::from(self.cr4), 7)
    }
    pub fn nxe(&self) -> bool {
        bit(self.efer, 11)
    }
}

pub fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 == 1
}

/// Bits hi..=lo of v, shifted down.
pub fn bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

/// A byte or table index: the model's memory is small, so every index fits.
fn index(v: u64) -> usize {
    usize::try_from(v).expect("index into the model's memory")
}

fn read(mem: &FakeMemory, addr: u64, len: u64) -> u64 {
    if addr + len > mem.bytes.len() as u64 {
        return 0;
    }
    let mut v = 0u64;
    for i in (0..len).rev() {
        v = (v << 8) | u64::from(mem.bytes[index(addr + i)]);
    }
    v
}

fn write_low_dword(mem: &mut FakeMemory, addr: u64, v: u64) {
    let at = index(addr);
    mem.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes()[..4]);
}

/// The four PDPTEs at CR3 bits 31:5, or `None` if a present one has a reserved bit
/// (bits 2:1, 8:5, 63:36) and the load raises #GP.
pub fn load_pdptes(mem: &FakeMemory, cr3: u32) -> Option<[u64; 4]> {
    let base = u64::from(cr3) >> 5 << 5;
    let mut out = [0; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let e = read(mem, base + 8 * i as u64, 8);
        let bad = bit(e, 1) || bit(e, 2) || bits(e, 8, 5) != 0 || bits(e, 63, 36) != 0;
        if bit(e, 0) && bad {
            return None;
        }
        *slot = e;
    }
    Some(out)
}

/// What a successful walk found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub phys: u64,
    pub page_bytes: u64,
    pub writable: bool,
    pub user: bool,
    pub nx: bool,
    pub global: bool,
    /// D of the mapping entry before the access (true with paging off).
    pub dirty: bool,
    /// Every entry used, by address, with its value, outermost first.
    pub used: Vec<(u64, u64)>,
}

/// Outcome of a reference walk: the translation, or the #PF error code.
pub type Outcome = Result<Found, u32>;

/// Walks without touching memory.
pub fn translate(
    mem: &FakeMemory,
    r: Regs,
    pdptes: [u64; 4],
    lin: u32,
    write: bool,
    user: bool,
    fetch: bool,
) -> Outcome {
    let lin = u64::from(lin);
    let nx_on = r.paging() && r.pae() && r.nxe();
    let code = |present: bool, rsvd: bool| -> u32 {
        let mut c = 0;
        if present {
            c += 1;
        }
        if write {
            c += 2;
        }
        if user {
            c += 4;
        }
        if rsvd {
            c += 8;
        }
        if fetch && nx_on {
            c += 16;
        }
        c
    };
    if !r.paging() {
        return Ok(Found {
            phys: lin,
            page_bytes: 4096,
            writable: true,
            user: true,
            nx: false,
            global: false,
            dirty: true,
            used: vec![],
        });
    }
    let mut used = Vec::new();
    let (phys, page_bytes, leaf) = if !r.pae() {
        let pde_at = (u64::from(r.cr3) & 0xffff_f000) + 4 * bits(lin, 31, 22);
        let pde = read(mem, pde_at, 4);
        if !bit(pde, 0) {
            return Err(code(false, false));
        }
        used.push((pde_at, pde));
        if r.pse() && bit(pde, 7) {
            if bits(pde, 21, 17) != 0 {
                return Err(code(true, true));
            }
            (
                bits(pde, 31, 22) << 22 | bits(pde, 16, 13) << 32 | bits(lin, 21, 0),
                4 << 20,
                pde,
            )
        } else {
            let pte_at = (bits(pde, 31, 12) << 12) + 4 * bits(lin, 21, 12);
            let pte = read(mem, pte_at, 4);
            if !bit(pte, 0) {
                return Err(code(false, false));
            }
            used.push((pte_at, pte));
            (bits(pte, 31, 12) << 12 | bits(lin, 11, 0), 4096, pte)
        }
    } else {
        let pdpte = pdptes[index(bits(lin, 31, 30))];
        if !bit(pdpte, 0) {
            return Err(code(false, false));
        }
        let reserved = |e: u64, big: bool| {
            bits(e, 62, 36) != 0 || (!r.nxe() && bit(e, 63)) || (big && bits(e, 20, 13) != 0)
        };
        let pde_at = (bits(pdpte, 35, 12) << 12) + 8 * bits(lin, 29, 21);
        let pde = if pde_at >= 1 << 32 {
            0
        } else {
            read(mem, pde_at, 8)
        };
        if !bit(pde, 0) {
            return Err(code(false, false));
        }
        if reserved(pde, bit(pde, 7)) {
            return Err(code(true, true));
        }
        used.push((pde_at, pde));
        if bit(pde, 7) {
            (bits(pde, 35, 21) << 21 | bits(lin, 20, 0), 2 << 20, pde)
        } else {
            let pte_at = (bits(pde, 35, 12) << 12) + 8 * bits(lin, 20, 12);
            let pte = if pte_at >= 1 << 32 {
                0
            } else {
                read(mem, pte_at, 8)
            };
            if !bit(pte, 0) {
                return Err(code(false, false));
            }
            if reserved(pte, false) {
                return Err(code(true, true));
            }
            used.push((pte_at, pte));
            (bits(pte, 35, 12) << 12 | bits(lin, 11, 0), 4096, pte)
        }
    };
    let writable = used.iter().all(|&(_, e)| bit(e, 1));
    let user_ok = used.iter().all(|&(_, e)| bit(e, 2));
    let nx = r.pae() && r.nxe() && used.iter().any(|&(_, e)| bit(e, 63));
    if user && !user_ok {
        return Err(code(true, false));
    }
    if write && !writable && (user || r.wp()) {
        return Err(code(true, false));
    }
    if fetch && nx {
        return Err(code(true, false));
    }
    Ok(Found {
        phys,
        page_bytes,
        writable,
        user: user_ok,
        nx,
        global: bit(leaf, 8),
        dirty: bit(leaf, 6),
        used,
    })
}

/// Walks and then sets A on each entry used and D on the last for a write, as the CPU
/// does after a successful translation.
pub fn walk(
    mem: &mut FakeMemory,
    r: Regs,
    pdptes: [u64; 4],
    lin: u32,
    write: bool,
    user: bool,
    fetch: bool,
) -> Outcome {
    let found = translate(mem, r, pdptes, lin, write, user, fetch)?;
    let last = found.used.len().wrapping_sub(1);
    for (i, &(at, e)) in found.used.iter().enumerate() {
        let mut v = e | 1 << 5;
        if i == last && write {
            v |= 1 << 6;
        }
        write_low_dword(mem, at, v);
    }
    Ok(found)
}
