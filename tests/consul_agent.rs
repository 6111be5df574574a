//! The Consul test agent's catalog, pinned to `shared/reference/consul-api.md`:
//! every behaviour the adapter will rely on is checked here against the
//! documented rule, so the agent cannot drift into a convenient quirk.

#[path = "support/consul_catalog.rs"]
mod consul_catalog;

use std::time::Duration;

use consul_catalog::{parse_go_duration, ApiError, Catalog, Status, TimeScale};
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
    let mut c = Catalog::new(TimeScale { scale: 0.01 });
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
