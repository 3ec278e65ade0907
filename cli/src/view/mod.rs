//! What people read: pure functions from objects to text. The Kubernetes I/O is in
//! [`crate::cluster`].

pub mod format;
pub mod table;
pub mod tree;

#[cfg(test)]
pub mod fixtures;
