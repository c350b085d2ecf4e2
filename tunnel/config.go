//go:build linux

package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/gwlbproxy/gwlbproxy/tunnel/flow"
	"github.com/gwlbproxy/gwlbproxy/tunnel/geneve"
)

// Config configures the tunnel daemon. Yaml keys are relative to the
// component's section (the lead mounts it as "tunnel").
type Config struct {
	// Listen is the local address GENEVE is received on. "0.0.0.0"
	// receives on every IPv4 address; "::" is dual-stack (IPv4 and IPv6
	// underlay). Replies always leave from the address a flow arrived on.
	Listen netip.Addr `yaml:"listen"`
	// Port is the GENEVE port (6081). Replies go to this port on GWLB.
	Port uint16 `yaml:"port"`
	// AllowedSources are the networks GWLB sends from (its subnets).
	// GENEVE from anywhere else is dropped and counted: anyone who can
	// reach UDP 6081 could otherwise inject traffic. Required; there is
	// deliberately no "empty means anywhere" — write 0.0.0.0/0 and ::/0
	// to mean it.
	AllowedSources []netip.Prefix `yaml:"allowed_sources"`
	// MTU of the gwi-/gwo- interfaces: GWLB carries 8500-byte inner
	// packets and silently drops larger replies.
	MTU int `yaml:"mtu"`
	// Workers is the number of packet workers, each with its own UDP
	// socket (SO_REUSEPORT) and its own queue on every tun device. 0 means
	// one per CPU.
	Workers int `yaml:"workers"`
	// Batch is the number of packets moved per system call.
	Batch int `yaml:"batch"`
	// SocketBuffer is SO_RCVBUF of each UDP socket, in bytes.
	SocketBuffer int `yaml:"socket_buffer"`
	// TxQueueLen is the kernel transmit queue of each tun device.
	TxQueueLen int `yaml:"tx_queue_len"`
	// Offload opens the tun devices with virtio-net headers and TCP/UDP
	// segmentation offload: packets of one flow received in a batch are
	// written to gwi- as one GSO super-packet, and super-packets the kernel
	// routes back are split into MTU-sized packets before encapsulation.
	// Per-packet kernel work drops by the merge factor. Falls back to one
	// packet per system call when the kernel refuses (logged once per
	// tunnel). Disable only to compare.
	Offload bool `yaml:"offload"`
	// Flows configures each tunnel's flow table (one table per GWLB
	// endpoint, so overlapping client CIDRs behind different endpoints do
	// not collide). max_entries is per tunnel.
	Flows flow.TableConfig `yaml:"flows"`
	// MaxTunnels bounds the number of tunnel pairs (GWLB endpoints).
	MaxTunnels int `yaml:"max_tunnels"`
	// PendingPackets is how many packets of a new tunnel are queued while
	// its interfaces, steering and hooks are set up; more are dropped.
	PendingPackets int `yaml:"pending_packets"`
	// IdleTimeout destroys a tunnel pair after this long without traffic
	// in either direction: GENEVE packets in, or return packets that found
	// their flow (the kernel's own chatter on the tun devices does not
	// count). 0 keeps tunnels until shutdown.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// CreateHook and DestroyHook are executables run as
	// `<hook> CREATE|DESTROY gwi-<X> gwo-<X> <endpoint id, 17 hex digits>`,
	// exactly like gwlbtun's -c and -r scripts. Empty: none.
	CreateHook  string `yaml:"create_hook"`
	DestroyHook string `yaml:"destroy_hook"`
	// HookTimeout kills a hook that runs longer.
	HookTimeout time.Duration `yaml:"hook_timeout"`
	// ObserverTimeout bounds Observer.PairUp/PairDown.
	ObserverTimeout time.Duration `yaml:"observer_timeout"`

	// Datapath selects where packets are decapsulated and encapsulated:
	// "ebpf" (tc BPF programs on the underlay and the tun devices, see
	// tunnel/fastpath; start fails if the kernel refuses them), "userspace"
	// (the workers), or "auto" (ebpf where the kernel allows, else
	// userspace; one log line says which and why). With ebpf, whatever the
	// programs do not handle still takes the userspace path.
	Datapath string `yaml:"datapath"`
}

