//! Observe mode (agentless Consul, as consul-k8s deploys it): the test
//! plays consul-k8s's endpoints controller, registering each node's pod in
//! the catalog over real HTTP (`PUT /v1/catalog/register`, the reference's
//! payload) and flipping its readiness; the nodes only read, log in with a
//! service-account token, log in again when the controller destroys their
//! token, and log out on shutdown.

use std::future::IntoFuture;
use std::path::PathBuf;
use std::time::Duration;

use mesh::consul::{Consul, Mesh, Observe};
use mesh::prelude::*;
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::consul_agent::TestConsul;
use mesh_testkit::consul_catalog::TimeScale;
use mesh_testkit::consul_servers::K8sPod;
use mesh_testkit::fixture::{member, wait_member_names};
use mesh_testkit::within;

const STEP: Duration = Duration::from_secs(30);
const METHOD: &str = "consul-k8s-auth-method";
const NAMES: [&str; 3] = ["mesh-0", "mesh-1", "mesh-2"];

/// The controller's token (node:write and service:write on everything).
const CONTROLLER: &str = "controller-token";

/// Test agent in ACL mode with the Kubernetes auth method: `jwt-<pod>`
/// logs in as service account `mesh`.
async fn agent() -> TestConsul {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    consul.acl_like_consul_k8s(CONTROLLER, METHOD, "mesh", &NAMES);
    consul
}

/// Each pod's service-account token file, in a fresh directory.
fn token_file(dir: &std::path::Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.jwt"));
    std::fs::write(&path, format!("jwt-{name}\n")).expect("write the token");
    path
}

fn adapter(consul: &TestConsul, dir: &std::path::Path, name: &str) -> Consul {
    Consul::new()
        .address(consul.url(0))
        .service("mesh")
        .wait(Duration::from_secs(5))
        .observe(
            Observe::new()
                .login(METHOD)
                .bearer_token_file(token_file(dir, name))
                .login_meta("pod", format!("apps/{name}")),
        )
}

async fn start(name: &str, consul: Consul) -> Result<Node, StartError> {
    member("game", name)
        .listen("127.0.0.1:0")
        .capabilities(["game"])
        .actor::<Player>()
        .discovery(consul)
        .start()
        .await
}

/// What consul-k8s knows of a started node's pod.
fn pod(node: &Node) -> K8sPod {
    K8sPod {
        name: node.id().to_owned(),
        namespace: "apps".into(),
        uid: format!("uid-{}", node.id()),
        k8s_node: "kind-worker".into(),
        host_ip: "127.0.0.1".into(),
        addr: node.addr().expect("listening").parse().expect("addr"),
        service: "mesh".into(),
    }
}

/// The controller's `PUT /v1/catalog/register`.
async fn controller_registers(consul: &TestConsul, pod: &K8sPod, ready: bool) {
    let resp = mesh_testkit::http()
        .put(format!("{}/v1/catalog/register", consul.url(0)))
        .header("X-Consul-Token", CONTROLLER)
        .json(&pod.registration(ready))
        .send()
        .await
        .expect("the agent answers");
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
}

async fn members(node: &Node, want: &[&str]) {
    wait_member_names(node, STEP, want).await;
}

