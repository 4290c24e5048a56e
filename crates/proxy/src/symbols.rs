//! Resolving bound entry points against the guest kernel's ELF symbol table.

use std::collections::BTreeMap;
use std::sync::Arc;

use goblin::elf::{header, sym, Elf};

use crate::binding::{Binding, EntryPoint};

/// Symbol name → the addresses it is defined at (more than one for file-local symbols
/// that share a name).
pub type SymbolMap = BTreeMap<String, Vec<u32>>;

/// Why a guest kernel's symbols cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// Not a readable ELF file.
    #[error("not a readable ELF file: {message}")]
    Parse {
        /// What the ELF reader said.
        message: String,
    },
    /// An ELF file for another machine.
    #[error("ELF file is for machine {machine}, not IA-32 (3)")]
    NotIa32 {
        /// `e_machine` of the file.
        machine: u16,
    },
}

/// The defined function and label symbols of an IA-32 ELF kernel.
///
/// # Errors
/// When the bytes are not a 32-bit x86 ELF file.
pub fn resolve_symbols(elf_bytes: &[u8]) -> Result<SymbolMap, SymbolError> {
    let elf = Elf::parse(elf_bytes).map_err(|e| SymbolError::Parse {
        message: e.to_string(),
    })?;
    if elf.header.e_machine != header::EM_386 {
        return Err(SymbolError::NotIa32 {
            machine: elf.header.e_machine,
        });
    }
    let mut map = SymbolMap::new();
    let tables = [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)];
    for (syms, strtab) in tables {
        for s in syms.iter() {
            // Assembly entry points are often untyped labels, so NOTYPE counts too.
            let wanted = matches!(s.st_type(), sym::STT_FUNC | sym::STT_NOTYPE);
            if !wanted || s.st_shndx == 0 {
                continue;
            }
            let (Some(name), Ok(addr)) = (strtab.get_at(s.st_name), u32::try_from(s.st_value))
            else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let addrs = map.entry(name.to_owned()).or_default();
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    Ok(map)
}

/// Why a policy's bindings cannot be placed in a guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The guest kernel has no such symbol.
    #[error("binding at policy line {line}: the guest kernel has no symbol `{symbol}`")]
    UnknownSymbol {
        /// Line of the binding.
        line: usize,
        /// The symbol.
        symbol: String,
    },
    /// The symbol names several addresses; bind by address instead.
    #[error("binding at policy line {line}: symbol `{symbol}` is defined at several addresses {addresses:#x?}; bind by address")]
    AmbiguousSymbol {
        /// Line of the binding.
        line: usize,
        /// The symbol.
        symbol: String,
        /// Where it is defined.
        addresses: Vec<u32>,
    },
    /// Two bindings land on one address.
    #[error("bindings at policy lines {first_line} and {line} both bind {addr:#010x}")]
    Duplicate {
        /// Line of the later binding.
        line: usize,
        /// Line of the earlier one.
        first_line: usize,
        /// The address.
        addr: u32,
    },
}

/// Bound entry points by guest linear address: what the engine patches, and looks up
/// when a patched entry point traps.
#[derive(Debug, Clone, Default)]
pub struct EntryPoints(BTreeMap<u32, Arc<Binding>>);

impl EntryPoints {
    /// Places `bindings` at their addresses, looking symbols up in `symbols`.
    ///
    /// # Errors
    /// Unknown or ambiguous symbols, and two bindings on one address.
    pub fn resolve(bindings: &[Binding], symbols: &SymbolMap) -> Result<Self, BindError> {
        let mut map: BTreeMap<u32, Arc<Binding>> = BTreeMap::new();
        for b in bindings {
            let addr = match &b.entry {
                EntryPoint::Address(a) => *a,
                EntryPoint::Symbol(s) => match symbols.get(s).map(Vec::as_slice) {
                    None | Some([]) => {
                        return Err(BindError::UnknownSymbol {
                            line: b.line,
                            symbol: s.clone(),
                        })
                    }
                    Some([a]) => *a,
                    Some(many) => {
                        return Err(BindError::AmbiguousSymbol {
                            line: b.line,
                            symbol: s.clone(),
                            addresses: many.to_vec(),
                        })
                    }
                },
            };
            if let Some(first) = map.get(&addr) {
                return Err(BindError::Duplicate {
                    line: b.line,
                    first_line: first.line,
                    addr,
                });
            }
            map.insert(addr, Arc::new(b.clone()));
        }
        Ok(EntryPoints(map))
    }

    /// The binding at `addr`.
    pub fn get(&self, addr: u32) -> Option<&Arc<Binding>> {
        self.0.get(&addr)
    }

    /// Every bound address with its binding, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Arc<Binding>)> {
        self.0.iter().map(|(a, b)| (*a, b))
    }

    /// How many entry points are bound.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
