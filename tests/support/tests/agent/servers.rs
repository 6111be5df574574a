//! The servers' endpoints of the test agent (`consul_servers`), pinned to
//! `shared/reference/deploy-and-agentless.md` section 3 and Consul's
//! documented API: catalog register and deregister as consul-k8s calls
//! them, ACL login and logout, config entries.

use std::collections::HashMap;

use mesh_testkit::consul_agent::{Acl, TestConsul, Token};
use mesh_testkit::consul_catalog::TimeScale;
use mesh_testkit::consul_servers::K8sPod;
use serde_json::{json, Value};

struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

async fn send(
    consul: &TestConsul,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = mesh_testkit::http().request(method, format!("{}/v1/{path}", consul.url(0)));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the agent answers");
    Answer {
        status: resp.status().as_u16(),
        body: resp.text().await.expect("body"),
    }
}

async fn put(consul: &TestConsul, path: &str, token: Option<&str>, body: Value) -> Answer {
    send(consul, reqwest::Method::PUT, path, token, Some(body)).await
}

async fn get(consul: &TestConsul, path: &str, token: Option<&str>) -> Answer {
    send(consul, reqwest::Method::GET, path, token, None).await
}

fn pod(name: &str, port: u16) -> K8sPod {
    K8sPod {
        name: name.into(),
        namespace: "apps".into(),
        uid: format!("uid-{name}"),
        k8s_node: "ip-10-0-1-5".into(),
        host_ip: "10.0.1.5".into(),
        addr: format!("10.1.2.{port}:7000").parse().expect("addr"),
        service: "mesh".into(),
    }
}

/// The `(service ID, check IDs)` of `GET /v1/health/service/<name>[?passing]`.
fn entries(v: &Value) -> Vec<(String, Vec<String>)> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|e| {
            let checks = e["Checks"]
                .as_array()
                .expect("checks")
                .iter()
                .map(|c| c["CheckID"].as_str().unwrap_or("").to_owned())
                .collect();
            (e["Service"]["ID"].as_str().unwrap_or("").to_owned(), checks)
        })
        .collect()
}

#[tokio::test]
async fn catalog_register_follows_the_reference_and_consul_k8s_entries_read_back() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    // The RPC's validation errors, answered with 500 as Consul's HTTP
    // layer answers an RPC error.
    for (body, want) in [
        (json!({"Address": "10.0.0.1"}), "Must provide node"),
        (
            json!({"Node": "n1"}),
            "Must provide address if SkipNodeUpdate is not set",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1", "ID": "nope"}),
            "Bad node ID",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "x"}}),
            "Must provide service name (Service.Service) when service ID is provided",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1",
                   "Service": {"Service": "web", "Address": "0.0.0.0"}}),
            "Invalid service address",
        ),
        (
            json!({"Node": "n1", "Address": "10.0.0.1",
                   "Check": {"Name": "c", "ServiceID": "ghost"}}),
            "Unknown service ID 'ghost' for check ID 'c'",
        ),
    ] {
        let a = put(&consul, "catalog/register", None, body).await;
        assert_eq!(a.status, 500, "{}", a.body);
        assert!(a.body.contains(want), "{} lacks {want:?}", a.body);
    }
    assert!(!consul.with_catalog(|c| c.nodes.contains_key("n1")));

    // Two pods on one Kubernetes node: one synthetic node, created by the
    // first registration although SkipNodeUpdate is set.
    let (p0, p1) = (pod("mesh-0", 3), pod("mesh-1", 4));
    for p in [&p0, &p1] {
        let a = put(&consul, "catalog/register", None, p.registration(true)).await;
        assert_eq!((a.status, a.json()), (200, json!(true)));
    }
    let a = get(&consul, "health/service/mesh?passing", None).await;
    let v = a.json();
    assert_eq!(
        entries(&v),
        [
            ("mesh-0-mesh".into(), vec!["apps/mesh-0-mesh".into()]),
            ("mesh-1-mesh".into(), vec!["apps/mesh-1-mesh".into()]),
        ],
        "no serfHealth on a synthetic node"
    );
    let e = &v[0];
    assert_eq!(e["Node"]["Node"], "ip-10-0-1-5-virtual");
    assert_eq!(e["Node"]["Address"], "10.0.1.5");
    assert_eq!(e["Node"]["Meta"]["synthetic-node"], "true");
    assert_eq!(e["Service"]["Address"], "10.1.2.3");
    assert_eq!(e["Service"]["Port"], 7000);
    assert_eq!(e["Service"]["Meta"]["pod-name"], "mesh-0");
    assert_eq!(e["Checks"][0]["Type"], "kubernetes-readiness");
    assert_eq!(e["Checks"][0]["Status"], "passing");

    // SkipNodeUpdate leaves an existing node alone.
    let mut moved = p1.registration(true);
    moved["Address"] = json!("10.9.9.9");
    put(&consul, "catalog/register", None, moved).await;
    assert_eq!(
        consul.with_catalog(|c| c.nodes["ip-10-0-1-5-virtual"].address.clone()),
        "10.0.1.5"
    );

    // Readiness flips by registering again: the status given is kept
    // (catalog checks are static), and ?passing drops the pod.
    let index = |a: &Answer| a.json().as_array().map(Vec::len);
    let a = put(&consul, "catalog/register", None, p1.registration(false)).await;
    assert_eq!(a.status, 200);
    let a = get(&consul, "health/service/mesh?passing", None).await;
    assert_eq!(index(&a), Some(1));
    let a = get(&consul, "health/service/mesh", None).await;
    let all = a.json();
    assert_eq!(all[1]["Checks"][0]["Status"], "critical");
    assert_eq!(
        all[1]["Checks"][0]["Output"],
        "Pod \"apps/mesh-1\" is not ready"
    );
    put(&consul, "catalog/register", None, p1.registration(true)).await;
    let a = get(&consul, "health/service/mesh?passing", None).await;
    assert_eq!(index(&a), Some(2));

    // Deregister: the service (and its check), then with only Node the
    // node and all on it; unknown IDs are a no-op.
    let a = put(&consul, "catalog/deregister", None, p0.deregistration()).await;
    assert_eq!((a.status, a.json()), (200, json!(true)));
    let a = get(&consul, "health/service/mesh", None).await;
    assert_eq!(entries(&a.json()).len(), 1);
    let a = put(&consul, "catalog/deregister", None, p0.deregistration()).await;
    assert_eq!(a.status, 200);
    let a = put(
        &consul,
        "catalog/deregister",
        None,
        json!({"Node": "ip-10-0-1-5-virtual"}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(!consul.with_catalog(|c| c.nodes.contains_key("ip-10-0-1-5-virtual")));
    let a = put(&consul, "catalog/deregister", None, json!({})).await;
    assert_eq!((a.status, a.body.as_str()), (500, "Must provide node"));
}

#[tokio::test]
async fn a_blocked_health_query_wakes_on_a_catalog_registration() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let p = pod("mesh-0", 3);
    put(&consul, "catalog/register", None, p.registration(false)).await;
    let a = get(&consul, "health/service/mesh?passing", None).await;
    assert_eq!(a.json(), json!([]));
    let idx = consul.with_catalog(|c| c.service_index("mesh"));
    let blocked = {
        let url = format!(
            "{}/v1/health/service/mesh?passing&index={idx}&wait=30s",
            consul.url(0)
        );
        tokio::spawn(async move {
            let r = mesh_testkit::http().get(url).send().await.expect("answer");
            r.text().await.expect("body")
        })
    };
    put(&consul, "catalog/register", None, p.registration(true)).await;
    let body = mesh_testkit::within(std::time::Duration::from_secs(10), blocked)
        .await
        .expect("task");
    assert!(body.contains("mesh-0-mesh"), "{body}");
}

