// Package sdnotify speaks systemd's notify protocol (sd_notify(3)): one
// datagram per state change to $NOTIFY_SOCKET. It is a few lines, so no
// dependency is worth it.
package sdnotify

import (
	"net"
	"os"
	"strconv"
	"time"
)

// States sent by the appliance.
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
	Watchdog = "WATCHDOG=1"
)

// Notify sends state to the service manager. Without $NOTIFY_SOCKET (not
// started by systemd, or Type= is not notify) it does nothing.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract namespace
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// WatchdogInterval returns how often to send Watchdog: half the interval
// systemd expects (WatchdogSec=), or 0 when the watchdog is off or meant
// for another process.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
