//! Test harness for the services and the demo: run a binary as a real process, learn its address from
//! its `listening on` line, and give it a fresh database (a temporary SQLite file, or a new database on
//! the PostgreSQL server at `TEST_POSTGRES_URL`, which `scripts/test.sh` starts).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The token key the services are started with: the demo gateway's default, so that tokens the
/// gateway accepts are accepted by the services behind it (`config/tollgate.yaml`).
pub const TEST_JWT_SECRET: &str = "tollgate-demo-secret-0123456789abcdef";
/// The service token the services are started with, and that [`client`] calls them with.
pub const TEST_SERVICE_TOKEN: &str = "tollgate-test-service-token-0123456789abcdef";

/// A token for user `sub` with `scopes`, as the demo gateway's `tollgate token` mints them.
pub fn user_token(sub: i64, scopes: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "sub": sub.to_string(), "scope": scopes.join(" "), "exp": exp,
        "iss": "tollgate-demo", "aud": "tollgate-api",
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Where the workspace's binaries are: next to the test executable's `deps/` folder.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does) first",
        p.display()
    );
    p
}

/// A running service. Killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub name: String,
}

impl Proc {
    /// Start `bin` with `args` and wait (up to 60 s) for its `listening on http://ADDR` line.
    pub fn spawn(bin: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(bin_path(bin))
            .args(args)
            .env("JWT_SECRET", TEST_JWT_SECRET)
            .env("SERVICE_TOKEN", TEST_SERVICE_TOKEN)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(a) = line.strip_prefix("listening on http://") {
                        let _ = tx.send(a.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("{bin} did not start listening within 60 s");
            }
        };
        Proc {
            child,
            addr,
            name: bin.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no cleanup, no graceful anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh database for one test.
pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

/// The PostgreSQL server tests use.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://tollgate:tollgate@127.0.0.1:5432/postgres".into())
}

/// Run `f` to completion on a runtime of its own (for a blocking test).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl TestDb {
    pub fn sqlite(name: &str) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/{name}.db", dir.path().display());
        TestDb::Sqlite { _dir: dir, url }
    }

    /// A new, empty database on the test PostgreSQL server. Fails loudly when there is no server:
    /// run `scripts/test.sh`, which installs and starts one.
    pub fn postgres(name: &str) -> TestDb {
        use sqlx::Connection;
        let admin_url = postgres_admin_url();
        let db = format!("t_{name}_{:08x}", fastrand::u32(..));
        block_on(async {
            let mut c = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                panic!("no PostgreSQL at {admin_url} ({e}); scripts/test.sh installs and starts one, or set TEST_POSTGRES_URL")
            });
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut c)
                .await
                .unwrap();
        });
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        TestDb::Postgres {
            url: format!("{base}/{db}"),
            admin_url,
            name: db,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = self
        {
            use sqlx::Connection;
            let (admin_url, name) = (admin_url.clone(), name.clone());
            block_on(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        }
    }
}

/// A blocking HTTP client for tests (no proxy from the environment, short timeouts) that calls as
/// another service of the deployment (the service token): full access.
pub fn client() -> reqwest::blocking::Client {
    client_as(Some(TEST_SERVICE_TOKEN))
}

/// A client that sends `bearer` as its credential, or none.
pub fn client_as(bearer: Option<&str>) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(b) = bearer {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {b}").parse().unwrap(),
        );
    }
    reqwest::blocking::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Which database a [`Stack`] gives its services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    pub fn db(self, name: &str) -> TestDb {
        match self {
            DbKind::Sqlite => TestDb::sqlite(name),
            DbKind::Postgres => TestDb::postgres(name),
        }
    }
}

/// The three reference services as real processes, each with its own fresh database.
pub struct Stack {
    pub users: Proc,
    pub products: Proc,
    pub orders: Proc,
    pub users_db: TestDb,
    pub products_db: TestDb,
    pub orders_db: TestDb,
    /// Extra `order-service` flags used at start, reused by [`Stack::restart_orders`].
    pub order_flags: Vec<String>,
}