fn acl_with(tokens: &[(&str, &[&str])]) -> Acl {
    Acl {
        tokens: tokens
            .iter()
            .map(|(secret, write)| {
                (
                    (*secret).to_owned(),
                    Token {
                        accessor: format!("acc-{secret}"),
                        write: write.iter().map(|w| (*w).to_owned()).collect(),
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
    }
}

#[tokio::test]
async fn catalog_writes_need_service_write_and_node_write_unless_skip_node_update() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    consul.set_acl(Some(acl_with(&[
        ("controller", &["*"]),
        ("mesh-only", &["mesh"]),
    ])));
    let p = pod("mesh-0", 3);
    let a = put(&consul, "catalog/register", None, p.registration(true)).await;
    assert_eq!(a.status, 403, "{}", a.body);
    // The node does not exist yet: node:write is needed.
    let a = put(
        &consul,
        "catalog/register",
        Some("mesh-only"),
        p.registration(true),
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("'node:write'"), "{}", a.body);
    let a = put(
        &consul,
        "catalog/register",
        Some("controller"),
        p.registration(true),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // It does now: with SkipNodeUpdate, service:write suffices.
    let a = put(
        &consul,
        "catalog/register",
        Some("mesh-only"),
        p.registration(false),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut other = pod("web-0", 4);
    other.service = "web".into();
    let a = put(
        &consul,
        "catalog/register",
        Some("mesh-only"),
        other.registration(true),
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("'service:write' on \"web\""), "{}", a.body);
    // Deregister: service:write on the service will do.
    let a = put(
        &consul,
        "catalog/deregister",
        Some("mesh-only"),
        p.deregistration(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn acl_login_and_logout_follow_the_reference() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let post = |path: &'static str, token: Option<&'static str>, body: Option<Value>| {
        send(&consul, reqwest::Method::POST, path, token, body)
    };
    let login =
        json!({"AuthMethod": "k8s", "BearerToken": "jwt-mesh", "Meta": {"pod": "apps/mesh-0"}});
    // ACLs off: the endpoint says so.
    let a = post("acl/login", None, Some(login.clone())).await;
    assert_eq!((a.status, a.body.as_str()), (401, "ACL support disabled"));

    consul.set_acl(Some(acl_with(&[("operator", &["*"])])));
    consul.set_auth_method("k8s", &[("jwt-mesh", "mesh")]);
    let a = post(
        "acl/login",
        None,
        Some(json!({"AuthMethod": "nope", "BearerToken": "jwt-mesh"})),
    )
    .await;
    assert_eq!((a.status, a.body.as_str()), (403, "ACL not found"));
    let a = post(
        "acl/login",
        None,
        Some(json!({"AuthMethod": "k8s", "BearerToken": "forged"})),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = post("acl/login", None, Some(json!({"BearerToken": "jwt-mesh"}))).await;
    assert_eq!(a.status, 400);

    // Login needs no token and mints one with the service identity.
    let a = post("acl/login", None, Some(login.clone())).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.json();
    assert_eq!(token["ServiceIdentities"], json!([{"ServiceName": "mesh"}]));
    assert_eq!(token["AuthMethod"], "k8s");
    let secret = token["SecretID"].as_str().expect("SecretID").to_owned();
    assert_eq!(consul.logins().len(), 1);
    assert_eq!(consul.logins()[0].1.meta["pod"], "apps/mesh-0");

    // builtin/service: reads, and writes its own service, not others.
    let a = get(&consul, "health/service/mesh", Some(&secret)).await;
    assert_eq!(a.status, 200);
    let a = put(
        &consul,
        "agent/service/register",
        Some(&secret),
        json!({"Name": "mesh", "Port": 7000}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = put(
        &consul,
        "agent/service/register",
        Some(&secret),
        json!({"Name": "web", "Port": 80}),
    )
    .await;
    assert_eq!(a.status, 403);

    // Logout: 401 without a token, 403 for a token no login minted.
    let a = post("acl/logout", None, None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (401, "Supplied token does not exist")
    );
    let a = post("acl/logout", Some("operator"), None).await;
    assert_eq!((a.status, a.body.as_str()), (403, "Permission denied"));
    let a = send(
        &consul,
        reqwest::Method::POST,
        "acl/logout",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!((a.status, a.json()), (200, json!(true)));
    assert!(consul.logins().is_empty());
    let a = get(&consul, "health/service/mesh", Some(&secret)).await;
    assert_eq!((a.status, a.body.as_str()), (403, "ACL not found"));

    // The controller's clean-up destroys a pod's login tokens.
    let a = post("acl/login", None, Some(login)).await;
    let secret = a.json()["SecretID"].as_str().expect("SecretID").to_owned();
    assert_eq!(consul.revoke_logins("pod", "apps/mesh-0"), 1);
    let a = get(&consul, "health/service/mesh", Some(&secret)).await;
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn config_entries_follow_the_reference() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let defaults = json!({"Kind": "service-defaults", "Name": "mesh", "Protocol": "tcp",
        "TransparentProxy": {"OutboundListenerPort": 15001, "DialedDirectly": true}});
    let a = put(&consul, "config", None, defaults.clone()).await;
    assert_eq!((a.status, a.json()), (200, json!(true)));
    let a = get(&consul, "config/service-defaults/mesh", None).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["TransparentProxy"]["DialedDirectly"], true);
    let modify = v["ModifyIndex"].as_u64().expect("ModifyIndex");
    assert_eq!(v["CreateIndex"].as_u64(), Some(modify));
    // cas: 0 creates only; a stale index is refused with false.
    let a = put(&consul, "config?cas=0", None, defaults.clone()).await;
    assert_eq!(a.json(), json!(false));
    let a = put(
        &consul,
        &format!("config?cas={}", modify + 100),
        None,
        defaults.clone(),
    )
    .await;
    assert_eq!(a.json(), json!(false));
    let a = put(
        &consul,
        &format!("config?cas={modify}"),
        None,
        defaults.clone(),
    )
    .await;
    assert_eq!(a.json(), json!(true));
    let a = put(&consul, "config", None, json!({"Name": "mesh"})).await;
    assert_eq!(a.status, 400);
    assert!(a.body.starts_with("Request decoding failed"), "{}", a.body);
    let a = get(&consul, "config/service-defaults/web", None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            404,
            "Config entry not found for \"service-defaults\" / \"web\""
        )
    );
    let a = send(
        &consul,
        reqwest::Method::DELETE,
        "config/service-defaults/mesh",
        None,
        None,
    )
    .await;
    assert_eq!((a.status, a.json()), (200, json!({})));
    let a = get(&consul, "config/service-defaults/mesh", None).await;
    assert_eq!(a.status, 404);

    // ACL: service:write on the name for service-level kinds,
    // operator:write for the rest.
    consul.set_acl(Some(acl_with(&[("mesh-only", &["mesh"])])));
    let a = put(&consul, "config", Some("mesh-only"), defaults).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = put(
        &consul,
        "config",
        Some("mesh-only"),
        json!({"Kind": "proxy-defaults", "Name": "global"}),
    )
    .await;
    assert_eq!(a.status, 403);
    let a = put(
        &consul,
        "config",
        Some("mesh-only"),
        json!({"Kind": "service-intentions", "Name": "mesh",
               "Sources": [{"Name": "mesh", "Action": "allow"}]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}
