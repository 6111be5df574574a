//! The Consul test agent's catalog, pinned to `shared/reference/consul-api.md`:
//! every behaviour the adapter will rely on is checked here against the
//! documented rule, so the agent cannot drift into a convenient quirk.

use std::time::Duration;

use mesh_testkit::consul_agent;
use mesh_testkit::consul_catalog::{parse_go_duration, ApiError, Catalog, Status, TimeScale};
use serde_json::json;
use tokio::time::Instant;

fn catalog() -> Catalog {
    let mut c = Catalog::new(TimeScale::default());
    c.add_node("host-a", "10.0.0.5");
    c.add_node("host-b", "10.0.0.6");
    c
}

fn statuses(c: &Catalog, node: &str) -> Vec<(String, Status, String)> {
    c.nodes[node]
        .checks
        .values()
        .map(|k| (k.id.clone(), k.status, k.output.clone()))
        .collect()
}

#[test]
fn register_rules_follow_the_reference() {
    let now = Instant::now();
    let mut c = catalog();
    assert_eq!(
        c.register("host-a", &json!({"ID": "x"}), false, now),
        Err(ApiError(400, "Missing service name".into()))
    );
    assert_eq!(
        c.register(
            "host-a",
            &json!({"Name": "web", "Address": "0.0.0.0"}),
            false,
            now
        ),
        Err(ApiError(400, "Invalid service address".into()))
    );
    assert_eq!(
        c.register(
            "host-a",
            &json!({"Name": "web", "Check": {"TTL": "10s", "Status": "fine"}}),
            false,
            now
        ),
        Err(ApiError(
            400,
            "Status for checks must 'passing', 'warning', 'critical'".into()
        ))
    );
    // ID defaults to Name; one check is service:<id>, critical until told.
    c.register(
        "host-a",
        &json!({"Name": "web", "Check": {"TTL": "10s"}, "Checks": null}),
        false,
        now,
    )
    .unwrap();
    assert_eq!(
        statuses(&c, "host-a"),
        [("service:web".into(), Status::Critical, String::new())]
    );
    assert_eq!(
        c.nodes["host-a"].checks["service:web"].name,
        "Service 'web' check"
    );
    // Several checks are numbered from 1; snake_case keys work; Status is honoured.
    c.register(
        "host-b",
        &json!({"name": "cluster", "id": "node-b", "check": {}, "checks": [
            {"ttl": "10s", "status": "passing"}, {"TTL": "20s"}
        ]}),
        false,
        now,
    )
    .unwrap();
    assert_eq!(
        statuses(&c, "host-b"),
        [
            ("service:node-b:1".into(), Status::Passing, String::new()),
            ("service:node-b:2".into(), Status::Critical, String::new())
        ]
    );
    // Tags and Meta are [] and {} when absent; TaggedAddresses from an IP.
    c.register(
        "host-a",
        &json!({"Name": "db", "Address": "10.0.0.5", "Port": 7000}),
        false,
        now,
    )
    .unwrap();
    let services = c.agent_services("host-a");
    assert_eq!(services["db"]["Tags"], json!([]));
    assert_eq!(services["db"]["Meta"], json!({}));
    assert_eq!(
        services["db"]["TaggedAddresses"]["lan_ipv4"],
        json!({"Address": "10.0.0.5", "Port": 7000})
    );
    assert_eq!(
        services["db"]["Weights"],
        json!({"Passing": 1, "Warning": 1})
    );
}

#[test]
fn re_registering_keeps_check_state_and_replace_drops_missing_checks() {
    let now = Instant::now();
    let mut c = catalog();
    let two = json!({"Name": "svc", "Checks": [{"CheckID": "a", "TTL": "10s"}, {"CheckID": "b", "TTL": "10s"}]});
    c.register("host-a", &two, false, now).unwrap();
    c.update_check("host-a", "a", Status::Passing, "ok", now)
        .unwrap();
    // Status in a re-register is ignored for an existing check.
    let one =
        json!({"Name": "svc", "Checks": [{"CheckID": "a", "TTL": "10s", "Status": "critical"}]});
    c.register("host-a", &one, false, now).unwrap();
    assert_eq!(c.nodes["host-a"].checks["a"].status, Status::Passing);
    assert!(
        c.nodes["host-a"].checks.contains_key("b"),
        "kept without replace-existing-checks"
    );
    c.register("host-a", &one, true, now).unwrap();
    assert!(
        !c.nodes["host-a"].checks.contains_key("b"),
        "dropped with replace-existing-checks"
    );
}

