// Package proxybench is `gwlbproxy bench proxy`: gwlbproxy against Squid
// (Debian squid-openssl, ssl-bump) side by side in one run, on the same
// machine, with the same client and the same upstream, for bumped HTTPS
// with a new connection per request and with keep-alive. It prints
// requests/s, p50/p99 latency, the CPU time each proxy used (and so
// requests per CPU-second) and the gwlbproxy/Squid ratios.
//
// Topology, three private network namespaces with random names, always
// deleted at the end:
//
//	client 198.18.10.2 --veth-- router 198.18.10.1 | 203.0.113.1 --veth-- upstream 203.0.113.10
//
// The router forwards. Its nftables table (one prerouting chain at mangle
// priority, written with google/nftables through the namespace's fd) has
//
//	meta l4proto tcp socket transparent 1 meta mark set 0x1 accept
//	iifname "pbr0" tcp dport 443 tproxy ip to 127.0.0.1:<port> meta mark set 0x1 accept
//
// with `ip rule fwmark 0x1 lookup 100` and `local 0.0.0.0/0 dev lo table
// 100` (netlink), the recipe of the team's TPROXY note. The second rule
// points at the proxy under test, or is absent for the no-proxy baseline.
//
// The upstream is an HTTPS (HTTP/1.1) server in this process, listening in
// the upstream namespace, with its own CA, returning a fixed body (1 KiB).
// The client is this process too: each connection's socket is created in
// the client namespace, and it speaks HTTP/1.1 over TLS 1.3 with X25519
// (OpenSSL 3.0 under Squid has no hybrid post-quantum group; Go would
// otherwise pick X25519MLKEM768 with gwlbproxy only), full handshakes, no
// session resumption, SNI and Host "bench.test".
//
// Both proxies bump with the same ECDSA P-256 CA (ca.Init), trust the
// upstream CA, allow everything, log every request to a file, and are
// pinned to one core (every thread of the process tree, sched_setaffinity);
// this process (client and upstream) is pinned to the other:
//   - gwlbproxy runs as the real binary (`gwlbproxy bench proxy-server`,
//     ServerMain) in the router namespace via nsexec, GOMAXPROCS=1: proxy.New
//     with a ca.Minter, an IP_TRANSPARENT listener whose accepted
//     connections carry the original destination as LocalAddr, HTTP/2 off
//     (the client and Squid speak HTTP/1.1), records appended to a file
//     through a 64 KiB buffer. It dials upstream from its own address.
//   - Squid runs as `squid -N` (one process, no SMP) through `ip netns exec`
//     with https_port ... tproxy ssl-bump, peek at step 1 then bump all,
//     security_file_certgen with a memory cache, access.log via stdio,
//     spoof_client_ip deny all (it too connects from its own address), a
//     hosts file for the Host-vs-destination check (no DNS). Its helpers are
//     counted in its CPU time.
//
// Destination binding: gwlbproxy runs with its default configuration,
// binding on, asking a DNS server (proxy/resolve/dnstest) in the upstream
// namespace on 203.0.113.10:53 that gives Host the upstream's address with
// a TTL longer than the run, so every connection takes the cache-hit path.
// With CompareBinding (default) a second gwlbproxy run with
// proxy.binding.mode off gives the row "gw-bindoff", and the table ends
// with binding's cost per scenario (target under 2 %).
//
// Each scenario runs Warmup, then Duration with Conns workers doing one
// request after another. Latency runs from the start of a request
// (including connect and handshake for new connections) to the last body
// byte. The proxy's CPU time is user+system from /proc/<pid>/stat over the
// measured interval; requests per CPU-second is the honest "per core"
// figure when the client rather than the proxy is the bottleneck (on a
// two-core machine the client's core saturates first in the keep-alive and
// no-proxy rows) or when other work shares the proxy's core. With Rounds > 1
// the proxies take turns and each row sums its rounds.
//
// Both proxies pay the same kernel cost per keep-alive request (one read
// and one write on each side; over veth a write also runs the receiving
// namespace's TCP input), so requests per CPU-second compare user-space
// efficiency only partly: the ratio between two proxies is bounded by how
// much of the slower one's time is that shared kernel cost.
package proxybench
