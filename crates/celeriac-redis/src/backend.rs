//! Celery-compatible Redis result backend (to be written).
pub struct RedisBackend;
