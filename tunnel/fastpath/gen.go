//go:build linux

package fastpath

// The BPF object is generated and committed so a build needs no clang.
// .ci/run regenerates it with Debian's clang and fails on a difference:
// the flags are pinned and debug paths are made relative.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -tags linux -target bpfel -type flow_key -type flow -type tstat -type tunnel -type dev fastpath bpf/fastpath.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
