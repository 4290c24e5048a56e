//! AFL entry point of [`fuzz::targets::multiboot`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::multiboot::run(data));
}
