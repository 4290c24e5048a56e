//! What an exit means.
