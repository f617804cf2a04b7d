//! The leash lab.
