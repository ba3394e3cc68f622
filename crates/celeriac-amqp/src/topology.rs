//! Every name and declaration, matching what Celery 5.7 / kombu declare (vector 24), so
//! declarations are equivalent and RabbitMQ never answers `PRECONDITION_FAILED`.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::url::AmqpUrl;

/// Celery's remote-control fanout exchange (non-durable, not auto-delete: kombu's
/// `Mailbox._get_exchange` with `control_exchange = "celery"` and Celery's `type='fanout'`).
/// Requests are published to it with routing key `""`.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// Celery's remote-control reply exchange (direct, non-durable): a reply is published to it
/// with routing key = the caller's oid.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// Celery's event exchange (topic, durable; Celery's `event_exchange`). Events are published
/// to it with routing key = the event type with `-` replaced by `.` (`task.multi` for a list).
pub const EVENT_EXCHANGE: &str = "celeryev";
/// The binding key of a monitor's event queue: every event (Flower and `celery events` bind
/// `#`; only a worker's gossip binds `worker.#`).
pub const EVENT_BINDING_KEY: &str = "#";

/// `x-message-ttl` of pidbox queues, worker's and caller's alike: Celery's
/// `control_queue_ttl` (300 s) in kombu's integer milliseconds. A request nobody reads for
/// five minutes is stale.
pub const CONTROL_QUEUE_TTL_MS: i32 = 300_000;
/// `x-expires` of pidbox queues: Celery's `control_queue_expires` (10 s), so a mailbox
/// whose owner went away without deleting it disappears.
pub const CONTROL_QUEUE_EXPIRES_MS: i32 = 10_000;
/// `x-message-ttl` of a monitor's event queue: Celery's `event_queue_ttl` (5 s); a monitor
/// that cannot keep up loses old events rather than growing the queue.
pub const EVENT_QUEUE_TTL_MS: i32 = 5_000;
/// `x-expires` of a monitor's event queue: Celery's `event_queue_expires` (60 s).
pub const EVENT_QUEUE_EXPIRES_MS: i32 = 60_000;

/// A worker's mailbox: `<hostname>.celery.pidbox` (kombu's `Mailbox.get_queue`, namespace
/// `celery`). Its name is the worker's identity: RabbitMQ refuses (405 RESOURCE_LOCKED) a
/// second worker with the same hostname, because the queue is exclusive.
pub fn pidbox_queue(hostname: &str) -> String {
    format!("{hostname}.{PIDBOX_EXCHANGE}")
}

/// A caller's reply queue: `<oid>.reply.celery.pidbox` (kombu's `get_reply_queue`), bound
/// to [`REPLY_EXCHANGE`] with routing key `oid`.
pub fn reply_queue(oid: &str) -> String {
    format!("{oid}.{REPLY_EXCHANGE}")
}

/// A monitor's event queue: `celeryev.<id>` (Celery's `event_queue_prefix` + node id).
pub fn event_queue(id: &str) -> String {
    format!("{EVENT_EXCHANGE}.{id}")
}
/// Where celeriac keeps dead letters (durable classic queue).
pub const DEAD_LETTERS: &str = "celeriac.dead_letters";
/// Where celeriac records revocations durably (a stream).
pub const REVOCATIONS: &str = "celeriac.revocations";
/// kombu's native delayed delivery: bits in the routing key, 28 levels.
pub const DELAY_BITS: u32 = 28;
/// The exchange the ladder delivers into.
pub const DELAYED_DELIVERY: &str = "celery_delayed_delivery";

pub fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// kombu's `calculate_routing_key`: 28 binary digits of the delay in seconds, dot-separated,
/// then the original routing key.
pub fn delayed_routing_key(seconds: u64, routing_key: &str) -> String {
    let seconds = seconds.min((1 << DELAY_BITS) - 1);
    let bits = format!("{seconds:028b}");
    let mut out = String::with_capacity(56 + routing_key.len() + 1);
    for b in bits.chars() {
        out.push(b);
        out.push('.');
    }
    out.push_str(routing_key);
    out
}

