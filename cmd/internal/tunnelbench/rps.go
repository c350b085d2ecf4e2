package tunnelbench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/gwlbproxy/gwlbproxy/tunnel/gwlbsim"
)

// steerRx makes the kernel process what arrives on link in namespace ns on
// cpu (receive packet steering). veth delivers on the sending CPU, so
// without it the appliance namespace's receive work (and, for plain
// forwarding, the whole forward and the sink's delivery) would run on the
// generator's core: plain forwarding would be measured on the generator's
// core and the tunnel on the appliance's. With it, everything from the
// appliance's ingress onwards runs on the appliance's CPU in both modes,
// as a NIC interrupt would on a real appliance.
//
// rps_cpus lives in sysfs, whose network view is that of the namespace
// sysfs was mounted in, so a fresh sysfs is mounted in a private mount
// namespace on a thread that is then discarded.
func steerRx(ns *gwlbsim.NS, link string, cpu int) error {
	if cpu < 0 {
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread's namespaces change
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("make mounts private: %w", err)
			}
			if err := unix.Setns(int(ns.Handle()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter netns %s: %w", ns.Name, err)
			}
			dir, err := os.MkdirTemp("", "gwlbproxy-sysfs-")
			if err != nil {
				return err
			}
			defer os.Remove(dir)
			if err := unix.Mount("sysfs", dir, "sysfs", 0, ""); err != nil {
				return fmt.Errorf("mount sysfs: %w", err)
			}
			defer unix.Unmount(dir, unix.MNT_DETACH)
			f := filepath.Join(dir, "class/net", link, "queues/rx-0/rps_cpus")
			if err := os.WriteFile(f, []byte(fmt.Sprintf("%x", uint64(1)<<cpu)), 0o644); err != nil {
				return err
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		return errors.Join(fmt.Errorf("netns %s: rps on %s to CPU %d", ns.Name, link, cpu), err)
	}
	return nil
}
