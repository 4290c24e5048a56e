//! Guest RAM and the reserved guest linear address space.
