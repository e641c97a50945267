//go:build tools

// Package controlplane pins the etcd server `make setup` builds as kube-apiserver's storage.
// go.etcd.io/etcd/server/v3 cannot be `go install`ed (its go.mod has replace directives); this wrapper
// is the main module that requires it, so the build uses the published modules it requires.
package controlplane

import _ "go.etcd.io/etcd/server/v3"
