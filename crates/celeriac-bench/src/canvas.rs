//! `--canvas`: workflows on one worker process. A group of N no-op members (send to every
//! result read), a chord of N no-op members (send to the body's result) and a chain of
//! `--chain-steps` steps (steps per second). N is `-n`.

use std::time::{Duration, Instant};

use celeriac::canvas::{chord, group, Sig};
use celeriac::serde_json::json;
use celeriac::App;

use crate::{count, inc, noop};

const WAIT: Duration = Duration::from_secs(600);

pub(crate) async fn run(
    app: &App,
    members: usize,
    chain_steps: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    // Warm: the worker is up and its connections open before anything is timed.
    noop::s().apply_async(app).await?.get(WAIT).await?;

    let started = Instant::now();
    let sent = group((0..members).map(|_| noop::s()))
        .apply_async(app)
        .await?;
    let send = started.elapsed();
    sent.get(WAIT).await?;
    let total = started.elapsed();
    println!(
        "group of {members}: every result read {:.3} s after the send began (send {:.3} s)",
        total.as_secs_f64(),
        send.as_secs_f64()
    );

    let started = Instant::now();
    let body = chord((0..members).map(|_| noop::s()), Sig::task::<count>(vec![]))
        .apply_async(app)
        .await?;
    let send = started.elapsed();
    let counted = body.get(WAIT).await?;
    let total = started.elapsed();
    assert_eq!(counted, members, "the body saw every header result");
    println!(
        "chord of {members}: body result {:.3} s after the send began (send {:.3} s)",
        total.as_secs_f64(),
        send.as_secs_f64()
    );

    let steps = (1..chain_steps).fold(Sig::from(inc::s(0)), |chain, _| {
        chain.then(Sig::task::<inc>(vec![]))
    });
    let started = Instant::now();
    let last = steps.apply_async(app).await?;
    let reached = last.get(WAIT).await?;
    let elapsed = started.elapsed();
    assert_eq!(reached, json!(chain_steps as i64), "every step ran");
    println!(
        "chain of {chain_steps}: {:.0} steps/s ({:.3} s)",
        chain_steps as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(())
}
