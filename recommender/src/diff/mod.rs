//! `leash diff`: what exactly changes between two policy states.

pub mod reach;
