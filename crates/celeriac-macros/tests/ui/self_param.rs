use celeriac_macros::task;

#[task]
async fn a(self, x: u8) {}

fn main() {}
