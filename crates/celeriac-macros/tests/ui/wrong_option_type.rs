use celeriac_macros::task;

#[task(acks_late = "yes")]
async fn a() {}

#[task(name = 42)]
async fn b() {}

#[task(max_retries = -1)]
async fn c() {}

#[task(time_limit = "30s")]
async fn d() {}

#[task(aliases = "old.e")]
async fn e() {}

#[task(retry_jitter = false)]
async fn f() {}

fn main() {}
