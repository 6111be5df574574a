//! What scraping the admin endpoint costs the call path (feature `admin`).
//!
//! `cargo bench --bench scrape --features admin` runs the local benchmark's
//! throughput workload (1 000 callers, each calling 1 000 actors in turn,
//! on one node) twice per round: once alone (the baseline), once while a
//! scraper GETs `/metrics` from the node's admin endpoint every 100 ms
//! (Prometheus' fastest usual interval is 10 s: this is 100 times harder).
//! Both arms record metrics through the same Prometheus recorder, so the
//! difference is the scraping alone. The rounds alternate the order of the
//! arms; the table gives the median and the spread of the per-round ratios.
//! The goal: under 2% of throughput (ratio >= 0.98).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh::prelude::*;

const ACTORS: usize = 1_000;
const CALLERS: usize = 1_000;
const CALLS_PER_CALLER: usize = 3_000;
const ROUNDS: usize = 7;
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

#[derive(Actor, Default)]
#[actor(capability = "bench")]
struct Counter {
    value: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Inc(i64);

#[mesh::handlers]
impl Counter {
    async fn inc(&mut self, Inc(n): Inc) -> i64 {
        self.value += n;
        self.value
    }
}

/// Calls per second over the workload, with `scrape` scraping `/metrics`
/// meanwhile; also returns how many scrapes were served and their bytes.
async fn run(node: &Node, ids: &Arc<Vec<String>>, scrape: bool) -> (f64, u64, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let scraper = scrape.then(|| {
        let url = format!("http://{}/metrics", node.admin_addr().expect("admin"));
        let (done, scrapes, bytes) = (done.clone(), scrapes.clone(), bytes.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(SCRAPE_EVERY);
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let body = client
                    .get(&url)
                    .send()
                    .await
                    .expect("scrape")
                    .text()
                    .await
                    .expect("body");
                assert!(body.contains("mesh_calls_total"), "{body}");
                scrapes.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        })
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (ids, node) = (ids.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..CALLS_PER_CALLER {
                node.call::<Counter, _>(&ids[(c + j) % ACTORS], Inc(1))
                    .await
                    .expect("call");
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller");
    }
    let rate = (CALLERS * CALLS_PER_CALLER) as f64 / started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = scraper {
        s.await.expect("scraper");
    }
    (
        rate,
        scrapes.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        assert!(
            mesh::admin::prometheus::install(),
            "the Prometheus recorder must be the first"
        );
        let node = Node::builder()
            .capabilities(["bench"])
            .actor::<Counter>()
            .default_node(false)
            .admin("127.0.0.1:0")
            .start()
            .await
            .expect("bench node starts");
        let ids: Arc<Vec<String>> = Arc::new((0..ACTORS).map(|i| format!("c{i}")).collect());
        for id in ids.iter() {
            node.call::<Counter, _>(id, Inc(0)).await.expect("warm");
        }
        // One unmeasured round of each arm: caches, the recorder's maps.
        run(&node, &ids, false).await;
        run(&node, &ids, true).await;

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "mesh admin scrape cost: {cores} cores, {CALLERS} callers x {CALLS_PER_CALLER} calls over \
             {ACTORS} actors, /metrics every {SCRAPE_EVERY:?}, {ROUNDS} rounds (arms alternate order)"
        );
        let (mut plain, mut scraped, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut n_scrapes, mut n_bytes) = (0, 0);
        for round in 0..ROUNDS {
            let (p, s) = if round % 2 == 0 {
                let p = run(&node, &ids, false).await;
                (p, run(&node, &ids, true).await)
            } else {
                let s = run(&node, &ids, true).await;
                (run(&node, &ids, false).await, s)
            };
            n_scrapes += s.1;
            n_bytes += s.2;
            plain.push(p.0);
            scraped.push(s.0);
            ratios.push(s.0 / p.0);
        }
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!();
        println!(
            "| {:<34} | {:>12} | {:>12} | {:>7} | {:>13} | goal |",
            "figure", "scraped", "no scrape", "ratio", "ratio spread"
        );
        println!("|{}|", "-".repeat(100));
        println!(
            "| {:<34} | {:>10.0}/s | {:>10.0}/s | {:>6.3}x | {:>5.3}-{:<5.3}x | >= 0.98x |",
            "calls/s, median of rounds",
            median(scraped),
            median(plain),
            median(ratios),
            lo,
            hi
        );
        println!(
            "\n{n_scrapes} scrapes served in the measured rounds, {} bytes each on average",
            n_bytes / n_scrapes.max(1)
        );
        node.shutdown().await.expect("shutdown");
    });
}
