use celeriac_macros::task;

#[task(name = "tasks.a", retries = 3)]
async fn a() {}

#[task(queue = "a", queue = "b")]
async fn b() {}

fn main() {}
