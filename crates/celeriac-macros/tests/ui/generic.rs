use celeriac_macros::task;

#[task]
async fn a<T>(x: T) -> T {
    x
}

#[task]
fn b(x: u8) -> u8
where
    u8: Copy,
{
    x
}

fn main() {}
