// Tool module for knat's end-to-end tier: builds the etcd server (see scripts/build-k8s.sh).
module knat.local/k8s-tools/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.7.3