#[test]
fn the_index_moves_only_on_real_changes_and_is_never_zero() {
    let now = Instant::now();
    let mut c = catalog();
    let body = json!({"Name": "cluster", "ID": "n1", "Check": {"CheckID": "ttl:n1", "TTL": "10s", "Status": "passing"}});
    let i0 = c.service_index("cluster");
    assert!(i0 >= 1);
    c.register("host-a", &body, false, now).unwrap();
    let i1 = c.service_index("cluster");
    assert!(i1 > i0);
    c.register("host-a", &body, false, now).unwrap();
    assert_eq!(c.service_index("cluster"), i1, "identical re-register");
    c.update_check("host-a", "ttl:n1", Status::Passing, "", now)
        .unwrap();
    assert_eq!(c.service_index("cluster"), i1, "no-op TTL pass");
    c.update_check("host-a", "ttl:n1", Status::Warning, "", now)
        .unwrap();
    assert!(c.service_index("cluster") > i1, "status change");
    // Another service's change moves the global index, not this one's.
    let i2 = c.service_index("cluster");
    c.register("host-b", &json!({"Name": "other"}), false, now)
        .unwrap();
    assert_eq!(c.service_index("cluster"), i2);
    assert!(c.index() > i2);
    // The index-reset hook, and never 0.
    c.reset_index(0);
    assert_eq!(c.service_index("cluster"), 1);
}

#[test]
fn ttl_expiry_goes_critical_and_deregister_critical_after_reaps_with_a_floor() {
    let t0 = Instant::now();
    let mut c = catalog();
    c.register(
        "host-a",
        &json!({"Name": "cluster", "ID": "n1", "Check": {"CheckID": "ttl:n1", "TTL": "15s",
            "Status": "passing", "DeregisterCriticalServiceAfter": "10s"}}),
        false,
        t0,
    )
    .unwrap();
    c.update_check(
        "host-a",
        "ttl:n1",
        Status::Passing,
        "beat 1",
        t0 + Duration::from_secs(10),
    )
    .unwrap();
    // The pass restarted the timer: not expired at 20 s.
    assert!(!c.tick(t0 + Duration::from_secs(20)));
    assert!(c.tick(t0 + Duration::from_secs(25)));
    let check = &c.nodes["host-a"].checks["ttl:n1"];
    assert_eq!(check.status, Status::Critical);
    assert_eq!(
        check.output,
        "TTL expired (last output before timeout follows): beat 1"
    );
    // 10s is clamped to 1 minute: still there 59 s into critical.
    assert!(!c.tick(t0 + Duration::from_secs(25 + 59)));
    assert!(
        c.nodes["host-a"].services.contains_key("n1"),
        "expiry does not remove the service"
    );
    assert!(c.tick(t0 + Duration::from_secs(25 + 60)));
    assert!(!c.nodes["host-a"].services.contains_key("n1"));
    assert!(c.nodes["host-a"].checks.is_empty());
}

