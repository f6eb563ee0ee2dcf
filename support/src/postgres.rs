//! A throwaway PostgreSQL server for tests, and one new database per test.
//!
//! With `EXECUTOR_TEST_DATABASE_URL` set, its server is used (the URL must allow
//! `CREATE DATABASE`). Otherwise the first test that asks starts a server: `initdb` into a
//! temporary directory and `postgres` on a free loopback port with its socket in that directory
//! (as the `postgres` user when the tests run as root, as CI does). One server serves the whole
//! test process; each caller of [`new_database`] gets its own database (`test_<uuid>`).
//!
//! **Stopping it.** The server runs under a small shell that waits on a pipe whose write end
//! this process holds for its whole life: when the test process exits (however it ends), the
//! pipe closes, the shell stops the server (fast shutdown) and removes the temporary directory.

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the server may take to start.
const START_PATIENCE: Duration = Duration::from_secs(60);

/// A running test server: the URL of its maintenance database, and what keeps it alive.
struct Server {
    admin_url: String,
    /// Held until the process exits; its closing stops the server.
    _keepalive: Mutex<Option<ChildStdin>>,
    _child: Mutex<Option<Child>>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The admin URL of the test server, starting it on first use. Blocking.
fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("EXECUTOR_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server { admin_url: url, _keepalive: Mutex::new(None), _child: Mutex::new(None) },
        _ => start_server(),
    })
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// `program args…`, as the `postgres` user when running as root.
fn as_server_user(root: bool, program: &str) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

/// Where PostgreSQL's server programs are: on PATH, else Debian's `/usr/lib/postgresql/<n>/bin`
/// (the newest), which the `postgresql` package does not put on PATH.
fn server_bin(program: &str) -> String {
    if Command::new(program).arg("--version").output().is_ok_and(|out| out.status.success()) {
        return program.to_owned();
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten();
    let mut dirs: Vec<(u32, std::path::PathBuf)> = versions
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin").join(program))))
        .filter(|(_, path)| path.exists())
        .collect();
    dirs.sort();
    let found = dirs.pop().map(|(_, path)| path.display().to_string());
    found.unwrap_or_else(|| {
        panic!(
            "{program} not found: install PostgreSQL (apt-get install -y postgresql) or set EXECUTOR_TEST_DATABASE_URL"
        )
    })
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

fn start_server() -> Server {
    let root = running_as_root();
    // Not a TempDir: the server's shell removes it once the server is down.
    let dir = tempfile::Builder::new().prefix("executor-test-pg-").tempdir().expect("a temporary directory").keep();
    let data = dir.join("data");
    if root {
        let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "chown of {} to postgres failed", dir.display());
    }
    let initdb = as_server_user(root, &server_bin("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
        .arg(&data)
        .output()
        .expect("initdb runs (PostgreSQL must be installed: initdb and postgres on PATH)");
    assert!(
        initdb.status.success(),
        "initdb into {} failed: {}",
        data.display(),
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = free_port();
    // Stop the server and remove its directory when stdin closes (the test process is gone).
    let script = r#""$3" -D "$1/data" -p "$2" -k "$1" -c listen_addresses=127.0.0.1 -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 >"$1/log" 2>&1 &
        pid=$!
        cat >/dev/null
        kill -INT "$pid"
        wait "$pid"
        rm -rf "$1""#;
    let mut child = as_server_user(root, "sh")
        .args(["-c", script, "sh"])
        .arg(&dir)
        .arg(port.to_string())
        .arg(server_bin("postgres"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the test server starts");
    let keepalive = child.stdin.take();
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        let ready = Command::new("pg_isready").args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]).status();
        let ready = match ready {
            Ok(status) => status.success(),
            // Without pg_isready: try a TCP connection (the server accepts once it is ready).
            Err(_) => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        };
        if ready {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            panic!("the test PostgreSQL server exited ({status}) before it was ready: {log}");
        }
        assert!(Instant::now() < deadline, "the test PostgreSQL server was not ready within {START_PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { admin_url, _keepalive: Mutex::new(keepalive), _child: Mutex::new(Some(child)) }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("EXECUTOR_TEST_DATABASE_URL is a postgres:// URL");
    let (base, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
    let authority = base.split('/').next().unwrap_or(base);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{authority}/{database}{query}")
}

/// A new, empty database on the test server; returns its URL.
pub async fn new_database() -> String {
    let admin_url = tokio::task::spawn_blocking(|| server().admin_url.clone()).await.expect("the server starts");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.expect("connecting to the test server");
    let connection = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    drop(client);
    let _ = connection.await;
    with_database(&admin_url, &name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_database_url_gets_the_database_of_each_test() {
        use super::with_database;
        assert_eq!(with_database("postgres://u:p@h:1/postgres?x=1", "test_a"), "postgres://u:p@h:1/test_a?x=1");
        assert_eq!(with_database("postgresql://u@h", "test_b"), "postgresql://u@h/test_b");
    }
}
