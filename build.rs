//! Decides at build time whether the end-to-end suite (tests/e2e) can run: with a control plane
//! (`KUBEBUILDER_ASSETS`, or `BULKHEAD_E2E_ETCD` and `BULKHEAD_E2E_KUBE_APISERVER`) it sets
//! `cfg(bulkhead_e2e)`; without one the e2e tests are compiled as `#[ignore]` with the reason, so
//! cargo reports them as ignored, never as passed. `BULKHEAD_E2E_NODE=1` (set by hack/test.sh
//! and hack/e2e.sh when `hack/node.sh check` says a node can start here) adds
//! `cfg(bulkhead_node)` for the scenarios that run pods; without it they are ignored likewise.
//! Nothing else in the crate reads the cfgs.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(bulkhead_e2e)");
    println!("cargo::rustc-check-cfg=cfg(bulkhead_node)");
    let set = |name: &str| {
        println!("cargo::rerun-if-env-changed={name}");
        std::env::var_os(name).is_some_and(|v| !v.is_empty())
    };
    let assets = set("KUBEBUILDER_ASSETS");
    let etcd = set("BULKHEAD_E2E_ETCD");
    let apiserver = set("BULKHEAD_E2E_KUBE_APISERVER");
    if assets || (etcd && apiserver) {
        println!("cargo::rustc-cfg=bulkhead_e2e");
        println!("cargo::rerun-if-env-changed=BULKHEAD_E2E_NODE");
        if std::env::var_os("BULKHEAD_E2E_NODE").is_some_and(|v| v == "1") {
            println!("cargo::rustc-cfg=bulkhead_node");
        }
    }
}
