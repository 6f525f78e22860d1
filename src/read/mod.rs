//! The read path: block cache and range fetcher (not implemented yet).
