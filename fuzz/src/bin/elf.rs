//! AFL entry point of [`fuzz::targets::elf`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::elf::run(data));
}
