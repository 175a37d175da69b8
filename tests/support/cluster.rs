//! Throwaway PostgreSQL clusters for integration tests.
//!
//! Every `Cluster` owns a private temp directory (data dir, socket dir, log, TLS files) and a
//! postmaster on its own 127.0.0.1 port, so tests can run in parallel threads of one process.
//! The API is synchronous (std::process) so both plain and `#[tokio::test]` tests can use it;
//! from async code prefer calling it before the runtime does real work, or via `spawn_blocking`.
//!
//! Do not keep a `Cluster` in a `static`: statics are never dropped, and the server would then
//! only be stopped by the watchdog when the test process exits.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterOptions {
    /// Serve TLS with a freshly generated self-signed certificate (see [`Cluster::ca_cert`]).
    pub ssl: bool,
}

pub struct Cluster {
    dir: Option<TempDir>,
    data_dir: PathBuf,
    port: u16,
    ssl: bool,
    cert: Option<PathBuf>,
    /// Stops the server if this process dies without running `Drop` (SIGKILL, abort).
    watchdog: Option<Child>,
    stopped: bool,
}

/// How to run `initdb`/`pg_ctl`: they refuse to run as root, so as root they go through
/// `runuser -u postgres --` and the cluster directory is owned by `postgres`.
struct Tools {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    as_postgres: bool,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let bin_dir = find_pg_bin_dir();
        Tools {
            initdb: bin_dir.join("initdb"),
            pg_ctl: bin_dir.join("pg_ctl"),
            as_postgres: running_as_root(),
        }
    })
}

/// `initdb` on PATH wins (with its `pg_ctl` next to it); otherwise the highest
/// /usr/lib/postgresql/<major>/bin, which is where Debian puts them off PATH.
fn find_pg_bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return dir;
            }
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let Ok(major) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, bin));
            }
        }
    }
    best.map(|(_, bin)| bin)
        .expect("initdb/pg_ctl not found on PATH nor in /usr/lib/postgresql/*/bin")
}

/// Effective uid from /proc, so no libc dependency is needed.
fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// A command for a PostgreSQL server tool, run as `postgres` when we are root.
fn pg_tool(program: &Path, cwd: &Path) -> Command {
    let mut cmd = if tools().as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    // The test's cwd may not be readable by `postgres`; initdb/pg_ctl warn or fail there.
    cmd.current_dir(cwd).stdin(Stdio::null());
    scrub_pg_env(&mut cmd);
    cmd
}

