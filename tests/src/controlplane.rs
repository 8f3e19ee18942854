//! A real control plane (etcd + kube-apiserver) for tests: started once per run or reused.
