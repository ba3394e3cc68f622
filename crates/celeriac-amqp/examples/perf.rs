//! Broker-only throughput check: `cargo run --release -p celeriac-amqp --example perf -- URL N`.
//! `DM=1` publishes transient messages; `PAR`, `CHUNK`, `CONNS` shape the overlapped-batch
//! phase (concurrent batches of CHUNK over CONNS publisher connections).
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_amqp::AmqpBroker;
use celeriac_core::broker::{Broker, ConsumerSpec, Publish, RawMessage};
use serde_json::json;

fn msg() -> Publish {
    let id = uuid::Uuid::new_v4().to_string();
    let h = json!({"lang":"py","task":"bench.noop","id":id,"shadow":null,"eta":null,"expires":null,
        "group":null,"group_index":null,"retries":0,"timelimit":[null,null],"root_id":id,
        "parent_id":null,"argsrepr":"()","kwargsrepr":"{}","origin":"gen1@host","ignore_result":false,
        "replaced_task_nesting":0,"stamped_headers":null,"stamps":{}});
    let dm: u8 = std::env::var("DM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let p = json!({"correlation_id": id, "reply_to": "x", "delivery_mode": dm});
    Publish {
        queue: "celeriac_perf".into(),
        priority: None,
        not_before: None,
        message: RawMessage {
            headers: h.as_object().unwrap().clone(),
            properties: p.as_object().unwrap().clone(),
            content_type: "application/json".into(),
            content_encoding: "utf-8".into(),
            body:
                br#"[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#
                    .to_vec(),
        },
    }
}

#[tokio::main]
async fn main() {
    let mut a = std::env::args().skip(1);
    let url = a
        .next()
        .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let n: usize = a.next().map(|s| s.parse().unwrap()).unwrap_or(20000);
    let t = Instant::now();
    let b = AmqpBroker::open(&url).await.unwrap();
    println!("open: {:?}", t.elapsed());
    b.purge().unwrap().purge("celeriac_perf").await.unwrap();
    let t = Instant::now();
    for _ in 0..n / 10 {
        b.publish(msg()).await.unwrap();
    }
    println!(
        "sequential: {:.0}/s",
        (n / 10) as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut hs = vec![];
    for _ in 0..8 {
        let b: Arc<AmqpBroker> = b.clone();
        hs.push(tokio::spawn(async move {
            for _ in 0..n / 8 {
                b.publish(msg()).await.unwrap();
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    println!(
        "8 producers: {:.0}/s",
        (n / 8 * 8) as f64 / t.elapsed().as_secs_f64()
    );
    let c0 = cpu();
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(10000);
        b.publish_batch((0..k).map(|_| msg()).collect())
            .await
            .unwrap();
        left -= k;
    }
    println!(
        "batch: {:.0}/s cpu {:.2}s",
        n as f64 / t.elapsed().as_secs_f64(),
        cpu() - c0
    );
    // Overlapped batches: PAR tasks, each sending CHUNK-message batches, over CONNS brokers.
    let par: usize = std::env::var("PAR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let chunk: usize = std::env::var("CHUNK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let conns: usize = std::env::var("CONNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut brokers = vec![b.clone()];
    for _ in 1..conns {
        brokers.push(AmqpBroker::open(&url).await.unwrap());
    }
    let c0 = cpu();
    let t = Instant::now();
    let mut hs = vec![];
    for i in 0..par {
        let b = brokers[i % conns].clone();
        hs.push(tokio::spawn(async move {
            let mut left = n / par;
            while left > 0 {
                let k = left.min(chunk);
                b.publish_batch((0..k).map(|_| msg()).collect())
                    .await
                    .unwrap();
                left -= k;
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    println!(
        "overlapped batch (par {par}, chunk {chunk}, conns {conns}): {:.0}/s cpu {:.2}s",
        (n / par * par) as f64 / t.elapsed().as_secs_f64(),
        cpu() - c0
    );
    let total = n / 10 + n / 8 * 8 + n + n / par * par;
    let c = b
        .consumer(ConsumerSpec {
            queues: vec!["celeriac_perf".into()],
            name: "perf".into(),
            prefetch: 400,
        })
        .await
        .unwrap();
    let t = Instant::now();
    let mut got = 0;
    while got < total {
        let mut d = c.fetch(100, Duration::from_secs(2)).await.unwrap();
        if d.is_empty() {
            let stalled = Instant::now();
            while d.is_empty() && stalled.elapsed() < Duration::from_secs(60) {
                d = c.fetch(100, Duration::from_secs(1)).await.unwrap();
            }
            println!(
                "stalled at {got} for {:?}",
                stalled.elapsed() + Duration::from_secs(2)
            );
            assert!(!d.is_empty(), "stalled at {got} for good");
        }
        got += d.len();
        let tags: Vec<_> = d.into_iter().map(|d| d.tag).collect();
        c.ack(&tags).await.unwrap();
    }
    println!(
        "consume+ack: {:.0}/s",
        total as f64 / t.elapsed().as_secs_f64()
    );
    c.close().await.unwrap();
}

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