impl Stack {
    /// Start users, products and orders; `order_flags` are extra flags for `order-service`.
    pub fn start(kind: DbKind, order_flags: &[&str]) -> Stack {
        let users_db = kind.db("users");
        let products_db = kind.db("products");
        let orders_db = kind.db("orders");
        let users = Proc::spawn(
            "user-service",
            &["--listen", "127.0.0.1:0", "--database-url", users_db.url()],
        );
        let products = Proc::spawn(
            "product-service",
            &[
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                products_db.url(),
            ],
        );
        let order_flags: Vec<String> = order_flags.iter().map(|s| s.to_string()).collect();
        let orders = Self::spawn_orders(&users, &products, &orders_db, &order_flags);
        Stack {
            users,
            products,
            orders,
            users_db,
            products_db,
            orders_db,
            order_flags,
        }
    }

    fn spawn_orders(users: &Proc, products: &Proc, db: &TestDb, extra: &[String]) -> Proc {
        Self::spawn_orders_at(users, &format!("http://{}", products.addr), db, extra)
    }

    /// Another `order-service` on `db`, with this stack's users service and the products service at
    /// `products_url` (a [`fault_server`], say).
    pub fn orders_with_products(&self, db: &TestDb, products_url: &str) -> Proc {
        Self::spawn_orders_at(&self.users, products_url, db, &[])
    }

    fn spawn_orders_at(users: &Proc, products_url: &str, db: &TestDb, extra: &[String]) -> Proc {
        let users_url = format!("http://{}", users.addr);
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db.url(),
            "--users-url",
            &users_url,
            "--products-url",
            products_url,
        ];
        args.extend(extra.iter().map(String::as_str));
        Proc::spawn("order-service", &args)
    }

    /// Start `order-service` again on the same database (after [`Proc::kill9`], say).
    pub fn restart_orders(&mut self) {
        self.orders.kill9();
        self.orders = Self::spawn_orders(
            &self.users,
            &self.products,
            &self.orders_db,
            &self.order_flags,
        );
    }

    /// Create a user; returns its id.
    pub fn user(&self, name: &str, email: &str) -> i64 {
        let r = client()
            .post(self.users.url("/users"))
            .json(&serde_json::json!({"name": name, "email": email}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "create user");
        r.json::<serde_json::Value>().unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    /// Create a product; returns its id.
    pub fn product(&self, name: &str, price_cents: i64, stock: i64) -> i64 {
        let r = client()
            .post(self.products.url("/products"))
            .json(&serde_json::json!({"name": name, "price_cents": price_cents, "stock": stock}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "create product");
        r.json::<serde_json::Value>().unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    /// A product's current stock.
    pub fn stock(&self, id: i64) -> i64 {
        client()
            .get(self.products.url(&format!("/products/{id}")))
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap()["stock"]
            .as_i64()
            .unwrap()
    }
}

/// A free loopback address, for programs that bind the address they are given (the gateway).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `tollgate` process (or any program that listens on a known address), killed and reaped when
/// dropped.
pub struct Listening {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Listening {
    /// Spawn `cmd` and wait (up to 15 s) until `addr` accepts connections; panics if it exits first.
    pub fn spawn(cmd: &mut Command, addr: SocketAddr) -> Listening {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "{cmd:?} exited");
            assert!(
                std::time::Instant::now() < deadline,
                "{cmd:?} did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Listening { child, addr }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in HTTP/1.1 service for a fault the real one cannot be made to show on purpose: `answer`
/// gets each request's line (`POST /reservations HTTP/1.1`) and returns the whole response. Its
/// thread serves until the test process ends.
pub fn fault_server(answer: impl Fn(&str) -> String + Send + 'static) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Ok(read_half) = conn.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(read_half);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = conn.write_all(answer(first.trim_end()).as_bytes());
        }
    });
    addr
}
