package tunnelbench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
// sysfs was mounted in: inns's Sysfs mounts one as ns sees it.
func steerRx(ns *gwlbsim.NS, link string, cpu int) error {
	if cpu < 0 {
		return nil
	}
	err := ns.Sysfs(func(sysfs string) error {
		f := filepath.Join(sysfs, "class/net", link, "queues/rx-0/rps_cpus")
		return os.WriteFile(f, []byte(fmt.Sprintf("%x", uint64(1)<<cpu)), 0o644)
	})
	if err != nil {
		return errors.Join(fmt.Errorf("netns %s: rps on %s to CPU %d", ns.Name, link, cpu), err)
	}
	return nil
}
