//! Integration tests: the real `switchyard` binary against real origins over loopback sockets.

mod common;

mod admin;
mod balancing;
mod cli;
mod health;
mod lifecycle;
mod routing;
