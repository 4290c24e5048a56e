//! Finds, classifies and patches the sensitive IA-32 instructions of guest code.
