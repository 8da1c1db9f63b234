//! The Kubernetes manifests as a cluster gets them: rendered by `kubectl kustomize` from
//! deploy/kubernetes, with the pinned tools `cargo xtask setup` installs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// deploy/kubernetes in the repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// One of the Kubernetes tools (`kubectl`, `kubernetes-validate`, `checkov`) from the
/// directory `cargo xtask test` passes in `PORTCULLIS_TOOLS`.
pub fn tool(tools: &Path, name: &str) -> Command {
    Command::new(tools.join(name))
}

/// The manifests of a kustomization, as YAML text and as one value per document.
pub fn render(tools: &Path, kustomization: &Path) -> Result<(String, Vec<Value>)> {
    let out = tool(tools, "kubectl")
        .arg("kustomize")
        .arg(kustomization)
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {}: {}",
            kustomization.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("kustomize output is not UTF-8")?;
    let documents = serde_saphyr::from_multiple(&text).context("parsing kustomize output")?;
    Ok((text, documents))
}

/// The object of `kind` named `name` among rendered documents.
pub fn object<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}
