//! `mesh-node diagnose`: each problem is found and printed with its fix,
//! the exit status says whether there was one; against real listeners,
//! files and the Consul test agent (agentless: ACL login, a pod the
//! controller has or has not registered, a skewed clock).

use std::path::Path;

use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;
use mesh_testkit::consul_servers::K8sPod;
use tokio::process::Command;

const COOKIE: &str = "9uycQGcy8Aj7DsT2mSoVbluh82iXeksxsSFb1MpyjR0=";

/// Runs `mesh-node diagnose` with `env` only: exit success and stdout.
async fn diagnose(env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .arg("diagnose")
        .env_clear()
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run mesh-node diagnose");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The lines of `check`.
fn lines<'a>(out: &'a str, check: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.contains(&format!(" {check}: ")))
        .collect()
}

/// Some problem of `check` whose fix says `fix_has`.
fn problem(out: &str, check: &str, fix_has: &str) {
    let all: Vec<&str> = out.lines().collect();
    let found = all.iter().enumerate().any(|(i, l)| {
        l.starts_with("PROBLEM")
            && l.contains(&format!(" {check}: "))
            && all
                .get(i + 1)
                .is_some_and(|f| f.trim_start().starts_with("fix:") && f.contains(fix_has))
    });
    assert!(
        found,
        "no {check} problem whose fix says {fix_has:?}:\n{out}"
    );
}

fn ok(out: &str, check: &str) {
    let l = lines(out, check);
    assert!(
        !l.is_empty() && l.iter().all(|l| l.starts_with("ok")),
        "{check} not ok:\n{out}"
    );
}

#[tokio::test]
async fn a_sound_seeded_node_has_no_problem() {
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seed = format!("localhost:{}", peer.local_addr().unwrap().port());
    let (success, out) = diagnose(&[
        ("MESH_NODE_ID", "a"),
        ("MESH_COOKIE", COOKIE),
        ("MESH_LISTEN", "127.0.0.1:0"),
        ("MESH_SEEDS", &seed),
        // The managed sidecar's HAProxy (scripts/test.sh installs it).
        ("MESH_CONSUL_SIDECAR", "haproxy"),
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ])
    .await;
    assert!(success, "{out}");
    for check in [
        "node id",
        "cookie",
        "tls",
        "listen",
        &format!("seed {seed}"),
        "sidecar",
        "sidecar ports",
    ] {
        ok(&out, check);
    }
    assert!(out.ends_with("0 problem(s)\n"), "{out}");
}

#[tokio::test]
async fn each_problem_of_a_broken_node_is_printed_with_its_fix() {
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_addr = held.local_addr().unwrap().to_string();
    let port = held.local_addr().unwrap().port();
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let dir = std::env::temp_dir().join(format!("mesh-node-diagnose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The pod's annotations: injected, transparent proxy, only inbound
    // excluded.
    std::fs::write(
        dir.join("annotations"),
        format!(
            "consul.hashicorp.com/connect-inject=\"true\"\n\
             consul.hashicorp.com/transparent-proxy-exclude-inbound-ports=\"{port}\"\n"
        ),
    )
    .unwrap();
    let (success, out) = diagnose(&[
        ("MESH_NODE_ID", "a"),
        ("MESH_COOKIE", "password123"),
        ("MESH_LISTEN", &held_addr),
        ("MESH_TLS_DIR", dir.to_str().unwrap()),
        ("MESH_SEEDS", &closed),
        ("MESH_PODINFO_DIR", dir.to_str().unwrap()),
    ])
    .await;
    assert!(!success, "{out}");
    problem(&out, "cookie", "openssl rand -base64 32");
    problem(&out, "tls", "cert.pem");
    problem(&out, "listen", "another process holds the port");
    problem(&out, &format!("seed {closed}"), "is a node running there");
    problem(
        &out,
        "proxy exclusions",
        &format!("transparent-proxy-exclude-outbound-ports: \"{port}\""),
    );
    assert!(
        lines(&out, "proxy exclusions")
            .iter()
            .any(|l| l.starts_with("ok") && l.contains("inbound")),
        "{out}"
    );
    problem(&out, "proxy exclusions", "MESH_CONSUL_MODE=observe");
    let (_, out) = diagnose(&[
        ("MESH_COOKIE", COOKIE),
        ("MESH_DNS_SEEDS", "no-such-name.invalid:7000"),
    ])
    .await;
    problem(&out, "node id", "MESH_NODE_ID");
    problem(&out, "dns seeds", "publishNotReadyAddresses");
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bearer(dir: &Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, "jwt-mesh-0").unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn against_agentless_consul_it_checks_login_registration_and_clock() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    consul.acl_like_consul_k8s("controller", "k8s-auth", "mesh", &["mesh-0"]);
    let dir =
        std::env::temp_dir().join(format!("mesh-node-diagnose-consul-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = consul.url(0);
    // The service-account token, as a file of ours.
    let token_file = bearer(&dir);
    let env = |login: &'static str| {
        vec![
            ("MESH_NODE_ID", "mesh-0".to_owned()),
            ("MESH_COOKIE", COOKIE.to_owned()),
            ("MESH_LISTEN", "127.0.0.1:0".to_owned()),
            ("MESH_CONSUL", url.clone()),
            ("MESH_CONSUL_MODE", "observe".to_owned()),
            ("MESH_CONSUL_SERVICE", "mesh".to_owned()),
            ("MESH_CONSUL_LOGIN", login.to_owned()),
            ("MESH_CONSUL_BEARER_TOKEN_FILE", token_file.clone()),
        ]
    };
    let run = |env: Vec<(&'static str, String)>| async move {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        diagnose(&env).await
    };
    // Not registered yet: the fix names the annotation and the pod name.
    let (success, out) = run(env("k8s-auth")).await;
    assert!(!success, "{out}");
    for check in ["reachable", "clock", "login", "token"] {
        ok(&out, check);
    }
    problem(&out, "service", "connect-inject");
    assert!(consul.logins().is_empty(), "the diagnosis logged out again");
    // The controller registers the pod, ready: no problem left.
    let pod = K8sPod {
        name: "mesh-0".into(),
        namespace: "apps".into(),
        uid: "u-0".into(),
        k8s_node: "kind-worker".into(),
        host_ip: "127.0.0.1".into(),
        addr: "127.0.0.1:7000".parse().unwrap(),
        service: "mesh".into(),
    };
    let resp = mesh_testkit::http()
        .put(format!("{url}/v1/catalog/register"))
        .header("X-Consul-Token", "controller")
        .json(&pod.registration(true))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let (success, out) = run(env("k8s-auth")).await;
    assert!(success, "{out}");
    ok(&out, "service");
    // A wrong auth method, and a clock 30 s off.
    consul.skew_clock(30);
    let (success, out) = run(env("nope")).await;
    assert!(!success, "{out}");
    problem(&out, "login", "auth method's name");
    problem(&out, "token", "CONSUL_HTTP_TOKEN");
    problem(&out, "clock", "time synchronisation");
    // Consul not there at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut e = env("k8s-auth");
    e[3].1 = closed;
    let (success, out) = run(e).await;
    assert!(!success, "{out}");
    problem(&out, "reachable", "MESH_CONSUL");
    let _ = std::fs::remove_dir_all(&dir);
}