#[tokio::test]
async fn observing_nodes_form_a_cluster_from_the_platforms_registrations_and_never_register() {
    let consul = agent().await;
    let dir = mesh_testkit::scratch("observe");
    let mut nodes = Vec::new();
    for name in NAMES {
        // Nothing is registered yet: start reads an empty view and returns.
        nodes.push(
            start(name, adapter(&consul, &dir, name))
                .await
                .expect("start"),
        );
    }
    assert_eq!(consul.logins().len(), 3, "each node logged in");
    let pods: Vec<K8sPod> = nodes.iter().map(pod).collect();
    for p in &pods {
        controller_registers(&consul, p, true).await;
    }
    for n in &nodes {
        members(n, &NAMES).await;
    }
    // Calls route to every owner, from every node.
    for n in &nodes {
        for i in 0..30 {
            let id = format!("p{i}");
            let (served_by, _) = within(STEP, n.call::<Player, _>(&id, Score(1)).into_future())
                .await
                .unwrap_or_else(|e| panic!("{} calling {id}: {e}", n.id()));
            assert_eq!(served_by, n.owner_of::<Player>(&id).expect("owner"));
        }
    }
    // Nothing but reads and the login: no registration, no check, no
    // heartbeat; the health reads are ?stale (any server answers) and
    // carry a login token, never the controller's.
    let minted: Vec<String> = consul.logins().into_iter().map(|(s, _)| s).collect();
    for l in consul.log() {
        if l.token.as_deref() == Some(CONTROLLER) {
            continue;
        }
        let read = l.method == "GET" && l.path == "health/service/mesh";
        let login = l.method == "POST" && l.path == "acl/login";
        assert!(
            read || login,
            "an observing node sent {} {}",
            l.method,
            l.path
        );
        if read {
            assert!(
                l.query
                    .split('&')
                    .any(|q| q.split('=').next() == Some("stale")),
                "{}",
                l.query
            );
            assert!(
                l.token.as_ref().is_some_and(|t| minted.contains(t)),
                "a read without a login token"
            );
        }
    }
    // Readiness is health: a pod that turns not ready leaves every view,
    // and comes back when it is ready again.
    controller_registers(&consul, &pods[2], false).await;
    members(&nodes[0], &NAMES[..2]).await;
    members(&nodes[1], &NAMES[..2]).await;
    controller_registers(&consul, &pods[2], true).await;
    members(&nodes[0], &NAMES).await;

    // The controller destroys mesh-1's token (as when it deregisters the
    // instance): mesh-1 logs in again and keeps following.
    let revoked = tokio::time::Instant::now();
    assert_eq!(consul.revoke_logins("pod", "apps/mesh-1"), 1);
    // The change wakes mesh-1's blocked read; its next read is refused.
    controller_registers(&consul, &pods[2], false).await;
    within(
        STEP,
        consul.wait_logged(|l| l.path == "acl/login" && l.at > revoked),
    )
    .await;
    // And follows with the new token.
    members(&nodes[1], &NAMES[..2]).await;
    controller_registers(&consul, &pods[2], true).await;
    members(&nodes[1], &NAMES).await;
    let again = consul
        .logins()
        .into_iter()
        .filter(|(_, l)| l.meta.get("pod").and_then(|v| v.as_str()) == Some("apps/mesh-1"))
        .count();
    assert_eq!(again, 1, "mesh-1 logged in again");

    // Shutdown logs out: no token is left behind.
    for n in nodes {
        n.shutdown().await.expect("shutdown");
    }
    assert!(consul.logins().is_empty(), "{:?}", consul.logins());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_refused_login_or_mesh_mode_is_a_clear_error_at_start() {
    let consul = agent().await;
    let dir = mesh_testkit::scratch("observe-refused");
    let forged = dir.join("forged.jwt");
    std::fs::write(&forged, "not-a-service-account-token").expect("write");
    let a = Consul::new()
        .address(consul.url(0))
        .observe(Observe::new().login(METHOD).bearer_token_file(&forged));
    let err = start("mesh-0", a).await.expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, StartError::Discovery(_)), "{err:?}");
    assert!(
        text.contains("logging in with auth method") && text.contains("403"),
        "{text}"
    );
    let missing = Consul::new().address(consul.url(0)).observe(
        Observe::new()
            .login(METHOD)
            .bearer_token_file(dir.join("none")),
    );
    let text = start("mesh-0", missing)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("cannot read the login's bearer token"),
        "{text}"
    );
    let meshed = adapter(&consul, &dir, "mesh-0").through_sidecar(Mesh::new());
    let text = start("mesh-0", meshed)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        text.contains("cannot be combined with Consul::through_sidecar"),
        "{text}"
    );
    assert!(consul.logins().is_empty(), "no login was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}
