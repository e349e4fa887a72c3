//! Board support (issue 4).