// Datapath values.
const (
	DatapathAuto      = "auto"
	DatapathEBPF      = "ebpf"
	DatapathUserspace = "userspace"
)

// DefaultConfig returns every default. AllowedSources has none and must be
// set: Validate fails until it is.
func DefaultConfig() Config {
	return Config{
		Listen:          netip.IPv4Unspecified(),
		Port:            geneve.Port,
		MTU:             8500,
		Workers:         0,
		Batch:           64,
		SocketBuffer:    8 << 20,
		TxQueueLen:      1000,
		Offload:         true,
		Flows:           flow.DefaultTableConfig(),
		MaxTunnels:      256,
		PendingPackets:  256,
		IdleTimeout:     0,
		HookTimeout:     30 * time.Second,
		ObserverTimeout: 15 * time.Second,
		Datapath:        DatapathAuto,
	}
}

// Validate checks the configuration. Messages start with the yaml key.
func (c Config) Validate() error {
	switch {
	case !c.Listen.IsValid():
		return errors.New("listen: missing local address")
	case c.Port == 0:
		return errors.New("port: must be 1..65535")
	case len(c.AllowedSources) == 0:
		return errors.New("allowed_sources: required (the GWLB subnets; 0.0.0.0/0 accepts GENEVE from anywhere)")
	case c.MTU < 576 || c.MTU > 9001:
		return fmt.Errorf("mtu: %d out of range 576..9001", c.MTU)
	case c.Workers < 0 || c.Workers > 256:
		return fmt.Errorf("workers: %d out of range 0..256", c.Workers)
	case c.Batch < 1 || c.Batch > 1024:
		return fmt.Errorf("batch: %d out of range 1..1024", c.Batch)
	case c.SocketBuffer < 0 || c.SocketBuffer > 1<<30:
		return fmt.Errorf("socket_buffer: %d out of range 0..%d", c.SocketBuffer, 1<<30)
	case c.TxQueueLen < 0 || c.TxQueueLen > 1<<20:
		return fmt.Errorf("tx_queue_len: %d out of range 0..%d", c.TxQueueLen, 1<<20)
	case c.MaxTunnels < 1 || c.MaxTunnels > 65535:
		return fmt.Errorf("max_tunnels: %d out of range 1..65535", c.MaxTunnels)
	case c.PendingPackets < 0 || c.PendingPackets > 65536:
		return fmt.Errorf("pending_packets: %d out of range 0..65536", c.PendingPackets)
	case c.IdleTimeout < 0 || (c.IdleTimeout > 0 && c.IdleTimeout < time.Second):
		return fmt.Errorf("idle_timeout: %s must be 0 (never) or at least 1s", c.IdleTimeout)
	case c.HookTimeout < time.Second:
		return fmt.Errorf("hook_timeout: %s below 1s", c.HookTimeout)
	case c.ObserverTimeout < time.Second:
		return fmt.Errorf("observer_timeout: %s below 1s", c.ObserverTimeout)
	}
	switch c.Datapath {
	case DatapathAuto, DatapathEBPF, DatapathUserspace:
	default:
		return fmt.Errorf("datapath: %q must be auto, ebpf or userspace", c.Datapath)
	}
	for i, p := range c.AllowedSources {
		if !p.IsValid() {
			return fmt.Errorf("allowed_sources[%d]: invalid prefix", i)
		}
	}
	if err := c.Flows.Validate(); err != nil {
		return fmt.Errorf("flows.%w", err)
	}
	for _, h := range []struct{ key, path string }{{"create_hook", c.CreateHook}, {"destroy_hook", c.DestroyHook}} {
		if h.path == "" {
			continue
		}
		if !filepath.IsAbs(h.path) {
			return fmt.Errorf("%s: %q must be an absolute path", h.key, h.path)
		}
		st, err := os.Stat(h.path)
		if err != nil {
			return fmt.Errorf("%s: %w", h.key, err)
		}
		if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s: %q is not executable", h.key, h.path)
		}
	}
	return nil
}

func (c Config) workers(numCPU int) int {
	if c.Workers > 0 {
		return c.Workers
	}
	return max(numCPU, 1)
}
