//! Gossip between gateway nodes on the wire: sealed datagrams ([`seal`]) carrying chitchat
//! messages, the check of those messages before chitchat applies them ([`chitchat`]), and the
//! values the gateway keeps in them ([`ha_pair`]).
//!
//! Pure functions over bytes, like the rest of this crate: the gateway's transport draws the
//! nonces, reads the clock, owns the socket and counts what it drops.

pub mod chitchat;
pub mod ha_pair;
pub mod seal;