#[test]
fn scaled_time_keeps_the_rules() {
    let t0 = Instant::now();
    let mut c = Catalog::new(TimeScale {
        ttl: 0.01,
        deregister: 0.01,
    });
    c.add_node("h", "127.0.0.1");
    c.register(
        "h",
        &json!({"Name": "s", "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "1s"}}),
        false,
        t0,
    )
    .unwrap();
    assert!(
        c.tick(t0 + Duration::from_millis(100)),
        "10 s TTL scaled to 100 ms"
    );
    assert_eq!(c.nodes["h"].checks["service:s"].output, "TTL expired");
    assert!(
        c.tick(t0 + Duration::from_millis(100 + 600)),
        "1 min floor scaled to 600 ms"
    );
    assert!(c.nodes["h"].services.is_empty());
}

#[test]
fn errors_carry_the_documented_status_and_text() {
    let now = Instant::now();
    let mut c = catalog();
    assert_eq!(
        c.deregister("host-a", "nope"),
        Err(ApiError(
            404,
            "Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.".into()
        ))
    );
    assert_eq!(
        c.update_check("host-a", "service:x", Status::Passing, "", now),
        Err(ApiError(
            404,
            "Unknown check ID \"service:x\". Ensure that the check ID is passed, not the check name.".into()
        ))
    );
}

#[test]
fn health_reads_include_serf_health_and_filter_passing_and_tags() {
    let now = Instant::now();
    let mut c = catalog();
    for (node, id, status) in [("host-a", "a", "passing"), ("host-b", "b", "critical")] {
        c.register(
            node,
            &json!({"Name": "cluster", "ID": id, "Tags": ["cap.Game"],
                "Check": {"CheckID": format!("ttl:{id}"), "TTL": "10s", "Status": status}}),
            false,
            now,
        )
        .unwrap();
    }
    let (all, index) = c.health_service("cluster", false, &[]);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(all[0]["Checks"][0]["Status"], "passing");
    let (passing, same_index) = c.health_service("cluster", true, &[]);
    assert_eq!(
        same_index, index,
        "the index is taken before ?passing filters"
    );
    assert_eq!(passing.len(), 1);
    assert_eq!(passing[0]["Service"]["ID"], "a");
    // A warning is not passing either.
    c.update_check("host-a", "ttl:a", Status::Warning, "", now)
        .unwrap();
    assert!(c.health_service("cluster", true, &[]).0.is_empty());
    // Tags: AND, case-insensitive.
    assert_eq!(
        c.health_service("cluster", false, &["CAP.game".into()])
            .0
            .len(),
        2
    );
    assert!(c
        .health_service("cluster", false, &["cap.game".into(), "x".into()])
        .0
        .is_empty());
    // An unknown service: [] and the services-table index.
    let (none, idx) = c.health_service("nothing", false, &[]);
    assert!(none.is_empty());
    assert!(idx >= 1);
}

#[test]
fn an_agent_restart_forgets_its_registrations() {
    let now = Instant::now();
    let mut c = catalog();
    c.register(
        "host-a",
        &json!({"Name": "cluster", "ID": "n1", "Check": {"CheckID": "ttl:n1", "TTL": "10s"}}),
        false,
        now,
    )
    .unwrap();
    c.register(
        "host-b",
        &json!({"Name": "cluster", "ID": "n2", "Check": {"CheckID": "ttl:n2", "TTL": "10s"}}),
        false,
        now,
    )
    .unwrap();
    let before = c.service_index("cluster");
    c.restart_agent("host-a");
    assert!(c.service_index("cluster") > before);
    assert_eq!(
        c.update_check("host-a", "ttl:n1", Status::Passing, "", now)
            .unwrap_err()
            .0,
        404,
        "heartbeats now fail, so the service must re-register"
    );
    assert!(
        c.nodes["host-b"].services.contains_key("n2"),
        "other agents keep theirs"
    );
}

#[test]
fn go_durations_parse() {
    assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_go_duration("ten"), None);
    assert_eq!(parse_go_duration(""), None);
}

// ---- The HTTP server around the catalog -------------------------------

use mesh_testkit::consul_agent::{Acl, TestConsul, Token};

struct Http {
    client: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn index(&self) -> u64 {
        self.header("X-Consul-Index").parse().expect("an index")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

impl Http {
    fn new(base: String) -> Http {
        Http {
            client: mesh_testkit::http(),
            base,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("the agent answers");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("body"),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}/v1/{path}", self.base)))
            .await
    }

    async fn put(&self, path: &str, body: Option<serde_json::Value>) -> Answer {
        let mut req = self.client.put(format!("{}/v1/{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }
}

fn ttl_service(name: &str, id: &str) -> serde_json::Value {
    json!({"ID": id, "Name": name, "Tags": ["cap"], "Address": "127.0.0.1", "Port": 7000,
           "Check": {"TTL": "30s", "Status": "passing"}})
}

#[tokio::test]
async fn http_status_codes_and_text_bodies_follow_the_reference() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let a = http
        .put("agent/service/register", Some(json!({"ID": "x"})))
        .await;
    assert_eq!((a.status, a.body.as_str()), (400, "Missing service name"));
    assert!(a.header("Content-Type").starts_with("text/plain"));
    assert_eq!(a.header("X-Consul-Default-ACL-Policy"), "allow");
    let a = http.put("agent/service/register", None).await;
    assert_eq!(a.status, 400);
    assert!(a.body.starts_with("Request decode failed"), "{}", a.body);
    let a = http.put("agent/service/deregister/nope", None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, "Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name.")
    );
    let a = http.put("agent/check/pass/service:nope", None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, "Unknown check ID \"service:nope\". Ensure that the check ID is passed, not the check name.")
    );
    // A check that is not a TTL check: 500, as the agent code says.
    let a = http
        .put(
            "agent/service/register",
            Some(
                json!({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "10s"}}),
            ),
        )
        .await;
    assert_eq!(a.status, 200);
    let a = http.put("agent/check/pass/service:web", None).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (500, "CheckID \"service:web\" does not have associated TTL")
    );
    let a = http
        .put(
            "agent/check/update/service:web",
            Some(json!({"Status": "fine"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (400, "Invalid check status: 'fine'")
    );
    let a = http.get("agent/service/register").await;
    assert_eq!((a.status, a.body.as_str()), (405, "method GET not allowed"));
    assert_eq!(a.header("Allow"), "PUT");
    let a = http.get("health/service/web?passing=maybe").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (400, "Invalid value for ?passing")
    );
    let a = http.get("health/service/web?stale&consistent").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics."
        )
    );
    let a = http.get("agent/service/nope").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, "unknown service ID: nope")
    );
    // A write answers 200 with an empty body; unknown names give [] and an index.
    let a = http
        .put("agent/service/register", Some(ttl_service("db", "db-1")))
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    let a = http.get("health/service/nothing").await;
    assert_eq!((a.status, a.body.as_str()), (200, "[]"));
    assert!(a.index() >= 1);
    assert_eq!(a.header("X-Consul-KnownLeader"), "true");
    assert_eq!(a.header("X-Consul-Effective-Consistency"), "leader");
    assert!(a.header("Content-Type").starts_with("application/json"));
}

