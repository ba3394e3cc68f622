use celeriac_macros::task;

#[task(rate_limit = "10/d")]
async fn a() {}

#[task(rate_limit = "0/s")]
async fn b() {}

#[task(rate_limit = 10)]
async fn c() {}

fn main() {}
