//! AFL entry point of [`fuzz::targets::emulate`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::emulate::run(data));
}
