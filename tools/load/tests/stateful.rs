//! The `stateful` scenario (issue 22): one durable write per call to the
//! node's state store, on the embedded default (a redb file) and on a real
//! PostgreSQL (`--state postgres:...`; `mesh_testkit::pg` starts a
//! throwaway server; the test fails, never skips, without PostgreSQL).
//! After the run, the rows must hold every acknowledged write: the sum of
//! the actors' write counts is the run's ok count.

mod common;

use common::{json, mesh_load, text, Scratch};
use mesh::state::{envelope, PgStore, StateKey, StateStore};
use mesh_load::actors::Written;

#[test]
fn the_stateful_scenario_writes_once_per_call_on_the_embedded_store() {
    let dir = Scratch::new("stateful");
    let out = dir.join("out");
    let o = mesh_load(&[
        "run",
        "stateful",
        "--calls",
        "3000",
        "--concurrency",
        "32",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["summary"]["ok"], 3000, "{r}");
    let store = r["notes"]["state_store"].as_str().unwrap_or_default();
    assert!(
        store.starts_with("redb") && store.contains("temporary"),
        "{r}"
    );
    assert_eq!(r["config"]["scenario"]["kind"], "stateful");
    assert_eq!(r["config"]["scenario"]["payload"], 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateful_scenario_on_postgres_stores_every_acknowledged_write() {
    let server = mesh_testkit::pg::Server::start();
    let dir = Scratch::new("stateful-pg");
    let out = dir.join("out");
    let spec = format!("postgres:{}", server.config());
    let args = [
        "run",
        "stateful",
        "--state",
        &spec,
        "--actors",
        "40",
        "--calls",
        "2000",
        "--concurrency",
        "32",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || mesh_load(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&out.join("result.json"));
    assert_eq!(r["summary"]["ok"], 2000, "{r}");
    assert!(
        r["notes"]["state_store"]
            .as_str()
            .is_some_and(|s| s.starts_with("postgres")),
        "{r}"
    );
    let store = PgStore::new(&server.config()).expect("a store");
    let mut total = 0;
    for i in 0..40 {
        let key = StateKey::new("bench/StatefulBench", format!("s-{i}"));
        let row = store.load(&key, None).await.expect("a row");
        if let Some(bytes) = row.bytes {
            let (schema, payload) = envelope::open(&bytes).expect("an envelope");
            assert_eq!(schema, 1);
            let w: Written = envelope::decode(payload).expect("decodes");
            assert_eq!(w.n, row.version, "one write per acknowledged call");
            assert_eq!(w.data.len(), 64);
            total += w.n;
        }
    }
    assert_eq!(total, 2000, "the rows hold every acknowledged write");
}
