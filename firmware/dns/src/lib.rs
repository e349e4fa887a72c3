//! Filtering DNS resolver (issue 3). See ARCHITECTURE.md.
