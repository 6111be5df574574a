//! A throwaway PostgreSQL server per test: `initdb` in a scratch directory,
//! started as the `postgres` user when the tests run as root (the server
//! refuses root), listening on a Unix socket in that directory only (no
//! port to pick, nothing reachable from elsewhere), with fsync off (a test
//! server: a crash of the machine may corrupt it; nothing here survives the
//! test anyway).
//!
//! It needs PostgreSQL's server binaries (`pg_config --bindir`; Debian's
//! `postgresql`, which `scripts/test.sh` installs when missing): without
//! them [`Server::start`] panics saying so; the tests never skip.
//!
//! [`Server::start_tls`] also listens on 127.0.0.1 with TLS (a test CA's
//! certificate for that address), and takes TCP connections only over
//! TLS (`hostssl` in `pg_hba.conf`).
//!
//! Drop: the server is stopped (`pg_ctl stop -m immediate`) and its
//! directory removed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One server. See the [module docs](self).
#[derive(Debug)]
pub struct Server {
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
    port: u16,
    /// With TLS: the CA's certificate, PEM.
    ca: Option<String>,
}

/// Runs `cmd` as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Server {
    /// Creates and starts a server (a second or two), fsync off.
    pub fn start() -> Server {
        Server::start_with(false)
    }

    /// The same; with `fsync`, the server syncs its log on every commit
    /// (PostgreSQL's defaults: what a benchmark of durable writes needs).
    pub fn start_with(fsync: bool) -> Server {
        Server::create(fsync, false)
    }

    /// A server that also listens on 127.0.0.1 (a free port) and takes
    /// TCP connections over TLS only, its certificate (for the IP address
    /// 127.0.0.1) signed by a CA of its own: [`Server::ca`],
    /// [`Server::tcp_config`].
    pub fn start_tls() -> Server {
        Server::create(false, true)
    }

    /// The TLS server's CA certificate, PEM (`mesh::state::PgOptions::ca`).
    pub fn ca(&self) -> &str {
        self.ca.as_deref().expect("a server started with start_tls")
    }

    /// The connection string over TCP to 127.0.0.1 (with TLS: the only
    /// way that server lets a TCP client in).
    pub fn tcp_config(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn create(fsync: bool, tls: bool) -> Server {
        let bin = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|b| b.join("initdb").exists())
            .or_else(|| {
                // Debian's layout, when pg_config is not there.
                let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|b| b.join("initdb").exists())
                    .collect();
                found.sort();
                found.pop()
            })
            .unwrap_or_else(|| {
                panic!(
                    "PostgreSQL's server is not installed (no initdb under `pg_config --bindir`): \
                     apt-get install postgresql (scripts/test.sh does it)"
                )
            });
        // Short: the socket path must stay under 107 bytes.
        let dir = std::env::temp_dir().join(format!(
            "mpg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the server's directory");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&dir);
                    c
                },
                "chown the server's directory to postgres",
            );
        }
        let data = dir.join("data");
        let mut init = as_postgres(&bin.join("initdb"));
        init.current_dir(&dir).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(init, "initdb");
        let durability = match fsync {
            true => "fsync = on\nsynchronous_commit = on\n",
            false => "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
        };
        let (mut port, mut ca, mut listen) = (5432, None, String::new());
        if tls {
            // A free port now; taken by someone else before the server
            // starts, and the start fails saying so.
            port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let authority = crate::pki::Ca::new("pg.test");
            let leaf = authority.server_leaf("127.0.0.1");
            for (name, text) in [("server.crt", &leaf.cert), ("server.key", &leaf.key)] {
                let path = data.join(name);
                std::fs::write(&path, text).expect("the server's TLS files");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                if is_root() {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(&path);
                    run(c, "chown the TLS files");
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
            listen.push_str(
                "listen_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\n",
            );
            ca = Some(authority.pem.clone());
        } else {
            listen.push_str("listen_addresses = ''\n");
        }
        let conf = format!(
            "{listen}port = {port}\nunix_socket_directories = '{}'\n{durability}\
             max_connections = 200\nmax_parallel_workers_per_gather = 0\n",
            dir.display()
        );
        let path = data.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&path).expect("postgresql.conf");
        all.push_str(&conf);
        std::fs::write(&path, all).expect("postgresql.conf");
        let mut server = Server {
            dir,
            bin,
            running: false,
            port,
            ca,
        };
        server.resume();
        server
    }

    /// The connection string of this server (`mesh::state::PgStore::new`).
    pub fn config(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.display(),
            self.port
        )
    }

    /// Stops the server (`-m fast`: clients are disconnected, nothing
    /// committed is lost); [`Server::resume`] starts it again on the same
    /// data.
    pub fn stop(&mut self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        self.running = false;
    }

    /// Starts it (again).
    pub fn resume(&mut self) {
        let log = self.dir.join("log");
        let log = log.to_string_lossy().into_owned();
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "start"]);
        self.running = true;
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.current_dir(&self.dir)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args);
        run(c, "pg_ctl");
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let mut c = as_postgres(&self.bin.join("pg_ctl"));
            c.current_dir(&self.dir)
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = c.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
