//! The Cloudreve v4 protocol of `uploadfs serve` (not implemented yet).

use axum::Router;

use super::AppState;

/// In-memory state of open upload sessions.
#[derive(Default)]
pub struct ProtoState {}

impl ProtoState {
    /// Number of upload sessions currently open (introspection).
    pub fn open_sessions(&self) -> usize {
        0
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
}
