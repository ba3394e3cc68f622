//! The verbs about queues: `queues`, `purge`, `dead-letter`.

use std::io::IsTerminal;

use celeriac::App;

use crate::args::DeadLetterCommand;

pub(crate) async fn purge(app: &App, queues: Vec<String>, force: bool) -> Result<(), String> {
    let queues = if queues.is_empty() {
        vec![app.config().task_default_queue.clone()]
    } else {
        queues
    };
    if !force {
        confirm_purge(&queues)?;
    }
    let broker = app.broker().await.map_err(|e| e.to_string())?;
    let purge = broker
        .purge()
        .ok_or_else(|| format!("broker {} cannot purge", broker.display_url()))?;
    for q in queues {
        let n = purge.purge(&q).await.map_err(|e| e.to_string())?;
        println!(
            "Purged {n} message{} from queue {q}.",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

fn confirm_purge(queues: &[String]) -> Result<(), String> {
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "refusing to purge {} without confirmation: pass -f",
            queues.join(", ")
        ));
    }
    eprint!(
        "Purge every waiting message from {}? [y/N] ",
        queues.join(", ")
    );
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if answer.trim().eq_ignore_ascii_case("y") {
        Ok(())
    } else {
        Err("purge cancelled".into())
    }
}

pub(crate) async fn lengths(app: &App, queues: Vec<String>) -> Result<(), String> {
    let broker = app.broker().await.map_err(|e| e.to_string())?;
    let stats = broker.queue_stats().ok_or_else(|| {
        format!(
            "broker {} cannot report queue lengths",
            broker.display_url()
        )
    })?;
    let lengths = stats
        .queue_lengths(&queues)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{:<24} {:>10} {:>10} {:>10}",
        "queue", "ready", "scheduled", "unacked"
    );
    // What the engine cannot see is shown as `-`, not as a misleading 0.
    let coverage = stats.coverage();
    let shown = |known: bool, n: u64| if known { n.to_string() } else { "-".into() };
    for q in lengths {
        println!(
            "{:<24} {:>10} {:>10} {:>10}",
            q.queue,
            q.ready,
            shown(coverage.scheduled, q.scheduled),
            shown(coverage.unacked_all_consumers, q.unacked)
        );
    }
    if !coverage.lists_all_queues && queues.is_empty() {
        println!("(this broker lists only queues this process declared: name them with -Q)");
    }
    Ok(())
}

pub(crate) async fn dead_letters(app: &App, command: DeadLetterCommand) -> Result<(), String> {
    let broker = app.broker().await.map_err(|e| e.to_string())?;
    let dead = broker
        .dead_letters()
        .ok_or_else(|| format!("broker {} has no dead-letter queue", broker.display_url()))?;
    match command {
        DeadLetterCommand::List { limit } => {
            let letters = dead
                .list_dead_letters(limit)
                .await
                .map_err(|e| e.to_string())?;
            if letters.is_empty() {
                println!("No dead letters.");
            }
            for d in letters {
                println!(
                    "{}  {}  queue={}  task={} id={}  reason: {}",
                    d.id,
                    celeriac::core::time::to_display(d.at),
                    d.queue,
                    d.message.task_name().unwrap_or("?"),
                    d.message.task_id().unwrap_or("?"),
                    d.reason
                );
            }
        }
        DeadLetterCommand::Requeue { ids, all } => {
            if ids.is_empty() && !all {
                return Err("name the dead letters to requeue, or pass --all".into());
            }
            let n = dead
                .requeue_dead_letters(&ids)
                .await
                .map_err(|e| e.to_string())?;
            println!("Requeued {n} message{}.", if n == 1 { "" } else { "s" });
        }
    }
    Ok(())
}
