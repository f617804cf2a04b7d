//! Records shared by the leash kernel programs and `leash-agent`.
#![no_std]
