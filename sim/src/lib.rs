//! The simulator: not built yet (issue #5).
