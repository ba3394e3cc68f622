//! kombu-compatible Redis broker (to be written).
pub struct RedisBroker;
