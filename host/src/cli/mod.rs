//! The command line's library half: the admin API client of `deploy`,
//! `rollback` and `list` ([`client`]), and what they print for a person
//! ([`print`](mod@print)).

pub mod client;
pub mod print;
