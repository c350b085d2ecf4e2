//go:build linux

// Package tun creates multi-queue Linux tun devices for the tunnel data
// path: one file descriptor (queue) per worker, so each worker reads and
// writes its own queue without locks and the kernel spreads return traffic
// across queues by flow hash.
//
// A Device is non-persistent: the kernel removes the interface when the
// last queue is closed, so a crashed daemon leaves nothing behind. Close
// also deletes the link explicitly to make removal synchronous.
//
// The device is created in the network namespace of the calling OS thread
// (tun fds bind to the opener's namespace); the netlink handle passed to
// Create must belong to the same namespace.
package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Limits for Config.MTU. 576 is the IPv4 minimum; 65535 is the tun limit,
// but the daemon validates its own narrower range.
const (
	MinMTU = 576
	MaxMTU = 65535
)

// Config describes a device to create.
type Config struct {
	// Name is the interface name (at most 15 bytes).
	Name string
	// Queues is the number of queues (file descriptors) to open, >= 1.
	Queues int
	// MTU is set on the interface before it is brought up.
	MTU int
	// TxQueueLen, if > 0, replaces the kernel's default of 500 packets.
	TxQueueLen int
	// Offload asks for IFF_VNET_HDR and the checksum and segmentation
	// offloads (TUN_F_CSUM|TSO4|TSO6, and USO4|USO6 on kernels from 6.2):
	// every packet read or written is then preceded by a virtio-net
	// header and may be a GSO super-packet. What the kernel granted is in
	// Device.Offloads; if it refuses even TSO the device is opened
	// without IFF_VNET_HDR, as if Offload were false.
	Offload bool
}

// Offloads is what a device negotiated.
type Offloads struct {
	// VnetHdr: packets carry a virtio-net header (see tunnel/offload).
	VnetHdr bool
	// TSO: TCP super-packets may be read and written (with checksum
	// offload).
	TSO bool
	// USO: UDP super-packets (GSO_UDP_L4) too.
	USO bool
}

// Device is an up tun interface with one Queue per worker.
type Device struct {
	name     string
	index    int
	queues   []*Queue
	offloads Offloads

	closeOnce sync.Once
	closeErr  error
}

// Create opens cfg.Queues queues of a new multi-queue tun device (IFF_TUN,
// IFF_NO_PI: packets are bare IP), sets its MTU and brings it up. On error
// everything opened so far is closed. nl may be nil to use a handle in the
// calling thread's namespace.
func Create(cfg Config, nl *netlink.Handle) (*Device, error) {
	if cfg.Queues < 1 {
		return nil, fmt.Errorf("tun %s: queues %d < 1", cfg.Name, cfg.Queues)
	}
	if len(cfg.Name) == 0 || len(cfg.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tun %q: invalid interface name", cfg.Name)
	}
	if cfg.MTU < MinMTU || cfg.MTU > MaxMTU {
		return nil, fmt.Errorf("tun %s: mtu %d out of range %d..%d", cfg.Name, cfg.MTU, MinMTU, MaxMTU)
	}
	if nl == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("tun %s: netlink: %w", cfg.Name, err)
		}
		defer h.Close()
		nl = h
	}
	d := &Device{name: cfg.Name}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
	if cfg.Offload {
		// The flags and offloads are per device: negotiate on the first
		// queue, open the others alike.
		q, off, err := openOffloadQueue(cfg.Name, flags)
		if err != nil {
			return nil, err
		}
		d.offloads = off
		if off.VnetHdr {
			flags |= unix.IFF_VNET_HDR
		}
		d.queues = append(d.queues, q)
	}
	for i := len(d.queues); i < cfg.Queues; i++ {
		q, err := openQueue(cfg.Name, i, flags)
		if err != nil {
			d.closeQueues()
			return nil, err
		}
		d.queues = append(d.queues, q)
	}
	link, err := nl.LinkByName(cfg.Name)
	if err != nil {
		d.closeQueues()
		return nil, fmt.Errorf("tun %s: lookup: %w", cfg.Name, err)
	}
	d.index = link.Attrs().Index
	if err := nl.LinkSetMTU(link, cfg.MTU); err != nil {
		d.closeQueues()
		return nil, fmt.Errorf("tun %s: set mtu %d: %w", cfg.Name, cfg.MTU, err)
	}
	if cfg.TxQueueLen > 0 {
		if err := nl.LinkSetTxQLen(link, cfg.TxQueueLen); err != nil {
			d.closeQueues()
			return nil, fmt.Errorf("tun %s: set txqueuelen: %w", cfg.Name, err)
		}
	}
	if err := nl.LinkSetUp(link); err != nil {
		d.closeQueues()
		return nil, fmt.Errorf("tun %s: set up: %w", cfg.Name, err)
	}
	return d, nil
}

