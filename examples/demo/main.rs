//! `cargo run --example demo -- worker` starts a worker for the demo tasks; every other
//! celeriac verb works too (`call tasks.add --args '[2, 3]'`, `result <id> --wait 5`, ...).

fn main() -> std::process::ExitCode {
    celeriac_cli::run(celeriac_demo::app())
}
