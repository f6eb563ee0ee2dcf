//! The `workflow-executor` binary as a child process ([`ExecutorProcess`]), for tests that kill
//! it, terminate it or damage its data directory.
//!
//! It listens on `127.0.0.1:0` and logs JSON; the start waits until its "listening" line names
//! the address. Both pipes are drained for the whole life of the process (so logging never
//! blocks it) and every line is kept ([`ExecutorProcess::logs`]). Dropping it kills it.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::eventually;
use crate::executor::FAST_EXECUTOR;

/// How long the binary gets to listen.
const LISTEN_DEADLINE: Duration = Duration::from_secs(20);

/// The `workflow-executor` binary running as a child process.
pub struct ExecutorProcess {
    child: Child,
    address: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// Why [`ExecutorProcess::try_start`] has no serving executor to give.
#[derive(Debug)]
pub struct NotServing {
    /// How the process exited; `None` if it neither listened nor exited in time (it was killed).
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout and stderr.
    pub logs: Vec<String>,
}

impl ExecutorProcess {
    /// Starts `binary` (`env!("CARGO_BIN_EXE_workflow-executor")`) on `127.0.0.1:0` with
    /// `data_dir`, the [`FAST_EXECUTOR`] settings and `env` over them, and waits until it listens.
    pub async fn start(binary: impl AsRef<Path>, data_dir: impl AsRef<Path>, env: &[(&str, String)]) -> Self {
        match Self::try_start(binary, data_dir, env).await {
            Ok(process) => process,
            Err(NotServing { status: Some(status), logs }) => panic!("the executor exited with {status}: {logs:#?}"),
            Err(NotServing { status: None, logs }) => panic!("the executor never listened: {logs:#?}"),
        }
    }

    /// Starts the binary like [`ExecutorProcess::start`], but hands back its exit status and
    /// logs if it exits (or does not listen within 20 s) instead of failing the test.
    pub async fn try_start(
        binary: impl AsRef<Path>,
        data_dir: impl AsRef<Path>,
        env: &[(&str, String)],
    ) -> Result<Self, NotServing> {
        let mut command = Command::new(binary.as_ref());
        command
            .env_clear()
            .env("EXECUTOR_BIND", "127.0.0.1:0")
            .env("EXECUTOR_DATA_DIR", data_dir.as_ref())
            .env("EXECUTOR_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(FAST_EXECUTOR)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the executor binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut readers = Vec::new();
        for pipe in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    logs.lock().expect("logs lock").push(line);
                }
            }));
        }
        let started = Instant::now();
        let status = loop {
            let address = listening_address(&logs.lock().expect("logs lock"));
            if let Some(address) = address {
                return Ok(Self { child, address, logs });
            }
            if let Some(status) = child.try_wait().ok().flatten() {
                break Some(status);
            }
            if started.elapsed() > LISTEN_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The pipes close with the process: wait until every line it wrote has been read.
        eventually(Duration::from_secs(5), "the executor's output is read to the end", async || {
            readers.iter().all(|reader| reader.is_finished()).then_some(())
        })
        .await;
        let logs = logs.lock().expect("logs lock").clone();
        Err(NotServing { status, logs })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://host:port` of the executor.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The execute route.
    pub fn url(&self) -> String {
        format!("http://{}/api/workflow/execute", self.address)
    }

    /// `SIGKILL`: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("the process can be killed");
        self.child.wait().expect("the killed process is reaped");
    }

    /// `SIGTERM`, then waits (at most 15 s) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM was delivered");
        let child = &mut self.child;
        eventually(Duration::from_secs(15), "the executor exits after SIGTERM", async || {
            child.try_wait().ok().flatten()
        })
        .await
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Every line it wrote to stdout and stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs lock").clone()
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address from the JSON line `{"message": "workflow executor listening", "address": ...}`.
pub fn listening_address(lines: &[String]) -> Option<SocketAddr> {
    lines.iter().find_map(|line| {
        let entry: Value = serde_json::from_str(line).ok()?;
        let message = entry.get("message").or_else(|| entry.pointer("/fields/message"))?.as_str()?;
        if message != "workflow executor listening" {
            return None;
        }
        entry.get("address").or_else(|| entry.pointer("/fields/address"))?.as_str()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_names_the_address_at_the_top_level_or_in_fields() {
        let top = r#"{"message": "workflow executor listening", "address": "127.0.0.1:4100"}"#;
        let nested = r#"{"fields": {"message": "workflow executor listening", "address": "127.0.0.1:4200"}}"#;
        let other = r#"{"message": "starting", "address": "127.0.0.1:1"}"#;
        let lines = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(listening_address(&lines(&["not json", other, top])), Some("127.0.0.1:4100".parse().unwrap()));
        assert_eq!(listening_address(&lines(&[nested])), Some("127.0.0.1:4200".parse().unwrap()));
        assert_eq!(listening_address(&lines(&[other])), None);
    }
}