const (
	tunTSO = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	tunUSO = unix.TUN_F_USO4 | unix.TUN_F_USO6
)

// openOffloadQueue opens queue 0 with IFF_VNET_HDR and the richest offload
// set the kernel accepts; if it accepts none, queue 0 is reopened plain.
func openOffloadQueue(name string, flags uint16) (*Queue, Offloads, error) {
	fd, err := openFD(name, 0, flags|unix.IFF_VNET_HDR)
	if err != nil {
		return nil, Offloads{}, err
	}
	off := Offloads{VnetHdr: true, TSO: true, USO: true}
	if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunTSO|tunUSO) != nil {
		off.USO = false
		if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunTSO) != nil {
			// No offloads at all: the header would be pure overhead.
			unix.Close(fd) // the device goes with its only queue
			fd, err = openFD(name, 0, flags)
			if err != nil {
				return nil, Offloads{}, err
			}
			off = Offloads{}
		}
	}
	q, err := newQueue(os.NewFile(uintptr(fd), name))
	if err != nil {
		return nil, Offloads{}, err
	}
	q.vnet = off.VnetHdr
	return q, off, nil
}

func openFD(name string, i int, flags uint16) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("tun %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tun %s: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tun %s: TUNSETIFF queue %d: %w", name, i, err)
	}
	return fd, nil
}

func openQueue(name string, i int, flags uint16) (*Queue, error) {
	fd, err := openFD(name, i, flags)
	if err != nil {
		return nil, err
	}
	// A non-blocking fd handed to os.NewFile is registered with the
	// runtime poller, so reads park the goroutine instead of a thread and
	// Close wakes blocked readers.
	q, err := newQueue(os.NewFile(uintptr(fd), name))
	if err != nil {
		return nil, err
	}
	q.vnet = flags&unix.IFF_VNET_HDR != 0
	return q, nil
}

// Name returns the interface name.
func (d *Device) Name() string { return d.name }

// Index returns the kernel interface index.
func (d *Device) Index() int { return d.index }

// Offloads returns what the kernel granted (all false unless
// Config.Offload was set).
func (d *Device) Offloads() Offloads { return d.offloads }

// Queues returns the number of queues.
func (d *Device) Queues() int { return len(d.queues) }

// Queue returns queue i (0 <= i < Queues()).
func (d *Device) Queue(i int) *Queue { return d.queues[i] }