#[tokio::test]
async fn http_health_reads_filter_on_every_check() {
    let consul = TestConsul::start(2, TimeScale::default()).await;
    let (a, b) = (Http::new(consul.url(0)), Http::new(consul.url(1)));
    a.put("agent/service/register", Some(ttl_service("db", "db-1")))
        .await;
    b.put(
        "agent/service/register",
        Some(json!({"ID": "db-2", "Name": "db", "Tags": ["CAP", "x"],
        "Check": {"TTL": "30s"}})),
    )
    .await;
    let all = b.get("health/service/db").await.json();
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(2),
        "one catalog, both agents"
    );
    let entry = &all[0];
    assert_eq!(entry["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(entry["Checks"][1]["CheckID"], "service:db-1");
    // db-2's check starts critical: ?passing (bare, or as a bool) drops it.
    for q in ["passing", "passing=1", "passing=true"] {
        let ok = a.get(&format!("health/service/db?{q}")).await.json();
        assert_eq!(ok.as_array().map(Vec::len), Some(1), "{q}");
        assert_eq!(ok[0]["Service"]["ID"], "db-1");
    }
    let tagged = a.get("health/service/db?tag=cap&tag=X").await.json();
    assert_eq!(tagged.as_array().map(Vec::len), Some(1));
    assert_eq!(tagged[0]["Service"]["ID"], "db-2");
    let services = a.get("agent/services").await.json();
    assert_eq!(
        consul_agent::ids(&services),
        ["db-1"],
        "an agent lists its own"
    );
}

#[tokio::test]
async fn http_blocking_queries_follow_the_index() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    http.put("agent/service/register", Some(ttl_service("db", "db-1")))
        .await;
    let first = http.get("health/service/db").await;
    let index = first.index();
    // A pass that changes nothing writes nothing: the index stays.
    assert_eq!(
        http.put("agent/check/pass/service:db-1", None).await.status,
        200
    );
    assert_eq!(http.get("health/service/db").await.index(), index);
    // No change: the call returns after the wait, with the same index.
    let t0 = Instant::now();
    let same = http
        .get(&format!("health/service/db?index={index}&wait=200ms"))
        .await;
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(same.index(), index);
    // A change wakes a blocked call long before its wait.
    let blocked = tokio::spawn({
        let url = format!(
            "{}/v1/health/service/db?index={index}&wait=5m",
            consul.url(0)
        );
        async move {
            let resp = mesh_testkit::http().get(url).send().await.expect("answer");
            let index: u64 = resp.headers()["X-Consul-Index"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("number");
            (index, resp.text().await.expect("body"))
        }
    });
    http.put("agent/check/fail/service:db-1?note=down", None)
        .await;
    let (woke, body) = tokio::time::timeout(Duration::from_secs(30), blocked)
        .await
        .expect("woken well before the 5 minute wait")
        .expect("task");
    assert!(woke > index);
    assert!(body.contains("\"critical\""), "{body}");
    // The index-reset hook: the next answer carries a lower index.
    consul.reset_index(1);
    assert_eq!(http.get("health/service/db").await.index(), 1);
}

#[tokio::test]
async fn http_hash_blocking_on_an_agent_service() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    http.put("agent/service/register", Some(ttl_service("db", "db-1")))
        .await;
    let a = http.get("agent/service/db-1").await;
    let hash = a.json()["ContentHash"].as_str().expect("hash").to_owned();
    assert_eq!(a.header("X-Consul-ContentHash"), hash);
    let t0 = Instant::now();
    let same = http
        .get(&format!("agent/service/db-1?hash={hash}&wait=150ms"))
        .await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(same.json()["ContentHash"], hash.as_str());
    let waiting = tokio::spawn({
        let url = format!(
            "{}/v1/agent/service/db-1?hash={hash}&wait=5m",
            consul.url(0)
        );
        async move {
            mesh_testkit::http()
                .get(url)
                .send()
                .await
                .expect("answer")
                .text()
                .await
                .expect("body")
        }
    });
    let mut changed = ttl_service("db", "db-1");
    changed["Tags"] = json!(["cap", "new"]);
    http.put("agent/service/register", Some(changed)).await;
    let body = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("woken by the change")
        .expect("task");
    assert!(body.contains("\"new\""), "{body}");
}

