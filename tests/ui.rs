//! Misuse of the macros is a compile error with a clear message and span.
//! The expected messages live beside each case in `tests/ui/*.stderr`;
//! regenerate them with `TRYBUILD=overwrite cargo test --test ui` after a
//! deliberate change, and review the diff. `tests/ui/pass/*.rs` compile and
//! run: what the macros must accept.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
