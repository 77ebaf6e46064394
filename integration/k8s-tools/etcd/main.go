// Command etcd is the upstream etcd server, built from go.etcd.io/etcd/server/v3 for knat's
// end-to-end tier (integration/e2e.rs): it calls the same entry point as the etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
