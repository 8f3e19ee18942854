//go:build tools

// Package tools pins the node commands built by hack/realnode/build.sh so that
// `go mod tidy` keeps every module they need (cadvisor, cri-client, ...) in
// go.mod/go.sum. A separate module from hack/controlplane so that adding node
// dependencies does not invalidate the control-plane build stamp.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
