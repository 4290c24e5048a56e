//! Resolving bound entry points against the guest kernel's ELF symbol table.

use std::collections::BTreeMap;
use std::sync::Arc;

use vmm::loader::elf::{ElfError, ElfFile, ElfSymbol};

use crate::binding::{Binding, EntryPoint};

/// Symbol name → the addresses it is defined at (more than one for file-local symbols
/// that share a name).
pub type SymbolMap = BTreeMap<String, Vec<u32>>;

/// The defined function and label symbols of an i386 ELF file, static and dynamic:
/// assembly entry points are often untyped labels, so those count too.
fn code_symbols<'a>(elf: &ElfFile<'a>) -> Result<Vec<ElfSymbol<'a>>, ElfError> {
    let mut symbols = elf.symbols()?;
    symbols.extend(elf.dynamic_symbols()?);
    Ok(symbols)
}

/// The defined function and label symbols of an i386 ELF kernel.
///
/// # Errors
/// When the bytes are not a readable 32-bit x86 ELF file.
pub fn resolve_symbols(elf: &ElfFile<'_>) -> Result<SymbolMap, ElfError> {
    let mut map = SymbolMap::new();
    for s in code_symbols(elf)? {
        let addrs = map.entry(s.name.to_owned()).or_default();
        if !addrs.contains(&s.value) {
            addrs.push(s.value);
        }
    }
    Ok(map)
}

