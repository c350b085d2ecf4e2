//go:build linux

package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// inNewNetns runs f on a locked OS thread inside a fresh network namespace,
// which disappears with its last reference when f returns.
func inNewNetns(t *testing.T, f func(nl *netlink.Handle)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, tun)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked on exit so the runtime discards it
		// rather than reusing a thread in the wrong namespace.
		ns, err := netns.New()
		if err != nil {
			t.Errorf("netns: %v", err)
			return
		}
		defer ns.Close()
		nl, err := netlink.NewHandle()
		if err != nil {
			t.Errorf("netlink: %v", err)
			return
		}
		defer nl.Close()
		f(nl)
	}()
	<-done
}

func icmpEcho(src, dst net.IP, id, seq uint16) []byte {
	p := make([]byte, 28+8)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 1
	copy(p[12:16], src.To4())
	copy(p[16:20], dst.To4())
	binary.BigEndian.PutUint16(p[10:], ^csum(p[:20]))
	ic := p[20:]
	ic[0] = 8
	binary.BigEndian.PutUint16(ic[4:], id)
	binary.BigEndian.PutUint16(ic[6:], seq)
	copy(ic[8:], "pingpong")
	binary.BigEndian.PutUint16(ic[2:], ^csum(ic))
	return p
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func TestDeviceEcho(t *testing.T) {
	inNewNetns(t, func(nl *netlink.Handle) {
		name := fmt.Sprintf("gwt%x", rand.Uint32())
		d, err := Create(Config{Name: name, Queues: 2, MTU: 8500, TxQueueLen: 1000}, nl)
		if err != nil {
			t.Errorf("create: %v", err)
			return
		}
		link, err := nl.LinkByName(name)
		if err != nil {
			t.Errorf("lookup: %v", err)
			return
		}
		if a := link.Attrs(); a.MTU != 8500 || a.Index != d.Index() || a.Flags&net.FlagUp == 0 || a.TxQLen != 1000 {
			t.Errorf("attrs: mtu %d index %d/%d flags %v txqlen %d", a.MTU, a.Index, d.Index(), a.Flags, a.TxQLen)
		}
		addr, _ := netlink.ParseAddr("198.18.5.1/24")
		if err := nl.AddrAdd(link, addr); err != nil {
			t.Errorf("addr: %v", err)
			return
		}
		// Write an echo request on each queue; the kernel answers out of
		// the device and some queue delivers it.
		for q := 0; q < d.Queues(); q++ {
			req := icmpEcho(net.ParseIP("198.18.5.2"), net.ParseIP("198.18.5.1"), 77, uint16(q))
			if _, err := d.Queue(q).Write(req); err != nil {
				t.Errorf("write: %v", err)
			}
		}
		replies := make(chan int, 8)
		for q := 0; q < d.Queues(); q++ {
			go func(q *Queue) {
				bufs := [][]byte{make([]byte, 9000), make([]byte, 9000)}
				sizes := make([]int, 2)
				for {
					n, err := q.ReadBatch(bufs, sizes, 16)
					if err != nil {
						return
					}
					for i := 0; i < n; i++ {
						p := bufs[i][16 : 16+sizes[i]]
						if len(p) >= 28 && p[9] == 1 && p[20] == 0 && binary.BigEndian.Uint16(p[24:]) == 77 {
							replies <- int(binary.BigEndian.Uint16(p[26:]))
						}
					}
				}
			}(d.Queue(q))
		}
		seen := map[int]bool{}
		timeout := time.After(20 * time.Second)
		for len(seen) < d.Queues() {
			select {
			case s := <-replies:
				seen[s] = true
			case <-timeout:
				t.Errorf("replies seen: %v", seen)
				d.Close(nl)
				return
			}
		}
		if err := d.Close(nl); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := d.Close(nl); err != nil {
			t.Errorf("second close: %v", err)
		}
		if _, err := nl.LinkByName(name); err == nil {
			t.Errorf("%s still exists after Close", name)
		} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
			t.Errorf("lookup after close: %v", err)
		}
	})
}

func TestCreateErrors(t *testing.T) {
	if _, err := Create(Config{Name: "x", Queues: 0, MTU: 1500}, nil); err == nil {
		t.Error("queues 0 accepted")
	}
	if _, err := Create(Config{Name: "0123456789abcdef", Queues: 1, MTU: 1500}, nil); err == nil {
		t.Error("long name accepted")
	}
	if _, err := Create(Config{Name: "x", Queues: 1, MTU: 100}, nil); err == nil {
		t.Error("mtu 100 accepted")
	}
}

