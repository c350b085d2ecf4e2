//go:build linux

package tunnel

import "context"

// Pair describes one tunnel pair: the gwi-/gwo- tun devices created for one
// GWLB endpoint. It is what the steering layer needs to route a tunnel's
// traffic.
type Pair struct {
	// EndpointID is the GWLB endpoint (VPC endpoint ENI) id from GENEVE
	// option 0x0108/1.
	EndpointID uint64
	// In and Out are the interface names, gwi-<X> and gwo-<X>.
	In, Out string
	// InIndex and OutIndex are the kernel interface indexes.
	InIndex, OutIndex int
	// Slot is a small integer (1..65535) unique among live pairs and reused
	// after a pair is destroyed. Steering derives per-tunnel marks and
	// routing table numbers from it.
	Slot uint16
}

// Observer is told when a pair comes up or goes down. PairUp runs after the
// interfaces exist and are up and before the CREATE hook; packets for the
// tunnel are queued, not dropped, while it runs. PairDown runs before the
// interfaces are removed and after the DESTROY hook. Both must be safe for
// concurrent use for different pairs.
type Observer interface {
	PairUp(ctx context.Context, p Pair) error
	PairDown(ctx context.Context, p Pair) error
}
