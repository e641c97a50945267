//go:build tools

// Package controlplane pins the Flux source-controller `make setup` builds (docs/flux.md). Its go.mod replaces
// its own api module and a few dependencies, which `go install` refuses; this wrapper is the main module that
// requires it and repeats those replaces (tools/controlplane/pin.sh writes them from the controller's go.mod).
package controlplane

import _ "github.com/fluxcd/source-controller"
