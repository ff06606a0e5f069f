//! What every handler can reach. No globals: tests build as many of these as they like.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::storage::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
}
