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
}

// Device is an up tun interface with one Queue per worker.
type Device struct {
	name   string
	index  int
	queues []*Queue

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
	for i := 0; i < cfg.Queues; i++ {
		q, err := openQueue(cfg.Name, i)
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

func openQueue(name string, i int) (*Queue, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("tun %s: open /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %s: TUNSETIFF queue %d: %w", name, i, err)
	}
	// A non-blocking fd handed to os.NewFile is registered with the
	// runtime poller, so reads park the goroutine instead of a thread and
	// Close wakes blocked readers.
	f := os.NewFile(uintptr(fd), name)
	return newQueue(f)
}

// Name returns the interface name.
func (d *Device) Name() string { return d.name }

// Index returns the kernel interface index.
func (d *Device) Index() int { return d.index }

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
	f  *os.File
	rc syscall.RawConn

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
	return q, nil
}

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
	n := q.rN
	if err == nil {
		err = q.rErr
	}
	q.rBufs, q.rSizes = nil, nil
	if n > 0 {
		// Report the packets; an error after them resurfaces next call.
		return n, nil
	}
	if err != nil {
		return 0, fmt.Errorf("tun %s: read: %w", q.f.Name(), err)
	}
	return 0, nil
}

// Write writes one IP packet to the queue, i.e. delivers it to the
// kernel as if received on the interface.
func (q *Queue) Write(pkt []byte) (int, error) {
	return q.f.Write(pkt)
}

// Close closes the queue.
func (q *Queue) Close() error { return q.f.Close() }
