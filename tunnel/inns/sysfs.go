//go:build linux

package inns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Sysfs runs f with sysfs as namespace n sees it mounted at dir. sysfs's
// network view (/sys/class/net, queue attributes such as rps_cpus) is that
// of the namespace it was mounted in, so entering n is not enough: f runs
// on a thread with a private mount namespace, inside n, where a fresh
// sysfs is mounted for it. That thread's namespaces cannot be switched
// back (unshare), so it stays locked and the runtime discards it when f
// returns. Sockets f opens belong to n, as with Do.
func (n *NS) Sysfs(f func(dir string) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread's mount namespace is private
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("make mounts private: %w", err)
			}
			if err := unix.Setns(int(n.h), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter netns %s: %w", n.Name, err)
			}
			dir, err := os.MkdirTemp("", "inns-sysfs-")
			if err != nil {
				return err
			}
			defer os.Remove(dir)
			if err := unix.Mount("sysfs", dir, "sysfs", 0, ""); err != nil {
				return fmt.Errorf("mount sysfs in %s: %w", n.Name, err)
			}
			defer unix.Unmount(dir, unix.MNT_DETACH)
			return f(dir)
		}()
	}()
	return <-errc
}
