//! AFL entry point of [`fuzz::targets::service_node`].

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz::targets::service_node::run(data));
}
