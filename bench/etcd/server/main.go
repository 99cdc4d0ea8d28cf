// Command etcd is etcd's own server, pinned by this module's go.mod (bench/etcd/README.md).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