#[tokio::test]
async fn http_acl_mode_reads_tokens_from_all_three_places() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let mut acl = Acl::default();
    acl.tokens.insert(
        "s3cret".into(),
        Token {
            accessor: "acc-1".into(),
            write: vec!["db".into()],
        },
    );
    consul.set_acl(Some(acl));
    let client = mesh_testkit::http();
    let url = format!("{}/v1/agent/service/register", consul.url(0));
    let body = ttl_service("db", "db-1");
    let send = |req: reqwest::RequestBuilder| async move {
        let resp = req.send().await.expect("answer");
        let policy = resp.headers()["X-Consul-Default-ACL-Policy"]
            .to_str()
            .expect("ascii")
            .to_owned();
        (
            resp.status().as_u16(),
            resp.text().await.expect("body"),
            policy,
        )
    };
    let (code, text, policy) = send(client.put(&url).json(&body)).await;
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "Permission denied: anonymous token lacks permission 'service:write' on \"db\""
    );
    assert_eq!(policy, "deny");
    let (code, text, _) = send(
        client
            .put(&url)
            .header("X-Consul-Token", "wrong")
            .json(&body),
    )
    .await;
    assert_eq!((code, text.as_str()), (403, "ACL not found"));
    let (code, text, _) = send(
        client
            .put(&url)
            .header("X-Consul-Token", "s3cret")
            .json(&ttl_service("web", "web-1")),
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (403, "Permission denied: token with AccessorID 'acc-1' lacks permission 'service:write' on \"web\"")
    );
    for req in [
        client.put(&url).header("X-Consul-Token", "s3cret"),
        client.put(&url).header("Authorization", "Bearer s3cret"),
        client.put(format!("{url}?token=s3cret")),
    ] {
        let (code, text, _) = send(req.json(&body)).await;
        assert_eq!((code, text.as_str()), (200, ""));
    }
}

#[tokio::test]
async fn http_hooks_restart_and_down() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    http.put("agent/service/register", Some(ttl_service("db", "db-1")))
        .await;
    consul.restart_agent(0);
    let a = http.put("agent/check/pass/service:db-1", None).await;
    assert_eq!(a.status, 404, "a restarted -dev agent forgot the check");
    consul.stop_agent(0);
    let down = mesh_testkit::http()
        .get(format!("{}/v1/agent/services", consul.url(0)))
        .send()
        .await;
    assert!(down.is_err(), "a stopped agent refuses connections");
    consul.start_agent(0).await;
    assert_eq!(http.get("agent/services").await.status, 200);
    consul.fail_with(Some((500, "rpc error making call: No cluster leader")));
    let a = http.get("agent/services").await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (500, "rpc error making call: No cluster leader")
    );
}

// ---- Connect ----------------------------------------------------------
//
// Each rule below is reference section 6 ("Sidecar defaults for
// Connect.SidecarService", "GET /health/connect") and section 10 items 2, 8
// and 11, quoting Consul's docs (connect/proxies/deploy-sidecar-services,
// api-docs/health, connect/intentions "Precedence and match order",
// api-docs/connect/intentions).

use mesh_testkit::consul_catalog::{CheckKind, SIDECAR_PORTS};

fn parent(id: &str, port: u64, upstream: &str) -> serde_json::Value {
    json!({"ID": id, "Name": "cluster", "Tags": ["cap.a"], "Address": "10.0.0.5",
           "Port": port, "Meta": {"node_id": id},
           "Check": {"TTL": "10s", "Status": "passing"},
           "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
               {"DestinationName": upstream, "LocalBindAddress": "127.0.0.1",
                "LocalBindPort": 9191}]}}}})
}

