//! AFL entry point of [`fuzz::targets::translate`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::translate::run(data));
}