/// PG* variables from the developer's shell (PGHOST, PGSSLMODE, PGSERVICE...) would silently
/// redirect or alter our connections.
fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// RFC 3986 userinfo/path encoding: everything but unreserved characters is escaped.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {path:?}: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Password of the superuser `postgres`. It contains `:`, `@`, `/`, `?` and `%` so that
    /// any code building a connection URL without percent-encoding fails loudly.
    pub const PASSWORD: &'static str = "s3cret-Pa55:w@rd/x?%";

    pub fn start() -> Cluster {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("fmig-pg-")
            .tempdir()
            .expect("create cluster temp dir");
        let root = dir.path().to_path_buf();
        let data_dir = root.join("data");

        let pwfile = root.join("pwfile");
        fs::write(&pwfile, format!("{}\n", Self::PASSWORD)).expect("write pwfile");
        let cert = opts.ssl.then(|| generate_cert(&root));
        if tools().as_postgres {
            let out = run(
                Command::new("chown").args(["-R", "postgres:"]).arg(&root),
                "chown",
            );
            assert!(
                out.status.success(),
                "chown -R postgres: {root:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let out = run(
            pg_tool(&tools().initdb, &root)
                .arg("-D")
                .arg(&data_dir)
                .args(["-U", "postgres", "--auth=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--encoding=UTF8", "--locale=C", "--no-sync"]),
            "initdb",
        );
        // Only initdb needs the clear-text password on disk.
        let _ = fs::remove_file(&pwfile);
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // Settings that never change go into postgresql.conf so `restart` keeps them; only the
        // port is passed on the command line because it may change on a bind race.
        let mut conf = String::from("\n# fmig test harness\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!("unix_socket_directories = '{}'\n", root.display()));
        conf.push_str("shared_buffers = 32MB\nmax_connections = 50\n");
        // fsync stays on: tests kill the server and check that committed data survived.
        if let Some(cert) = &cert {
            conf.push_str("ssl = on\n");
            conf.push_str(&format!("ssl_cert_file = '{}'\n", cert.display()));
            conf.push_str(&format!(
                "ssl_key_file = '{}'\n",
                root.join("server.key").display()
            ));
        }
        fs::OpenOptions::new()
            .append(true)
            .open(data_dir.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("append to postgresql.conf");

        let mut cluster = Cluster {
            dir: Some(dir),
            data_dir,
            port: 0,
            ssl: opts.ssl,
            cert,
            watchdog: None,
            // From the first start attempt on a server may be running: Drop must try to stop it.
            stopped: false,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog());

        // A port found free may be taken by a parallel test before the postmaster binds it.
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            let log_before = fs::metadata(cluster.log_path()).map_or(0, |m| m.len() as usize);
            let out = cluster.pg_ctl_start("start");
            if out.status.success() {
                return cluster;
            }
            last_error = format!(
                "{}{}\n--- server.log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&cluster.log_path(), 30)
            );
            let log = fs::read_to_string(cluster.log_path()).unwrap_or_default();
            let attempt_log = log.get(log_before..).unwrap_or(&log);
            if !(attempt_log.contains("could not bind")
                || attempt_log.contains("Address already in use"))
            {
                break;
            }
        }
        panic!("pg_ctl start failed:\n{last_error}");
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().expect("cluster dir").path()
    }

    fn log_path(&self) -> PathBuf {
        self.root().join("server.log")
    }

    fn pg_ctl_start(&self, action: &str) -> Output {
        let mut cmd = pg_tool(&tools().pg_ctl, self.root());
        cmd.arg(action)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-l"])
            .arg(self.log_path())
            .arg("-o")
            .arg(format!("-p {}", self.port));
        if action == "restart" {
            cmd.args(["-m", "fast"]);
        }
        run(&mut cmd, "pg_ctl")
    }

    /// A shell that waits for EOF on its stdin, i.e. for this process to exit, then stops the
    /// server and removes the directory. `Drop` kills it first, so it only acts after a crash.
    fn spawn_watchdog(&self) -> Child {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"read -r _; dir=$1; shift; "$@" >/dev/null 2>&1; rm -rf -- "$dir""#)
            .arg("fmig-pg-watchdog")
            .arg(self.root());
        if tools().as_postgres {
            cmd.args(["runuser", "-u", "postgres", "--"]);
        }
        cmd.arg(&tools().pg_ctl)
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate"])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        scrub_pg_env(&mut cmd);
        cmd.spawn().expect("spawn cluster watchdog")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Superuser URL. Without TLS it pins `sslmode=disable`; with TLS it has no query string so
    /// callers append their own `?sslmode=...`.
    pub fn url(&self, db: &str) -> String {
        let params = if self.ssl { "" } else { "sslmode=disable" };
        self.url_with(db, "postgres", Self::PASSWORD, params)
    }

    /// `params` is a raw query string without `?` (e.g. `"sslmode=require"`), `""` for none.
    pub fn url_with(&self, db: &str, user: &str, password: &str, params: &str) -> String {
        let mut url = format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(db)
        );
        if !params.is_empty() {
            url.push('?');
            url.push_str(params);
        }
        url
    }

    /// With TLS: the self-signed certificate the server presents (CN=localhost,
    /// SAN DNS:localhost, IP:127.0.0.1); usable as `sslrootcert` for `verify-full`.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.cert.as_deref()
    }

    /// Tail of the server log, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// A psql command over TCP as `postgres` with the right password, ready for more args.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new("psql");
        scrub_pg_env(&mut cmd);
        cmd.env("PGPASSWORD", Self::PASSWORD)
            .env("PGCLIENTENCODING", "UTF8")
            // Keep psql from reading a developer's ~/.pgpass or service file.
            .env("PGPASSFILE", "/dev/null")
            .env("PGSERVICEFILE", "/dev/null")
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db]);
        if !self.ssl {
            cmd.env("PGSSLMODE", "disable");
        }
        cmd
    }

    /// Runs `sql` (fed on stdin, so its size is unlimited) and returns stdout, tuples only,
    /// fields separated by `|`. Panics with psql's stderr on any error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut child = self
            .psql_command(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        // Written from another thread: a large result could otherwise fill stdout while we
        // are still blocked writing stdin.
        let sql_owned = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(sql_owned.as_bytes()));
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        self.check_psql(out, &format!("SQL:\n{}", truncate(sql, 2000)))
    }

    pub fn psql_file(&self, db: &str, path: &Path) {
        let out = run(self.psql_command(db).arg("-f").arg(path), "psql -f");
        self.check_psql(out, &format!("file {}", path.display()));
    }

    fn check_psql(&self, out: Output, what: &str) -> String {
        if !out.status.success() {
            panic!(
                "psql failed ({}) on port {} running {what}\n--- stderr ---\n{}\n--- server.log ---\n{}",
                out.status,
                self.port,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
        }
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        );
    }

    /// Fast restart on the same port (clients are disconnected, committed data stays).
    pub fn restart(&self) {
        assert!(!self.stopped, "restart of a stopped cluster");
        let out = self.pg_ctl_start("restart");
        assert!(
            out.status.success(),
            "pg_ctl restart failed:\n{}{}\n--- server.log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
    }

    /// Immediate stop (no checkpoint, like a crash as far as durability is concerned).
    /// Idempotent; the directory stays until drop.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let out = pg_tool(&tools().pg_ctl, self.root())
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30"])
            .output();
        if out.map(|o| o.status.success()).unwrap_or(false) {
            return;
        }
        // pg_ctl could not do it: kill the postmaster named in its pid file, after checking
        // that the pid was not reused by an unrelated process.
        if let Some(pid) = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::trim).map(str::to_owned))
            .filter(|pid| pid.parse::<u32>().is_ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                    String::from_utf8_lossy(&cmd).contains(&*self.data_dir.to_string_lossy())
                })
            })
        {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            // The postmaster's children notice its death and exit on their own shortly after.
            for _ in 0..100 {
                let alive = Command::new("kill")
                    .args(["-0", &pid])
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !alive {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.stop();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Self-signed certificate that doubles as its own CA, valid for localhost and 127.0.0.1.
fn generate_cert(root: &Path) -> PathBuf {
    let cert = root.join("server.crt");
    let key = root.join("server.key");
    let out = run(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null()),
        "openssl",
    );
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server refuses a key readable by group/others.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod server.key");
    cert
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
