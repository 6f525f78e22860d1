//! The write path: stage files, digests, uploader, journal (not implemented yet).
