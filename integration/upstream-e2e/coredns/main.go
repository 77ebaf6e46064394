// CoreDNS with only the plugins the cluster DNS of knat's upstream-e2e run uses (the
// kubernetes plugin and what a kubeadm Corefile puts around it, less forward/prometheus/reload:
// there is no upstream resolver and nothing scrapes it). Built by scripts/build-e2e.sh; the
// Corefile and manifests are in ../coredns.yaml.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }
