//! RabbitMQ (AMQP 0-9-1) for celeriac, with Celery's exact topology so celeriac and Python
//! Celery processes share queues on one vhost. See `docs/amqp.md`.

mod broker;
mod codec;
mod consumer;
mod dead_letters;
mod events;
mod mailbox;
mod revocations;
mod rpc;
mod session;
mod topology;
mod url;

pub use broker::AmqpBroker;
pub use codec::{from_table, to_table};
pub use rpc::RpcBackend;
pub use url::{redact, AmqpUrl};
