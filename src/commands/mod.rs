//! The subcommands of the `outpost` binary, one file each: what a command line asks for,
//! turned into calls of the library. Parsing and dispatch are `main.rs`'s.

pub mod load;
pub mod replay;
pub mod serve;
pub mod warm;
