//! leash contracts.
