use celeriac_macros::task;

#[task(priority = 10)]
async fn a() {}

#[task(priority = -1)]
async fn b() {}

fn main() {}