/// Function sizes by address, from the symbols' `st_size`: how many bytes shipped code
/// may occupy at an entry point. Labels without a size are left out.
///
/// # Errors
/// When the bytes are not a readable 32-bit x86 ELF file.
pub fn function_sizes(elf: &ElfFile<'_>) -> Result<BTreeMap<u32, u32>, ElfError> {
    let mut sizes = BTreeMap::new();
    for s in code_symbols(elf)? {
        if s.size > 0 {
            let room = sizes.entry(s.value).or_insert(s.size);
            *room = (*room).max(s.size);
        }
    }
    Ok(sizes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use services::ServiceRegistry;

    const FUNC: u8 = 2;
    const OBJECT: u8 = 1;
    const NOTYPE: u8 = 0;
    const GLOBAL: u8 = 1 << 4;
    const LOCAL: u8 = 0;

    fn len32(bytes: &[u8]) -> u32 {
        u32::try_from(bytes.len()).unwrap()
    }

    /// A minimal IA-32 ELF executable with a `.text` section and a symbol table holding
    /// `(name, value, info, section index)` entries.
    fn elf32(symbols: &[(&str, u32, u8, u16)]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 16];
        for &(name, value, info, shndx) in symbols {
            let off = len32(&strtab);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            symtab.extend_from_slice(&off.to_le_bytes());
            symtab.extend_from_slice(&value.to_le_bytes());
            // Functions get a size, labels none.
            let size: u32 = if info & 0xf == FUNC { 0x40 } else { 0 };
            symtab.extend_from_slice(&size.to_le_bytes());
            symtab.extend_from_slice(&[info, 0]);
            symtab.extend_from_slice(&shndx.to_le_bytes());
        }
        let shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0".to_vec();
        let text = vec![0xC3u8; 16];
        let mut body = Vec::new();
        let mut place = |bytes: &[u8]| {
            while body.len() % 4 != 0 {
                body.push(0);
            }
            let at = 52 + len32(&body);
            body.extend_from_slice(bytes);
            at
        };
        let text_off = place(&text);
        let sym_off = place(&symtab);
        let str_off = place(&strtab);
        let shstr_off = place(&shstrtab);
        while body.len() % 4 != 0 {
            body.push(0);
        }
        let shoff = 52 + len32(&body);
        // (name, type, flags, addr, offset, size, link, info, align, entsize)
        let sections: [[u32; 10]; 5] = [
            [0; 10],
            [1, 1, 6, 0xc010_0000, text_off, 16, 0, 0, 16, 0],
            [7, 2, 0, 0, sym_off, len32(&symtab), 3, 1, 4, 16],
            [15, 3, 0, 0, str_off, len32(&strtab), 0, 0, 1, 0],
            [23, 3, 0, 0, shstr_off, len32(&shstrtab), 0, 0, 1, 0],
        ];
        let mut elf = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
        elf.resize(16, 0);
        for half in [2u16, 3] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        for word in [1u32, 0xc010_0000, 0, shoff, 0] {
            elf.extend_from_slice(&word.to_le_bytes());
        }
        for half in [52u16, 32, 0, 40, 5, 4] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(&body);
        for s in sections {
            for w in s {
                elf.extend_from_slice(&w.to_le_bytes());
            }
        }
        elf
    }

    fn kernel() -> Vec<u8> {
        elf32(&[
            ("console_write", 0xc010_0000, GLOBAL | FUNC, 1),
            ("helper", 0xc010_0100, LOCAL | FUNC, 1),
            ("helper", 0xc010_0200, LOCAL | FUNC, 1),
            ("entry_label", 0xc010_0300, GLOBAL | NOTYPE, 1),
            ("jiffies", 0xc020_0000, GLOBAL | OBJECT, 1),
            ("imported", 0, GLOBAL | FUNC, 0),
        ])
    }

    fn symbols_of(bytes: &[u8]) -> Result<SymbolMap, ElfError> {
        resolve_symbols(&ElfFile::parse(bytes)?)
    }

    #[test]
    fn reads_defined_functions_and_labels() {
        let map = symbols_of(&kernel()).unwrap();
        assert_eq!(map["console_write"], vec![0xc010_0000]);
        assert_eq!(map["helper"], vec![0xc010_0100, 0xc010_0200]);
        assert_eq!(map["entry_label"], vec![0xc010_0300]);
        assert!(
            !map.contains_key("jiffies"),
            "data symbols are not entry points"
        );
        assert!(
            !map.contains_key("imported"),
            "undefined symbols have no address"
        );
    }

    #[test]
    fn function_sizes_come_from_the_symbols() {
        let sizes = function_sizes(&ElfFile::parse(&kernel()).unwrap()).unwrap();
        assert_eq!(sizes.get(&0xc010_0000), Some(&0x40));
        assert_eq!(sizes.get(&0xc010_0300), None, "labels have no size");
    }

    #[test]
    fn rejects_non_elf_and_other_machines() {
        assert_eq!(symbols_of(b"MZ not an elf"), Err(ElfError::NotElf));
        let mut elf = kernel();
        elf[18] = 0x3E;
        assert!(matches!(
            symbols_of(&elf),
            Err(ElfError::NotI386 { machine: 0x3E, .. })
        ));
    }

    fn bind(bindings: &str) -> Result<EntryPoints, BindError> {
        let policy = Policy::from_toml(bindings, "p.toml", &ServiceRegistry::new()).unwrap();
        policy.entry_points(&symbols_of(&kernel()).unwrap())
    }

    #[test]
    fn bindings_resolve_to_addresses() {
        let eps = bind(
            "[[bindings]]\nsymbol = \"console_write\"\nop = \"clock.wall\"\n\
             [[bindings]]\naddress = 0xc0100400\nop = \"clock.monotonic\"\n",
        )
        .unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps.get(0xc010_0000).unwrap().line, 1);
        assert_eq!(
            eps.get(0xc010_0400).unwrap().op,
            crate::Operation::ClockMonotonic
        );
        assert!(eps.get(0xc010_0001).is_none());
    }

    #[test]
    fn binding_errors_name_the_policy_line() {
        assert_eq!(
            bind("\n[[bindings]]\nsymbol = \"nope\"\nop = \"clock.wall\"\n").unwrap_err(),
            BindError::UnknownSymbol {
                line: 2,
                symbol: "nope".into()
            }
        );
        assert!(matches!(
            bind("[[bindings]]\nsymbol = \"helper\"\nop = \"clock.wall\"\n").unwrap_err(),
            BindError::AmbiguousSymbol { line: 1, .. }
        ));
        assert_eq!(
            bind(
                "[[bindings]]\nsymbol = \"console_write\"\nop = \"clock.wall\"\n\
                 [[bindings]]\naddress = 0xc0100000\nop = \"clock.wall\"\n"
            )
            .unwrap_err(),
            BindError::Duplicate {
                line: 4,
                first_line: 1,
                addr: 0xc010_0000
            }
        );
    }
}
