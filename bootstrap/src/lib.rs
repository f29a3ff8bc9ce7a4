//! The bootstrap node: not built yet (issue #3).
