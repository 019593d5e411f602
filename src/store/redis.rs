//! Redis store: see module doc of `store`.
