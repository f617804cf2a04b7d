//! CIDR arithmetic for ipBlocks: the exact merge and the budgeted optimal cover.
//!
//! - [`merge`] (and the per-family [`merge_v4`], [`merge_v4_addrs`], …) returns the minimal set of
//!   canonical prefixes whose union is exactly the input: the same output as Python's
//!   `ipaddress.collapse_addresses`. It sorts and deduplicates plain integers, joins runs into
//!   ranges and cuts each range into maximal aligned blocks, all in one linear pass.
//! - [`cover`] keeps the exact merge when it has at most `max_cidrs` blocks. Otherwise it picks the
//!   cover of at most `max_cidrs` prefixes that allows the fewest unobserved addresses, by a dynamic
//!   program over the compressed binary trie of the exact blocks. It never chooses a prefix shorter
//!   than `max_prefix` and never allows an unobserved address of a protected range (it carves those
//!   out with `except`). When the budget cannot be met under these rules it returns the cover with
//!   the fewest blocks and says so in [`Cover::budget_met`].
//!
//! IPv4 and IPv6 are handled separately; the combined entry points put IPv4 first.
//!
//! Files: `word.rs` holds the shared word types (an address of one family as an integer, counts,
//! costs), `merge.rs` the exact merge, `cover.rs` the budgeted cover.

mod cover;
mod merge;
mod word;

pub use cover::{Block, Cover, CoverOptions, builtin_protected, cover, cover_addrs, cover_keeping};
pub use merge::{merge, merge_addrs, merge_v4, merge_v4_addrs, merge_v6, merge_v6_addrs};
pub use word::net_size;
