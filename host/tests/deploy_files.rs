//! The files that deploy wasmgate elsewhere (`deploy/kubernetes/`, the
//! `Containerfile`) parse, and agree with each other and with the config
//! they ship: the ports, the data dir and the shutdown clock.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml_ng::Value;
use wasmgate::control::config::Config;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is in the workspace")
        .to_owned()
}

fn kubernetes() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// Every document of `file` in deploy/kubernetes/.
fn documents(file: &str) -> Vec<Value> {
    let path = kubernetes().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"))
        })
        .collect()
}

/// The one document of `file`.
fn document(file: &str) -> Value {
    let mut all = documents(file);
    assert_eq!(all.len(), 1, "{file}: one document");
    all.remove(0)
}

/// The `wasmgate.toml` the ConfigMap holds.
fn shipped_config() -> String {
    document("configmap.yaml")["data"]["wasmgate.toml"]
        .as_str()
        .expect("configmap.yaml: data.wasmgate.toml")
        .to_owned()
}

#[test]
fn every_manifest_is_yaml_with_a_kind_and_kustomize_lists_them_all() {
    let mut files: Vec<String> = std::fs::read_dir(kubernetes())
        .expect("deploy/kubernetes")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    for file in &files {
        for document in documents(file) {
            assert!(document["apiVersion"].is_string(), "{file}: apiVersion");
            assert!(document["kind"].is_string(), "{file}: kind");
        }
    }
    let kustomization = document("kustomization.yaml");
    let mut listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    listed.push("kustomization.yaml".to_owned());
    listed.sort();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
}

/// `host:port`'s port.
fn port(address: &str) -> u64 {
    let (_, port) = address.rsplit_once(':').expect("host:port");
    port.parse().expect("a port")
}

#[test]
fn the_manifests_agree_with_the_config_they_ship() {
    let config: toml::Table = shipped_config().parse().expect("TOML");
    let deployment = document("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let container_port = |name: &str| {
        container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("containerPort {name}"))
    };
    let listen = config["server"]["listen"].as_str().expect("server.listen");
    let admin = config["admin"]["listen"].as_str().expect("admin.listen");
    assert!(listen.starts_with("0.0.0.0:") && admin.starts_with("0.0.0.0:"));
    assert_eq!(port(listen), container_port("http"));
    assert_eq!(port(admin), container_port("admin"));
    let containerfile =
        std::fs::read_to_string(repo_root().join("Containerfile")).expect("Containerfile");
    assert!(
        containerfile.contains(&format!("EXPOSE {} {}", port(listen), port(admin))),
        "the Containerfile exposes both listeners"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");

    // The data dir is the emptyDir.
    let data_dir = config["runtime"]["data_dir"].as_str().expect("data_dir");
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == data_dir)
        .expect("a volume at the data dir");
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the data dir's volume");
    assert!(volume["emptyDir"].is_mapping(), "{volume:?}");

    // SIGKILL comes after the preStop sleep, the drain, and the second
    // the last answers get to be written.
    let sleep: u64 = container["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("preStop: sleep N");
    let grace_ms = config["server"]["shutdown_grace_ms"]
        .as_integer()
        .expect("server.shutdown_grace_ms");
    let drain = u64::try_from(grace_ms).expect("positive").div_ceil(1000) + 1;
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        sleep + drain < termination,
        "{sleep} s + {drain} s must fit in {termination} s"
    );

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(deployment["spec"]["replicas"], 3);
}

#[test]
fn the_configmap_config_is_a_valid_cluster_config_without_tenants() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-files");
    std::fs::create_dir_all(&dir).expect("create a folder");
    let path = dir.join("wasmgate.toml");
    std::fs::write(&path, shipped_config()).expect("write the config");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.tenants.is_empty(),
        "tenants are applied, not shipped"
    );
}