#[test]
fn sidecar_expansion_follows_the_reference() {
    let now = Instant::now();
    let mut c = catalog();
    c.register("host-a", &parent("node-a", 7000, "cluster-b"), false, now)
        .unwrap();
    let all = c.agent_services("host-a");
    assert_eq!(consul_agent::ids(&all), ["node-a", "node-a-sidecar-proxy"]);
    // "ID is <parent-id>-sidecar-proxy ... Name is <parent-name>-sidecar-proxy,
    // Kind is connect-proxy; Tags and Meta are copied from the parent;
    // Address is inherited; Proxy.DestinationServiceName/ID come from the
    // parent, LocalServiceAddress is 127.0.0.1 and LocalServicePort is the
    // parent's Port; Port is the lowest free port in [21000, 21255]."
    let sc = &all["node-a-sidecar-proxy"];
    assert_eq!(sc["Kind"], "connect-proxy");
    assert_eq!(sc["Service"], "cluster-sidecar-proxy");
    assert_eq!(sc["Tags"], json!(["cap.a"]));
    assert_eq!(sc["Meta"], json!({"node_id": "node-a"}));
    assert_eq!(sc["Address"], "10.0.0.5");
    assert_eq!(sc["Port"], 21000);
    assert_eq!(
        sc["Proxy"],
        json!({"DestinationServiceName": "cluster", "DestinationServiceID": "node-a",
               "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 7000,
               "MeshGateway": {}, "Expose": {},
               "Upstreams": [{"DestinationType": "service", "DestinationName": "cluster-b",
                   "LocalBindAddress": "127.0.0.1", "LocalBindPort": 9191, "MeshGateway": {}}]})
    );
    assert!(
        all["node-a"].get("Kind").is_none(),
        "Kind omitted when empty"
    );
    // "Default checks: service:<id>-sidecar-proxy:1 (TCP, 10s) and :2 (alias)."
    let checks = &c.nodes["host-a"].checks;
    let tcp = &checks["service:node-a-sidecar-proxy:1"];
    assert_eq!(tcp.name, "Connect Sidecar Listening");
    assert_eq!(
        tcp.kind,
        CheckKind::Tcp {
            target: "10.0.0.5:21000".into(),
            interval: Duration::from_secs(10)
        }
    );
    let alias = &checks["service:node-a-sidecar-proxy:2"];
    assert_eq!(alias.name, "Connect Sidecar Aliasing node-a");
    assert_eq!(alias.kind, CheckKind::Alias("node-a".into()));
    assert_eq!(alias.status, Status::Passing, "mirrors the passing parent");
    // The next sidecar takes the next free port; snake_case keys work; a
    // sidecar's own Tags and Name win over the defaults.
    c.register(
        "host-a",
        &json!({"id": "node-b", "name": "cluster", "port": 7001, "tags": ["p"],
                "connect": {"sidecar_service": {"name": "custom", "tags": ["own"]}}}),
        false,
        now,
    )
    .unwrap();
    let all = c.agent_services("host-a");
    let b = &all["node-b-sidecar-proxy"];
    assert_eq!(
        (b["Port"].as_u64(), b["Service"].as_str()),
        (Some(21001), Some("custom"))
    );
    assert_eq!(b["Tags"], json!(["own"]));
    assert_eq!(b["Proxy"]["LocalServicePort"], 7001);
    // "The port stays the same on re-register", even when a lower one is free.
    c.deregister("host-a", "node-a").unwrap();
    c.register(
        "host-a",
        &json!({"ID": "node-b", "Name": "cluster", "Port": 7001,
                "Connect": {"SidecarService": {}}}),
        false,
        now,
    )
    .unwrap();
    assert_eq!(
        c.agent_services("host-a")["node-b-sidecar-proxy"]["Port"],
        21001
    );
    // "Removal together with the parent": deregister takes the sidecar and
    // its checks.
    assert!(!c.nodes["host-a"]
        .checks
        .keys()
        .any(|k| k.contains("node-a")));
    // "Re-registering the parent without SidecarService removes the old sidecar."
    c.register(
        "host-a",
        &json!({"ID": "node-b", "Name": "cluster", "Port": 7001}),
        false,
        now,
    )
    .unwrap();
    assert_eq!(consul_agent::ids(&c.agent_services("host-a")), ["node-b"]);
    assert!(c.nodes["host-a"].checks.is_empty());
}

#[test]
fn a_full_sidecar_range_is_the_documented_400() {
    let now = Instant::now();
    let mut c = catalog();
    let size = SIDECAR_PORTS.1 - SIDECAR_PORTS.0 + 1;
    for i in 0..size {
        c.register(
            "host-a",
            &json!({"ID": format!("s{i}"), "Name": "s", "Port": 7000 + i,
                    "Connect": {"SidecarService": {}}}),
            false,
            now,
        )
        .unwrap();
    }
    let before = c.index();
    // "When the range is full: 400 no port provided for sidecar_service and
    // none left in the configured range [21000, 21255]" (as Invalid
    // SidecarService), and the parent is not registered either.
    assert_eq!(
        c.register(
            "host-a",
            &json!({"ID": "late", "Name": "s", "Port": 1, "Connect": {"SidecarService": {}}}),
            false,
            now
        ),
        Err(ApiError(
            400,
            "Invalid SidecarService: no port provided for sidecar_service and none left in the configured range [21000, 21255]".into()
        ))
    );
    assert!(!c.nodes["host-a"].services.contains_key("late"));
    assert_eq!(c.index(), before);
    // Another agent (host) has its own range.
    c.register("host-b", &parent("other", 7000, "x"), false, now)
        .unwrap();
    assert_eq!(
        c.agent_services("host-b")["other-sidecar-proxy"]["Port"],
        21000
    );
}

