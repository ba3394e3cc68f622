use celeriac_macros::task;

#[task]
async fn a(ctx: TaskContext, again: celeriac::TaskContext) {}

fn main() {}
