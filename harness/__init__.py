"""The test and benchmark harness: real servers (kube-apiserver, Consul, BIND, kube-proxy),
network namespaces, an in-memory API for fast daemon tests, and helpers to run syncd.
Shared by tests/ and bench/; never imported by syncd itself."""