#[test]
fn health_connect_lists_sidecars_by_destination_with_the_alias_mirroring_the_parent() {
    let now = Instant::now();
    let mut c = catalog();
    c.register("host-a", &parent("node-a", 7000, "x"), false, now)
        .unwrap();
    c.register("host-b", &ttl_service("cluster", "plain"), false, now)
        .unwrap();
    // "It returns the proxies whose Proxy.DestinationServiceName == name":
    // only the sidecar, with its own checks (TCP, alias) and serfHealth.
    let (all, index) = c.health_connect("cluster", false);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["Service"]["ID"], "node-a-sidecar-proxy");
    assert_eq!(all[0]["Service"]["Port"], 21000);
    assert_eq!(
        all[0]["Service"]["Proxy"]["DestinationServiceName"],
        "cluster"
    );
    let kinds: Vec<&str> = all[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "serfHealth",
            "service:node-a-sidecar-proxy:1",
            "service:node-a-sidecar-proxy:2"
        ]
    );
    assert!(c.health_connect("nothing", false).0.is_empty());
    // Nothing listens yet: the TCP check is critical, `?passing` drops it.
    assert!(c.health_connect("cluster", true).0.is_empty());
    assert!(c.tcp_result("host-a", "service:node-a-sidecar-proxy:1", Ok(()), now));
    let (passing, moved) = c.health_connect("cluster", true);
    assert_eq!(passing.len(), 1);
    assert!(
        moved > index,
        "a sidecar's change moves its destination's index"
    );
    assert_eq!(
        c.nodes["host-a"].checks["service:node-a-sidecar-proxy:1"].output,
        "TCP connect 10.0.0.5:21000: Success"
    );
    // The parent fails: the alias follows, and the sidecar is not passing.
    c.update_check("host-a", "service:node-a", Status::Critical, "", now)
        .unwrap();
    assert_eq!(
        c.nodes["host-a"].checks["service:node-a-sidecar-proxy:2"].status,
        Status::Critical
    );
    assert!(c.health_connect("cluster", true).0.is_empty());
    c.update_check("host-a", "service:node-a", Status::Warning, "", now)
        .unwrap();
    assert_eq!(
        c.nodes["host-a"].checks["service:node-a-sidecar-proxy:2"].status,
        Status::Warning
    );
    // The sidecar goes with its parent, and the index moves again.
    let before = c.health_connect("cluster", false).1;
    c.deregister("host-a", "node-a").unwrap();
    let (gone, after) = c.health_connect("cluster", false);
    assert!(gone.is_empty());
    assert!(after > before);
    // `/v1/catalog/services`: names with the union of their tags.
    let (names, _) = c.catalog_services();
    assert_eq!(names, json!({"consul": [], "cluster": ["cap"]}));
}

#[tokio::test]
async fn http_health_connect_blocks_and_the_tcp_check_really_dials() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    consul.with_catalog(|c| c.scale_intervals(0.01)); // the 10 s check every 100 ms
    let http = Http::new(consul.url(0));
    // The sidecar's public port is a real listener here (port 0).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut body = ttl_service("db", "db-1");
    body["Connect"] = json!({"SidecarService": {"Port": port}});
    assert_eq!(
        http.put("agent/service/register", Some(body)).await.status,
        200
    );
    let first = http.get("health/connect/db?passing").await;
    assert_eq!(first.status, 200);
    let mut index = first.index();
    let mut entries = first.json();
    // Block until the TCP check has dialed the listener and passed.
    while entries.as_array().is_none_or(Vec::is_empty) {
        let a = mesh_testkit::soon(
            http.get(&format!("health/connect/db?passing&index={index}&wait=30s")),
        )
        .await;
        index = a.index();
        entries = a.json();
    }
    assert_eq!(entries[0]["Service"]["Port"], port);
    let (accepted, _) = mesh_testkit::soon(listener.accept()).await.unwrap();
    drop(accepted);
    // `/v1/agent/checks`: every check of the agent by ID, with its type.
    let checks = http.get("agent/checks").await.json();
    assert_eq!(
        consul_agent::ids(&checks),
        [
            "service:db-1",
            "service:db-1-sidecar-proxy:1",
            "service:db-1-sidecar-proxy:2"
        ]
    );
    assert_eq!(checks["service:db-1-sidecar-proxy:1"]["Type"], "tcp");
    assert_eq!(checks["service:db-1-sidecar-proxy:1"]["Status"], "passing");
    assert_eq!(
        checks["service:db-1-sidecar-proxy:2"]["ServiceName"],
        "db-sidecar-proxy"
    );
    // `/v1/catalog/services` blocks on the index and wakes on a new name.
    let names = http.get("catalog/services").await;
    assert_eq!(
        names.json(),
        json!({"consul": [], "db": ["cap"], "db-sidecar-proxy": ["cap"]})
    );
    let at = names.index();
    let blocked = tokio::spawn({
        let url = format!("{}/v1/catalog/services?index={at}&wait=5m", consul.url(0));
        async move {
            mesh_testkit::http()
                .get(url)
                .send()
                .await
                .expect("answer")
                .text()
                .await
                .expect("body")
        }
    });
    http.put("agent/service/register", Some(ttl_service("web", "web-1")))
        .await;
    let woke = mesh_testkit::soon(blocked).await.expect("task");
    assert!(woke.contains("\"web\""), "{woke}");
    // Closing the listener fails the check, and the sidecar leaves `?passing`.
    drop(listener);
    mesh_testkit::soon(consul.until(|c| c.health_connect("db", true).0.is_empty())).await;
    let check =
        consul.with_catalog(|c| c.nodes["agent-0"].checks["service:db-1-sidecar-proxy:1"].clone());
    assert!(
        check
            .output
            .starts_with(&format!("dial tcp 127.0.0.1:{port}: connect:")),
        "{}",
        check.output
    );
}

