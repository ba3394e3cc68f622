//! The demo app as an installed binary (`celeriac-demo worker`), for tests and interop suites.

fn main() -> std::process::ExitCode {
    celeriac_cli::run(celeriac_demo::app())
}
