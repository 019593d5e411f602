//! Embedded store (redb): see module doc of `store`.