#[tokio::test]
async fn http_intentions_follow_the_documented_precedence_and_default() {
    let consul = TestConsul::start(1, TimeScale::default()).await;
    let http = Http::new(consul.url(0));
    let td = consul.trust_domain();
    let http = &http;
    let authorize = |source: &str, target: &str| {
        let body = json!({"Target": target,
            "ClientCertURI": format!("spiffe://{td}/ns/default/dc/dc1/svc/{source}"),
            "ClientCertSerial": "08"});
        let req = http
            .client
            .post(format!("{}/v1/agent/connect/authorize", http.base))
            .json(&body);
        async move {
            http.send(req).await.json()["Authorized"]
                .as_bool()
                .expect("a bool")
        }
    };
    let exact = |s: &str, d: &str| format!("connect/intentions/exact?source={s}&destination={d}");
    // ACLs off: the default policy allows.
    assert!(authorize("web", "db").await);
    // "PUT /connect/intentions/exact ... returns true".
    let a = http
        .put(&exact("*", "db"), Some(json!({"Action": "deny"})))
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, "true"));
    assert!(!authorize("web", "db").await);
    // Precedence 9 (exact => exact) beats 8 (* => exact).
    http.put(&exact("web", "db"), Some(json!({"Action": "allow"})))
        .await;
    assert!(authorize("web", "db").await);
    assert!(!authorize("api", "db").await);
    let read = http.get(&exact("web", "db")).await.json();
    assert_eq!(
        (read["Action"].as_str(), read["Precedence"].as_u64()),
        (Some("allow"), Some(9))
    );
    // 8 (* => db) beats 6 (api => *).
    http.put(&exact("api", "*"), Some(json!({"Action": "allow"})))
        .await;
    assert!(!authorize("api", "db").await);
    assert!(authorize("api", "cache").await);
    // DELETE answers true, and the next rule applies.
    let d = http
        .send(
            http.client
                .delete(format!("{}/v1/{}", http.base, exact("*", "db"))),
        )
        .await;
    assert_eq!((d.status, d.body.as_str()), (200, "true"));
    assert!(authorize("api", "db").await, "api => * now");
    assert_eq!(http.get(&exact("*", "db")).await.status, 404);
    // Only a whole name may be `*` (config entry validation; an RPC error: 500).
    let p = http
        .put(
            &exact("cluster-*", "cluster-a"),
            Some(json!({"Action": "allow"})),
        )
        .await;
    assert_eq!(
        (p.status, p.body.as_str()),
        (
            500,
            "Sources[0].Name: wildcard character '*' cannot be used with partial values"
        )
    );
    let p = http
        .put(&exact("web", "db"), Some(json!({"Action": "maybe"})))
        .await;
    assert_eq!(p.status, 500);
    let p = http
        .put(
            "connect/intentions/exact?source=web",
            Some(json!({"Action": "allow"})),
        )
        .await;
    assert_eq!(
        (p.status, p.body.as_str()),
        (500, "required query parameter 'destination' not set")
    );
    // "*" => "*" (5) is the last rule before the default.
    http.put(&exact("*", "*"), Some(json!({"Action": "deny"})))
        .await;
    assert!(!authorize("x", "y").await);
    // The default policy: deny by hook, and deny in ACL mode.
    http.send(
        http.client
            .delete(format!("{}/v1/{}", http.base, exact("*", "*"))),
    )
    .await;
    assert!(authorize("x", "y").await);
    consul.intention_default(Some(false));
    assert!(!authorize("x", "y").await);
    assert_eq!(
        consul.check_intention("x", "y"),
        (false, "Default behavior configured by ACLs".into())
    );
    consul.intention_default(None);
    consul.set_acl(Some(Acl::default()));
    assert!(!consul.check_intention("x", "y").0, "ACL default deny");
}
