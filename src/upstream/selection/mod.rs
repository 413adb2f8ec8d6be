//! Backend selection strategies. Each works on indexes into a pool's backend list and takes a
//! `skip` predicate (backends already tried by this request, or not available).

pub mod least_conn;
pub mod ring;
pub mod round_robin;

pub use ring::Ring;
pub use round_robin::RoundRobin;
