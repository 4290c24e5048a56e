//! AFL entry point of [`fuzz::targets::bzimage`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::bzimage::run(data));
}
