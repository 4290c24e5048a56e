//! AFL entry point of [`fuzz::targets::scan`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::scan::run(data));
}
