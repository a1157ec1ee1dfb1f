//! The store's role traits, one file each.

mod claims;
mod events;
mod nodes;
mod queues;
mod registry;
mod retention;
mod runs;
