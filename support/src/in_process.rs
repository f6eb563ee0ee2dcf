//! The executor running inside the test process ([`InProcessExecutor`]): built from a set of
//! variables exactly as the binary reads its environment, serving on its own task until
//! [`InProcessExecutor::stop`] (which waits for its graceful end) or until dropped (which
//! cancels it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use workflow_executor::{Application, Settings, StartError};

/// How long building (binding, opening the store) and a graceful stop may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// An executor serving on a task of this process.
#[derive(Debug)]
pub struct InProcessExecutor {
    address: SocketAddr,
    shutdown: CancellationToken,
    _cancel_on_drop: DropGuard,
    server: JoinHandle<Result<(), StartError>>,
}

impl InProcessExecutor {
    /// Builds an executor from `vars` (later pairs win; `EXECUTOR_BIND` defaults to
    /// `127.0.0.1:0`) and starts serving; fails the test when the settings or the start fail.
    pub async fn start<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut vars: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        vars.entry("EXECUTOR_BIND".to_owned()).or_insert_with(|| "127.0.0.1:0".to_owned());
        let settings = Settings::from_lookup(|name| vars.get(name).cloned())
            .unwrap_or_else(|error| panic!("invalid test settings: {error}"));
        let application = tokio::time::timeout(PATIENCE, Application::build(settings))
            .await
            .unwrap_or_else(|_| panic!("the executor did not start within {PATIENCE:?}"))
            .unwrap_or_else(|error| panic!("the executor does not start: {error}"));
        let address = application.local_addr();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
        Self { address, _cancel_on_drop: shutdown.clone().drop_guard(), shutdown, server }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Asks it to stop and waits for how its run ended.
    pub async fn stop(self) -> Result<(), StartError> {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .unwrap_or_else(|_| panic!("the executor did not stop within {PATIENCE:?}"))
            .expect("the executor's task does not panic")
    }
}