func BenchmarkReadWrite(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, _ := netns.Get()
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		b.Fatal(err)
	}
	defer func() { netns.Set(orig); ns.Close() }()
	nl, _ := netlink.NewHandle()
	defer nl.Close()
	d, err := Create(Config{Name: "gwtbench", Queues: 1, MTU: 1500}, nl)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close(nl)
	link, _ := nl.LinkByName("gwtbench")
	addr, _ := netlink.ParseAddr("198.18.6.1/24")
	nl.AddrAdd(link, addr)
	req := icmpEcho(net.ParseIP("198.18.6.2"), net.ParseIP("198.18.6.1"), 1, 1)
	bufs := [][]byte{make([]byte, 2000)}
	sizes := []int{0}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Queue(0).Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Queue(0).ReadBatch(bufs, sizes, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestTryReadWhileWaiting: TryReadPackets returns 0 at once on an empty
// queue, works while another goroutine is parked in WaitRead on the same
// queue, WaitRead wakes for a packet queued after it parked (and for one
// queued before it was called), and both report a closed queue.
func TestTryReadWhileWaiting(t *testing.T) {
	inNewNetns(t, func(nl *netlink.Handle) {
		name := fmt.Sprintf("gwt%x", rand.Uint32())
		d, err := Create(Config{Name: name, Queues: 1, MTU: 1500}, nl)
		if err != nil {
			t.Errorf("create: %v", err)
			return
		}
		defer d.Close(nl)
		link, _ := nl.LinkByName(name)
		addr, _ := netlink.ParseAddr("198.18.6.1/24")
		if err := nl.AddrAdd(link, addr); err != nil {
			t.Errorf("addr: %v", err)
			return
		}
		q := d.Queue(0)
		arena := make([]byte, 4*(64+2048))
		pkts := make([][]byte, 4)
		// The kernel may queue packets of its own (IPv6 router
		// solicitations) at any time, so emptiness is not asserted; what
		// matters is that TryReadPackets returns at once.
		if _, err := q.TryReadPackets(arena, 64, 2048, pkts); err != nil {
			t.Errorf("try read: %v", err)
		}
		// An echo request written to the queue is answered into it.
		ping := func(seq uint16) {
			if _, err := q.Write(icmpEcho(net.ParseIP("198.18.6.2"), net.ParseIP("198.18.6.1"), 78, seq)); err != nil {
				t.Errorf("write: %v", err)
			}
		}
		isReply := func(p []byte, seq uint16) bool {
			return len(p) >= 28 && p[9] == 1 && p[20] == 0 && binary.BigEndian.Uint16(p[26:]) == seq
		}
		// Queued before WaitRead: it must not wait.
		ping(1)
		waited := make(chan error, 1)
		// woke reports whether the parked WaitRead returned (without
		// error) in time.
		woke := func(missed string) bool {
			select {
			case err := <-waited:
				if err != nil {
					t.Errorf("wait: %v", err)
				}
				return true
			case <-time.After(20 * time.Second):
				t.Errorf("%s", missed)
				return false
			}
		}
		go func() { waited <- q.WaitRead() }()
		if !woke("WaitRead missed a packet queued before it") {
			return
		}
		readReply := func(seq uint16) {
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
				n, err := q.TryReadPackets(arena, 64, 2048, pkts)
				if err != nil {
					t.Errorf("try read: %v", err)
					return
				}
				for i := 0; i < n; i++ {
					if isReply(pkts[i], seq) {
						return
					}
				}
				if n == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			t.Errorf("reply %d not read", seq)
		}
		readReply(1)
		// Parked first, then a packet: WaitRead wakes, and a
		// TryReadPackets meanwhile is not blocked by the parked reader.
		go func() { waited <- q.WaitRead() }()
		time.Sleep(50 * time.Millisecond)
		if _, err := q.TryReadPackets(arena, 64, 2048, pkts); err != nil {
			t.Errorf("try read beside a waiter: %v", err)
		}
		ping(2)
		if !woke("WaitRead did not wake") {
			return
		}
		readReply(2)
		go func() { waited <- q.WaitRead() }()
		time.Sleep(50 * time.Millisecond)
		d.Close(nl)
		select {
		case err := <-waited:
			if !errors.Is(err, os.ErrClosed) {
				t.Errorf("wait after close: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("WaitRead not woken by Close")
		}
		if _, err := q.TryReadPackets(arena, 64, 2048, pkts); !errors.Is(err, os.ErrClosed) {
			t.Errorf("try read after close: %v", err)
		}
	})
}
