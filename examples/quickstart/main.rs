//! The quickstart: a worker and a client in one process, on the embedded store
//! (`sqlite://celeriac.db` unless `celeriac.toml` or `CELERIAC_BROKER_URL` says otherwise).
//!
//! `cargo run --release --example quickstart`

use std::time::Duration;

use celeriac::serde_json::json;
use celeriac::{Call, ConfigSources, ResultError};
use celeriac_demo::{add, echo, fail, flaky, mul, sleep};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = celeriac_demo::app();
    let loaded = app.config().load(&ConfigSources::from_process())?;
    let app = app.reconfigured(|config| *config = loaded.into_config());
    let mut config = app.worker_config();
    config.concurrency = 4;
    let worker = app.worker(config).await?;
    let shutdown = worker.shutdown_handle();
    println!("broker: {}", app.config().resolved_broker_url());
    let running = tokio::spawn(worker.run());

    let wait = Duration::from_secs(10);
    let sum = add::delay(&app, 2, 3).await?;
    println!(
        "tasks.add(2, 3)        -> {:?} [{}]",
        sum.get(wait).await?,
        sum.state().await?
    );

    let product = mul::s(6, 7)
        .countdown(Duration::from_millis(500))
        .apply_async(&app)
        .await?;
    println!(
        "tasks.mul(6, 7) in 0.5s, state now {}",
        product.state().await?
    );
    println!(
        "tasks.mul(6, 7)        -> {:?} [{}]",
        product.get(wait).await?,
        product.state().await?
    );

    let mut kwargs = celeriac::serde_json::Map::new();
    kwargs.insert("colour".into(), json!("green"));
    let echoed = Call::new("tasks.echo", vec![json!(1), json!("two")], kwargs)
        .send(&app)
        .await?;
    println!(
        "tasks.echo(1, 'two', colour='green') -> {}",
        echoed.get(wait).await?
    );

    let retried = flaky::delay(&app, 2).await?;
    println!(
        "tasks.flaky(2)         -> {:?} retries [{}]",
        retried.get(wait).await?,
        retried.state().await?
    );

    let slept = sleep::delay(&app, 0.2).await?;
    println!(
        "tasks.sleep(0.2)       -> {:?} [{}]",
        slept.get(wait).await?,
        slept.state().await?
    );

    let failed = fail::delay(&app, "boom".to_string()).await?;
    match failed.get(wait).await {
        Err(ResultError::Task(e)) => println!(
            "tasks.fail('boom')     -> raised {e} [{}]",
            failed.state().await?
        ),
        other => println!("tasks.fail('boom')     -> unexpected {other:?}"),
    }

    let later = echo::s(Default::default(), Default::default())
        .countdown(Duration::from_secs(3600))
        .apply_async(&app)
        .await?;
    later.revoke(false).await?;
    println!(
        "an echo due in 1 hour, revoked: state {} (it will never run)",
        later.state().await?
    );

    shutdown.graceful();
    running.await??;
    app.close().await?;
    Ok(())
}
