//! The SQLite catalog of nodes and the upload journal (not implemented yet).