/// The binding from the delivery exchange to a task queue: 28 single-word wildcards, then
/// the queue name (exact, unlike `#.<name>`, which would also match `other.<name>`).
pub fn delivery_binding_key(queue: &str) -> String {
    format!("{}{queue}", "*.".repeat(DELAY_BITS as usize))
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// The arguments of a task queue: `x-max-priority` / `x-queue-type` only when configured.
pub fn task_queue_arguments(url: &AmqpUrl) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(p) = url.max_priority {
        args.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(p)));
    }
    if url.quorum {
        args.insert("x-queue-type".into(), long("quorum"));
    }
    args
}

/// A task queue as Celery declares it: durable direct exchange named after the queue,
/// durable queue, binding with routing key = queue name.
pub async fn declare_task_queue(ch: &Channel, url: &AmqpUrl, queue: &str) -> lapin::Result<()> {
    ch.exchange_declare(
        queue.into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        task_queue_arguments(url),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        queue.into(),
        queue.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// The binding from kombu's delayed-delivery exchange to a task queue, so messages leaving
/// the delay ladder land there (Celery's worker makes it for the queues it consumes).
pub async fn bind_delayed_delivery(ch: &Channel, queue: &str) -> lapin::Result<()> {
    declare_delivery_exchange(ch).await?;
    ch.queue_bind(
        queue.into(),
        DELAYED_DELIVERY.into(),
        delivery_binding_key(queue).into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// kombu's `declare_native_delayed_delivery_exchanges_and_queues` with `queue_type='quorum'`
/// (Celery's default `broker_native_delayed_delivery_queue_type`): identical names, types
/// and arguments, so Python and celeriac share one ladder.
pub async fn declare_delay_ladder(ch: &Channel) -> lapin::Result<()> {
    let mut routing_key = String::from("1.#");
    for level in (0..DELAY_BITS).rev() {
        let current = level_name(level);
        ch.exchange_declare(
            current.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long("quorum"));
        args.insert("x-overflow".into(), long("reject-publish"));
        args.insert(
            "x-message-ttl".into(),
            // py-amqp's encoding: `I` when it fits 32 bits, else `l`.
            crate::codec::to_amqp(&serde_json::json!((1i64 << level) * 1000)),
        );
        let dlx = if level > 0 {
            level_name(level - 1)
        } else {
            DELAYED_DELIVERY.to_string()
        };
        args.insert("x-dead-letter-exchange".into(), long(&dlx));
        args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
        ch.queue_declare(
            current.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            current.as_str().into(),
            current.as_str().into(),
            routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        routing_key = format!("*.{routing_key}");
    }
    let mut routing_key = String::from("0.#");
    for level in (1..DELAY_BITS).rev() {
        let next = level_name(level - 1);
        ch.exchange_declare(
            next.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
        ch.exchange_bind(
            next.as_str().into(),
            level_name(level).as_str().into(),
            routing_key.as_str().into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        routing_key = format!("*.{routing_key}");
    }
    declare_delivery_exchange(ch).await?;
    ch.exchange_bind(
        DELAYED_DELIVERY.into(),
        level_name(0).as_str().into(),
        routing_key.as_str().into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

pub async fn declare_delivery_exchange(ch: &Channel) -> lapin::Result<()> {
    ch.exchange_declare(
        DELAYED_DELIVERY.into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await
}

/// Celery's event and remote-control exchanges exactly as vector 24 lists them.
pub async fn declare_celery_exchanges(ch: &Channel) -> lapin::Result<()> {
    ch.exchange_declare(
        EVENT_EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_exchange(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        PIDBOX_EXCHANGE.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        REPLY_EXCHANGE.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// The arguments of an expiring queue, typed as py-amqp sends them (`I`, 32-bit signed), so
/// RabbitMQ finds declarations by Python and by celeriac equivalent.
fn expiring_arguments(ttl_ms: i32, expires_ms: i32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl_ms));
    args.insert("x-expires".into(), AMQPValue::LongInt(expires_ms));
    args
}

/// A queue as Celery declares its pidbox and event queues by default: non-durable,
/// exclusive (`*_queue_exclusive = True`, so only the declaring connection may consume it)
/// and auto-delete (`auto_delete = not durable`: gone when its consumer goes).
fn exclusive_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: false,
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

/// Declares `queue` (an [`exclusive_queue`] with `args`) and binds it to `exchange` with
/// `key`. The exchange must exist.
async fn declare_bound_queue(
    ch: &Channel,
    queue: &str,
    args: FieldTable,
    exchange: &str,
    key: &str,
) -> lapin::Result<()> {
    ch.queue_declare(queue.into(), exclusive_queue(), args)
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// A worker's mailbox as Celery's worker declares it (vector 24): the broadcast exchanges,
/// then `<hostname>.celery.pidbox` with `x-message-ttl` 300 000 and `x-expires` 10 000,
/// bound to `celery.pidbox` with key `""`. Must be consumed on the same connection.
pub async fn declare_pidbox_queue(ch: &Channel, hostname: &str) -> lapin::Result<()> {
    declare_celery_exchanges(ch).await?;
    let args = expiring_arguments(CONTROL_QUEUE_TTL_MS, CONTROL_QUEUE_EXPIRES_MS);
    declare_bound_queue(ch, &pidbox_queue(hostname), args, PIDBOX_EXCHANGE, "").await
}

/// A caller's reply queue as Celery's `app.control` declares it (vector 24): the broadcast
/// exchanges, then `<oid>.reply.celery.pidbox` with the pidbox arguments (Celery passes
/// `control_queue_ttl` and `control_queue_expires` to the reply queue too), bound to
/// `reply.celery.pidbox` with key `oid`. Must be consumed on the same connection.
pub async fn declare_reply_queue(ch: &Channel, oid: &str) -> lapin::Result<()> {
    declare_celery_exchanges(ch).await?;
    let args = expiring_arguments(CONTROL_QUEUE_TTL_MS, CONTROL_QUEUE_EXPIRES_MS);
    declare_bound_queue(ch, &reply_queue(oid), args, REPLY_EXCHANGE, oid).await
}

/// A monitor's event queue as Celery's `EventReceiver` declares it (vector 24): the event
/// exchange, then `celeryev.<id>` with `x-message-ttl` 5 000 and `x-expires` 60 000, bound
/// to `celeryev` with `#`. Must be consumed on the same connection.
pub async fn declare_event_queue(ch: &Channel, id: &str) -> lapin::Result<()> {
    declare_celery_exchanges(ch).await?;
    let args = expiring_arguments(EVENT_QUEUE_TTL_MS, EVENT_QUEUE_EXPIRES_MS);
    declare_bound_queue(
        ch,
        &event_queue(id),
        args,
        EVENT_EXCHANGE,
        EVENT_BINDING_KEY,
    )
    .await
}

/// celeriac's dead-letter queue (durable classic).
pub async fn declare_dead_letter_queue(ch: &Channel) -> lapin::Result<()> {
    ch.queue_declare(
        DEAD_LETTERS.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Retention of the revocation stream: RabbitMQ drops whole segments, oldest first, past
/// this size (a record is ~200 bytes, so well over the 100 000 revokes kept in memory).
pub const REVOCATIONS_MAX_BYTES: i64 = 64 * 1024 * 1024;
pub const REVOCATIONS_SEGMENT_BYTES: i64 = 4 * 1024 * 1024;

/// The revocation stream (`x-queue-type: stream`, durable, bounded by size). Every celeriac
/// process declares it with these exact arguments.
pub async fn declare_revocation_stream(ch: &Channel) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long("stream"));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(REVOCATIONS_MAX_BYTES),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(REVOCATIONS_SEGMENT_BYTES),
    );
    ch.queue_declare(
        REVOCATIONS.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_match_kombu() {
        let k = delayed_routing_key(5, "celery");
        assert_eq!(k, format!("{}1.0.1.celery", "0.".repeat(25)));
        assert_eq!(k.split('.').count(), 29);
        assert_eq!(delivery_binding_key("q").split('.').count(), 29);
    }

    #[test]
    fn pidbox_and_event_names_match_vector_24() {
        assert_eq!(pidbox_queue("w1@capture"), "w1@capture.celery.pidbox");
        assert_eq!(reply_queue("97636c09"), "97636c09.reply.celery.pidbox");
        assert_eq!(event_queue("95e8517b"), "celeryev.95e8517b");
    }
}
