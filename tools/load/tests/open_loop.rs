//! The open loop against a stall, on a paused tokio clock: one actor that
//! every call goes to holds its turn for 100 ms once, during a fixed-rate
//! run of 1000 calls/s.
//!
//! With one connection (wrk2's `-c1`), the calls intended during the stall
//! wait at the client: their latency, counted from the intended start,
//! carries the stall (p99 near 80-100 ms, as wrk2 reports it) while their
//! service time, counted from the send, does not (only the stalled call
//! itself took 100 ms). Without a connection limit the calls wait in the
//! actor's mailbox instead, so service time shows the stall too.
//! A closed loop over the same stall hides it from p99 (coordinated
//! omission) and is labelled closed-loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh::prelude::*;
use mesh_load::model::{self, CallFn, CallFuture, CallResult, ClosedLoop, OpenLoop, Pacing, Stop};
use mesh_load::record::{Path, Recorder, Recording};
use mesh_load::report::{self, Inputs, ModelCfg, RunConfig};
use mesh_load::scenario::{ScenarioCfg, ScenarioKind};
use tokio::time::Instant;

/// Stalls for 100 ms on the call numbered `STALL_AT`, once per actor value.
#[derive(Actor, Default)]
#[actor(capability = "stall-test")]
struct Staller;

#[derive(Message, Serialize, Deserialize)]
#[message(reply = ())]
struct Work {
    k: u64,
    stall: bool,
}

const STALL_AT: u64 = 500;

#[mesh::handlers]
impl Staller {
    async fn work(&mut self, Work { k, stall }: Work) {
        if stall && k == STALL_AT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn node() -> Node {
    Node::builder()
        .capabilities(["stall-test"])
        .actor::<Staller>()
        .default_node(false)
        .start()
        .await
        .expect("node starts")
}

fn calls(node: &Node) -> CallFn {
    let node = node.clone();
    // The stall happens once: the first time call STALL_AT is made.
    let armed = Arc::new(AtomicBool::new(true));
    Arc::new(move |k| -> CallFuture {
        let node = node.clone();
        let stall = k == STALL_AT && armed.swap(false, Ordering::Relaxed);
        Box::pin(async move {
            let r = node
                .call::<Staller, Work>("hot", Work { k, stall })
                .timeout(Duration::from_secs(5))
                .await;
            CallResult {
                path: Path::Local,
                result: r.map_err(|e| mesh_load::record::error_kind(&e)),
            }
        })
    })
}

fn open(connections: Option<usize>) -> OpenLoop {
    OpenLoop {
        rate: 1000.0,
        poisson: false,
        seed: 1,
        max_in_flight: 10_000,
        connections,
        stop: Stop::Calls(2000),
        pacing: Pacing::Tokio,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

async fn run_open(connections: Option<usize>) -> Recording {
    let node = node().await;
    let rec = Arc::new(Recorder::new(Instant::now()));
    model::open_loop(&calls(&node), &open(connections), &rec).await;
    let r = rec.finish(Instant::now());
    node.shutdown().await.unwrap();
    r
}

#[tokio::test(start_paused = true)]
async fn open_loop_latency_shows_a_stall_that_service_time_does_not() {
    let r = run_open(Some(1)).await;
    assert_eq!(r.ok, 2000, "every call answered: {r:?}");
    assert_eq!(r.dropped, 0);
    let lat = r.latency_all();
    let svc = r.service_all();
    let (lat_p99, svc_p99) = (
        ms(lat.value_at_quantile(0.99)),
        ms(svc.value_at_quantile(0.99)),
    );
    // ~100 calls were intended during the stall: their latencies run from
    // ~100 ms down to ~0, so the top 1% (20 calls) are all above ~80 ms.
    assert!(lat_p99 >= 70.0, "latency p99 {lat_p99} ms hides the stall");
    assert!(ms(lat.max()) >= 99.0, "latency max {}", ms(lat.max()));
    // Service time: only the stalled call itself took 100 ms.
    assert!(
        svc_p99 < 5.0,
        "service p99 {svc_p99} ms shows the client-side wait"
    );
    assert!(ms(svc.max()) >= 99.0, "the stalled call's own service time");
    assert_eq!(svc.count_between(50_000_000, u64::MAX), 1);
    // About 100 calls waited: the 5% above 1 ms.
    let waited = lat.count_between(1_000_000, u64::MAX);
    assert!((80..=120).contains(&waited), "{waited} calls waited");
}

#[tokio::test(start_paused = true)]
async fn without_a_connection_limit_calls_queue_in_the_mailbox() {
    let r = run_open(None).await;
    assert_eq!(r.ok, 2000);
    let lat = r.latency_all();
    let svc = r.service_all();
    // Sent on time, the calls wait in the mailbox: both figures see it.
    assert!(ms(lat.value_at_quantile(0.99)) >= 70.0);
    assert!(ms(svc.value_at_quantile(0.99)) >= 70.0);
}

#[tokio::test(start_paused = true)]
async fn closed_loop_hides_the_stall_and_says_closed_loop() {
    let node = node().await;
    let rec = Arc::new(Recorder::new(Instant::now()));
    let cfg = ClosedLoop {
        concurrency: 1,
        stop: Stop::Calls(2000),
    };
    model::closed_loop(&calls(&node), &cfg, &rec).await;
    let r = rec.finish(Instant::now());
    node.shutdown().await.unwrap();
    let lat = r.latency_all();
    // One worker waits out the stall: one slow sample, p99 unmoved.
    assert!(ms(lat.value_at_quantile(0.99)) < 5.0);
    assert!(ms(lat.max()) >= 99.0);

    let result = report::build(Inputs {
        env: mesh_load::env::Env::capture(),
        config: RunConfig {
            scenario: ScenarioCfg {
                kind: ScenarioKind::Hot,
                name: None,
                actors: 1,
                zipf_s: 1.1,
                fanout: 0,
                payload: 0,
                timeout: Duration::from_secs(5),
                seed: 1,
            },
            model: ModelCfg::ClosedLoop(cfg),
            target: "embedded".into(),
            seeds: vec![],
            nodes: 1,
            transport: "tcp".into(),
            thresholds: vec![],
        },
        start: SystemTime::now(),
        end: SystemTime::now(),
        recording: &r,
        thresholds: &[],
        search: None,
        activations: (0, 1),
        notes: vec![],
    });
    assert_eq!(result.summary.model, "closed-loop");
    assert!(result.summary.model_label.starts_with("closed-loop"));
    assert!(report::summary::render(&result, false).contains("closed-loop"));
    assert!(report::html::render(&result).contains("closed-loop"));
    let fortio = report::fortio::document(&result);
    assert!(fortio["RunType"].as_str().unwrap().contains("closed-loop"));
    assert_eq!(fortio["RequestedQPS"], "max");
    let smp = report::smp::result(&result);
    assert_eq!(smp["labels"]["model"], "closed-loop");
}
