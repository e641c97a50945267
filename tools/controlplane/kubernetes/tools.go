//go:build tools

// Package controlplane pins the Kubernetes commands `make setup` builds (kube-apiserver, kubectl).
// k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules with
// local folders, which only the main module may do. This wrapper is that main module: it requires
// k8s.io/kubernetes and replaces each staging module with its published release (v0.X.Y for v1.X.Y).
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
