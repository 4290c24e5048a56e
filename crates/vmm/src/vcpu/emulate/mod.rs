//! Emulation.