func (d *Device) closeQueues() error {
	var errs []error
	for _, q := range d.queues {
		if err := q.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close closes every queue, which makes the kernel remove the interface,
// and then deletes the link if it is somehow still present (another
// process holding a queue open). nl may be nil. It is safe to call more
// than once; blocked readers return os.ErrClosed.
func (d *Device) Close(nl *netlink.Handle) error {
	d.closeOnce.Do(func() {
		err := d.closeQueues()
		if nl == nil {
			h, herr := netlink.NewHandle()
			if herr != nil {
				d.closeErr = errors.Join(err, herr)
				return
			}
			defer h.Close()
			nl = h
		}
		if link, lerr := nl.LinkByIndex(d.index); lerr == nil && link.Attrs().Name == d.name {
			if derr := nl.LinkDel(link); derr != nil && !errors.Is(derr, unix.ENODEV) {
				err = errors.Join(err, derr)
			}
		}
		if err != nil {
			d.closeErr = fmt.Errorf("tun %s: close: %w", d.name, err)
		}
	})
	return d.closeErr
}

// Queue is one file descriptor of a multi-queue tun device. Reads from a
// Queue must come from one goroutine at a time; writes may be concurrent
// with reads.
type Queue struct {
	f    *os.File
	rc   syscall.RawConn
	vnet bool

	// Vectored writes: the iovecs and the callback are reused under wmu.
	wmu     sync.Mutex
	wIov    []unix.Iovec
	writeFn func(fd uintptr) bool
	wN      int
	wErr    error
	wParts  [2][]byte

	// TryReadPackets state.
	tryFn  func(fd uintptr)
	pollFn func(fd uintptr) bool
	pfd    [1]unix.PollFd
	pArena []byte
	pPkts  [][]byte
	pHead  int
	pMax   int
	pOff   int

	// State for ReadBatch's callback, preallocated so that a read
	// allocates nothing: the callback passed to RawConn.Read escapes, so
	// it is built once and reads its arguments from here.
	readFn func(fd uintptr) bool
	rBufs  [][]byte
	rSizes []int
	rOff   int
	rN     int
	rErr   error
}

func newQueue(f *os.File) (*Queue, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	q := &Queue{f: f, rc: rc}
	q.readFn = q.doRead
	q.writeFn = q.doWritev
	q.tryFn = q.doReadPackets
	q.pollFn = q.doPoll
	return q, nil
}

// VnetHdr reports whether every packet on this queue is preceded by a
// virtio-net header (the device was opened with offloads).
func (q *Queue) VnetHdr() bool { return q.vnet }

// doRead reads packets until the batch is full or the queue is empty. It
// returns false (wait for readability) only when it read nothing.
func (q *Queue) doRead(fd uintptr) bool {
	for q.rN < len(q.rBufs) {
		b := q.rBufs[q.rN][q.rOff:]
		n, err := unix.Read(int(fd), b)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				return q.rN > 0
			}
			q.rErr = err
			return true
		}
		q.rSizes[q.rN] = n
		q.rN++
	}
	return true
}

// ReadBatch reads up to len(bufs) packets, each into bufs[i][offset:],
// storing its length in sizes[i]. It blocks until at least one packet is
// available and returns the number read. The offset leaves headroom for
// the caller to prepend headers without copying the packet.
func (q *Queue) ReadBatch(bufs [][]byte, sizes []int, offset int) (int, error) {
	q.rBufs, q.rSizes, q.rOff, q.rN, q.rErr = bufs, sizes, offset, 0, nil
	err := q.rc.Read(q.readFn)
	q.rBufs, q.rSizes = nil, nil
	return q.readResult(err)
}

// readResult turns a read's outcome (the poller's error, then q.rN and
// q.rErr as the read callback left them) into what the Read methods
// return: packets read win over an error, which resurfaces next call.
func (q *Queue) readResult(err error) (int, error) {
	if q.rN > 0 {
		return q.rN, nil
	}
	if err == nil {
		err = q.rErr
	}
	if err != nil {
		return 0, fmt.Errorf("tun %s: read: %w", q.f.Name(), err)
	}
	return 0, nil
}

// Write writes one IP packet to the queue, i.e. delivers it to the
// kernel as if received on the interface. On a queue with a virtio-net
// header it writes an all-zero header (no offload) first; the count
// returned is that of pkt alone.
func (q *Queue) Write(pkt []byte) (int, error) {
	if !q.vnet {
		return q.f.Write(pkt)
	}
	q.wmu.Lock()
	q.wParts[0], q.wParts[1] = zeroVnetHdr[:], pkt
	n, err := q.writev(q.wParts[:])
	q.wParts[0], q.wParts[1] = nil, nil
	q.wmu.Unlock()
	return max(n-len(zeroVnetHdr), 0), err
}

var zeroVnetHdr [10]byte

// WriteVec writes the concatenation of parts as one packet (writev): the
// caller's virtio-net header first on a VnetHdr queue, then the packet,
// possibly a GSO super-packet made of a head and other packets' payloads.
// It returns the bytes written.
func (q *Queue) WriteVec(parts [][]byte) (int, error) {
	q.wmu.Lock()
	n, err := q.writev(parts)
	q.wmu.Unlock()
	return n, err
}

