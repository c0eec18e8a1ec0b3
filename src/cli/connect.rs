//! How a live command reaches the cluster: `--kubeconfig` and `--context` as kubectl takes
//! them, else `KUBECONFIG` or `~/.kube/config`, else the pod's ServiceAccount.

use std::path::Path;

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client and the namespace its context names (`default` when none does).
pub struct Connection {
    pub client: Client,
    pub namespace: String,
}

/// The client configuration `kubectl --kubeconfig K --context C` would use.
pub async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Config> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    Ok(match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options).await?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await?,
        (None, None) => Config::infer().await?,
    })
}

/// Connect as `kubectl --kubeconfig K --context C` would.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<Connection> {
    let config = config(kubeconfig, context).await?;
    let namespace = config.default_namespace.clone();
    Ok(Connection {
        client: Client::try_from(config)?,
        namespace,
    })
}
