//! Integration tests live in `tests/`; see each file for what it guards.