func (q *Queue) writev(parts [][]byte) (int, error) {
	if cap(q.wIov) < len(parts) {
		q.wIov = make([]unix.Iovec, len(parts))
	}
	q.wIov = q.wIov[:0]
	for _, p := range parts {
		if len(p) == 0 {
			continue
		}
		v := unix.Iovec{Base: unsafe.SliceData(p)}
		v.SetLen(len(p))
		q.wIov = append(q.wIov, v)
	}
	if len(q.wIov) == 0 {
		return 0, nil
	}
	q.wN, q.wErr = 0, nil
	if err := q.rc.Write(q.writeFn); err != nil {
		return 0, fmt.Errorf("tun %s: write: %w", q.f.Name(), err)
	}
	if q.wErr != nil {
		return 0, fmt.Errorf("tun %s: write: %w", q.f.Name(), q.wErr)
	}
	return q.wN, nil
}

func (q *Queue) doWritev(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&q.wIov[0])), uintptr(len(q.wIov)))
		switch e {
		case 0:
			q.wN = int(r)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			q.wErr = e
			return true
		}
	}
}

// TryReadPackets reads the packets the queue holds now, without blocking
// (0 at once when it is empty), back to back into arena, each headroom
// bytes after the end of the previous one (aligned to 8), so the caller
// can prepend headers in place; pkts[i] is the packet as read, starting
// with its virtio-net header on a VnetHdr queue. maxPacket is the largest
// read to allow for (a GSO super-packet plus header on a VnetHdr queue:
// 65546 and a little). It stops when pkts is full, when the arena has less
// than headroom+maxPacket bytes left, or when the queue is empty, and
// returns the count. A packet that fills maxPacket exactly may have been
// truncated and should be dropped.
//
// It does not take the descriptor's read lock, so it may run while
// another goroutine is blocked in WaitRead on the same queue (which is how
// a packet worker drains the packets its own writes forwarded here,
// without waking the queue's reader); the caller must still make sure
// that no two TryReadPackets calls on one Queue run at the same time.
func (q *Queue) TryReadPackets(arena []byte, headroom, maxPacket int, pkts [][]byte) (int, error) {
	if len(arena) < headroom+maxPacket || len(pkts) == 0 {
		return 0, fmt.Errorf("tun %s: read: arena %d too small for %d+%d", q.f.Name(), len(arena), headroom, maxPacket)
	}
	q.pArena, q.pPkts, q.pHead, q.pMax, q.pOff, q.rN, q.rErr = arena, pkts, headroom, maxPacket, 0, 0, nil
	err := q.rc.Control(q.tryFn)
	if err != nil {
		// Control fails only on a closed file, with the poller's own
		// error: report the one callers test for.
		err = os.ErrClosed
	}
	q.pArena, q.pPkts = nil, nil
	return q.readResult(err)
}

// WaitRead blocks until the queue has a packet to read (or an error to
// report), without reading it: a caller that reads with TryReadPackets
// under its own lock parks here instead of inside a read. It may return
// with the queue already emptied by someone else.
func (q *Queue) WaitRead() error {
	if err := q.rc.Read(q.pollFn); err != nil {
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			// The poller's "use of closed file": say os.ErrClosed.
			err = os.ErrClosed
		}
		return fmt.Errorf("tun %s: wait: %w", q.f.Name(), err)
	}
	return nil
}

// doPoll reports whether the queue is readable now (level-triggered, so a
// packet queued before the runtime poller was armed is not missed).
func (q *Queue) doPoll(fd uintptr) bool {
	q.pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	for {
		n, err := unix.Poll(q.pfd[:], 0)
		if err == unix.EINTR {
			continue
		}
		return err != nil || n > 0
	}
}

// doReadPackets is TryReadPackets' callback: it reads until pkts or the
// arena is full or the queue is empty (EAGAIN).
func (q *Queue) doReadPackets(fd uintptr) {
	for q.rN < len(q.pPkts) {
		start := q.pOff + q.pHead
		if start+q.pMax > len(q.pArena) {
			return
		}
		b := q.pArena[start : start+q.pMax]
		n, err := unix.Read(int(fd), b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err != unix.EAGAIN {
				q.rErr = err
			}
			return
		}
		q.pPkts[q.rN] = b[:n]
		q.rN++
		q.pOff = (start + n + 7) &^ 7
	}
}

// Name returns the interface name.
func (q *Queue) Name() string { return q.f.Name() }

// Close closes the queue.
func (q *Queue) Close() error { return q.f.Close() }
