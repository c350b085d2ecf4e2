// Package demo builds a complete, self-contained gwlbproxy deployment in
// network namespaces and drives traffic through it: the `gwlbproxy demo`
// subcommand and the end-to-end tests (cmd/internal/e2e) share it.
//
// The topology extends tunnel/gwlbsim's (two GWLB endpoints whose VPCs use
// the same client address, a GWLB simulator, the appliance namespace):
//
//	cli0 -- vpc0 [GWLB tun] -- srv0        endpoint A
//	cli1 -- vpc1 [GWLB tun] -- srv1        endpoint B (same addresses)
//	gwlb --(GENEVE 6081)-- app --eg0-- inet       (inet: nat mode only)
//
// The "internet" (HTTP/HTTPS servers with their own test CA, a UDP echo, an
// ICMP target and a decoy at 169.254.169.254) lives in inet in nat mode,
// reached through the appliance's egress veth eg0, and in srv0/srv1 in
// tunnel mode, where traffic goes back through GWLB and on from the VPC.
//
// The appliance is the real binary (`gwlbproxy run`, the production code
// path) started inside the app namespace with cmd/internal/nsexec. Its
// request records are read from its stdout (JSON lines); its own logs go to
// a file. Clients run in this process: sockets are created on an OS thread
// switched into a client namespace and keep that namespace afterwards, so a
// plain http.Client works; names resolve from a fixed map, never DNS.
//
// Everything needs root. Close removes every namespace (and with them every
// interface, rule and route) and stops the appliance.
package demo
