//! A throwaway PostgreSQL server for tests, and one new database per test.
//!
//! With `EXECUTOR_TEST_DATABASE_URL` set, its server is used (the URL must allow
//! `CREATE DATABASE`). Otherwise the first test that asks starts a server: `initdb` into a
//! temporary directory and `postgres` on a free loopback port with its socket in that directory
//! (as the `postgres` user when the tests run as root, as CI does). One server serves the whole
//! test process; each caller of [`new_database`] gets its own database (`test_<uuid>`).
//! [`new_tls_database`] does the same on a second server that also speaks TLS.
//!
//! **Stopping it.** The server runs under a small shell that waits on a pipe whose write end
//! this process holds for its whole life: when the test process exits (however it ends), the
//! pipe closes, the shell stops the server (fast shutdown) and removes the temporary directory.

use std::path::{Path, PathBuf};
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
    /// The self-signed certificate of a server started with TLS.
    certificate: Option<PathBuf>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static TLS_SERVER: OnceLock<Server> = OnceLock::new();

/// The admin URL of the test server, starting it on first use. Blocking.
fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("EXECUTOR_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            Server { admin_url: url, _keepalive: Mutex::new(None), _child: Mutex::new(None), certificate: None }
        }
        _ => start_server(false),
    })
}

/// A second throwaway server that accepts TLS (and plain) connections, with a certificate for
/// `localhost` and `127.0.0.1` from a test CA made with the `openssl` command: a new database on
/// it, and the CA certificate (PEM) to trust. Always a server of its own, even with
/// `EXECUTOR_TEST_DATABASE_URL`.
pub async fn new_tls_database() -> (String, PathBuf) {
    let (admin_url, certificate) = tokio::task::spawn_blocking(|| {
        let server = TLS_SERVER.get_or_init(|| start_server(true));
        (server.admin_url.clone(), server.certificate.clone().expect("a TLS server has a certificate"))
    })
    .await
    .expect("the TLS server starts");
    (create_database(&admin_url).await, certificate)
}

/// Writes a test CA (`ca.crt`) and a server certificate it signed for `localhost` and
/// `127.0.0.1` with its key (`server.crt`, `server.key`) into `dir`; returns the CA's path.
fn certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (it makes the TLS test server's certificates)");
        assert!(made.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&made.stderr));
    };
    let days = ["-days", "2"];
    openssl(
        &[
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=bhiv-test-ca"],
            &days[..],
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .expect("the extensions file is written");
    openssl(
        &[
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"],
            &days[..],
            &["-extfile", "server.ext", "-out", "server.crt"],
        ]
        .concat(),
    );
    // PostgreSQL refuses a key that others may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("the key's mode");
    dir.join("ca.crt")
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

fn start_server(tls: bool) -> Server {
    let root = running_as_root();
    // Not a TempDir: the server's shell removes it once the server is down.
    let dir = tempfile::Builder::new().prefix("executor-test-pg-").tempdir().expect("a temporary directory").keep();
    let data = dir.join("data");
    let certificate = tls.then(|| certificates(&dir));
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
    let script = r#"dir=$1 port=$2 bin=$3; shift 3
        "$bin" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "$@" >"$dir/log" 2>&1 &
        pid=$!
        cat >/dev/null
        kill -INT "$pid"
        wait "$pid"
        rm -rf "$dir""#;
    let tls_settings: Vec<String> = match tls {
        true => ["-c", "ssl=on", "-c", &format!("ssl_cert_file={}/server.crt", dir.display())]
            .into_iter()
            .map(String::from)
            .chain(["-c".to_owned(), format!("ssl_key_file={}/server.key", dir.display())])
            .collect(),
        false => Vec::new(),
    };
    let mut child = as_server_user(root, "sh")
        .args(["-c", script, "sh"])
        .arg(&dir)
        .arg(port.to_string())
        .arg(server_bin("postgres"))
        .args(&tls_settings)
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
    Server { admin_url, _keepalive: Mutex::new(keepalive), _child: Mutex::new(Some(child)), certificate }
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
    create_database(&admin_url).await
}

async fn create_database(admin_url: &str) -> String {
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) =
        tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.expect("connecting to the test server");
    let connection = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    drop(client);
    let _ = connection.await;
    with_database(admin_url, &name)
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
