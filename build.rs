//! Decides at build time whether the end-to-end suite (tests/e2e) can run: with a control plane
//! (`KUBEBUILDER_ASSETS`, or `BULKHEAD_E2E_ETCD` and `BULKHEAD_E2E_KUBE_APISERVER`) it sets
//! `cfg(bulkhead_e2e)`; without one the e2e tests are compiled as `#[ignore]` with the reason, so
//! cargo reports them as ignored, never as passed. Nothing else in the crate reads the cfg.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(bulkhead_e2e)");
    let set = |name: &str| {
        println!("cargo::rerun-if-env-changed={name}");
        std::env::var_os(name).is_some_and(|v| !v.is_empty())
    };
    let assets = set("KUBEBUILDER_ASSETS");
    let etcd = set("BULKHEAD_E2E_ETCD");
    let apiserver = set("BULKHEAD_E2E_KUBE_APISERVER");
    if assets || (etcd && apiserver) {
        println!("cargo::rustc-cfg=bulkhead_e2e");
    }
}
