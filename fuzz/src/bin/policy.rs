//! AFL entry point of [`fuzz::targets::policy`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::policy::run(data));
}
