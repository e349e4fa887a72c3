//! Test bed library: namespaces, test hosts, WireGuard clients.
