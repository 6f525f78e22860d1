//! The thin fuser adapter (not implemented yet).
