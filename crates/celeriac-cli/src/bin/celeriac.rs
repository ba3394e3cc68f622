//! The task-agnostic `celeriac` command: every verb that needs no task code (call, result,
//! revoke, purge, queues, dead-letter). Workers are your own binary: `celeriac_cli::run(app)`.

fn main() -> std::process::ExitCode {
    celeriac_cli::run_without_tasks(celeriac::App::builder("celeriac").build())
}
