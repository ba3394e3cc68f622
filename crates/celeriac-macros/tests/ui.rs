//! Compile errors the `#[task]` macro itself reports (before any name resolution, so the
//! `celeriac` facade is not needed).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
