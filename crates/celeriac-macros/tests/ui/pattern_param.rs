use celeriac_macros::task;

#[task]
async fn a((x, y): (u8, u8)) {}

#[task]
async fn b(_: u8) {}

#[task]
async fn c(s: &str) {}

fn main() {}
