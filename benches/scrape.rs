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
//! The goal: under 2% of throughput (ratio >= 0.98). On a noisy
//! 2-core machine the throughput ratio of one round swings by more than
//! that, so the bench also prints a figure noise cannot inflate much: the
//! CPU one scrape's rendering takes (`mesh::admin::prometheus::render`,
//! timed alone after the rounds), times 10 scrapes a second, as a share of
//! one core. The HTTP exchange of a scrape comes on top; its time from
//! request to last byte is printed too, but under a saturated runtime it
//! is mostly waiting for a worker, not work.

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

/// What one arm measured.
struct Arm {
    /// Calls per second.
    rate: f64,
    scrapes: u64,
    bytes: u64,
    /// Time from sending each scrape to its last byte, summed (ns): an
    /// upper bound of the CPU time the scrapes took on the node.
    scrape_ns: u64,
    /// The arm's wall time (ns).
    wall_ns: u64,
}

/// Calls per second over the workload, with `scrape` scraping `/metrics`
/// meanwhile, and what the scrapes took.
async fn run(node: &Node, ids: &Arc<Vec<String>>, scrape: bool) -> Arm {
    let done = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let scraper = scrape.then(|| {
        let url = format!("http://{}/metrics", node.admin_addr().expect("admin"));
        let (done, scrapes, bytes, busy) =
            (done.clone(), scrapes.clone(), bytes.clone(), busy.clone());
        tokio::spawn(async move {
            let client = mesh_testkit::http();
            let mut tick = tokio::time::interval(SCRAPE_EVERY);
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                let body = client
                    .get(&url)
                    .send()
                    .await
                    .expect("scrape")
                    .text()
                    .await
                    .expect("body");
                assert!(body.contains("mesh_calls_total"), "{body}");
                busy.fetch_add(sent.elapsed().as_nanos() as u64, Ordering::Relaxed);
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
    let wall = started.elapsed();
    let rate = (CALLERS * CALLS_PER_CALLER) as f64 / wall.as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = scraper {
        s.await.expect("scraper");
    }
    Arm {
        rate,
        scrapes: scrapes.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        scrape_ns: busy.load(Ordering::Relaxed),
        wall_ns: wall.as_nanos() as u64,
    }
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
        let (mut n_scrapes, mut n_bytes, mut busy_ns, mut wall_ns) = (0, 0, 0, 0);
        for round in 0..ROUNDS {
            let (p, s) = if round % 2 == 0 {
                let p = run(&node, &ids, false).await;
                (p, run(&node, &ids, true).await)
            } else {
                let s = run(&node, &ids, true).await;
                (run(&node, &ids, false).await, s)
            };
            n_scrapes += s.scrapes;
            n_bytes += s.bytes;
            busy_ns += s.scrape_ns;
            wall_ns += s.wall_ns;
            plain.push(p.rate);
            scraped.push(s.rate);
            ratios.push(s.rate / p.rate);
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
            "\n{n_scrapes} scrapes served in the measured rounds, {} bytes each on average, \
             {:.0} us each from request to last byte under load (in flight {:.1}% of the \
             scraped arms' wall time, mostly queued behind the callers)",
            n_bytes / n_scrapes.max(1),
            busy_ns as f64 / n_scrapes.max(1) as f64 / 1000.0,
            100.0 * busy_ns as f64 / wall_ns.max(1) as f64
        );
        // Rendering alone, on a quiet node.
        const RENDERS: u32 = 2_000;
        let t = Instant::now();
        for _ in 0..RENDERS {
            std::hint::black_box(mesh::admin::prometheus::render().expect("recorder"));
        }
        let per = t.elapsed() / RENDERS;
        let share = per.as_secs_f64() / SCRAPE_EVERY.as_secs_f64();
        println!(
            "rendering /metrics alone: {:.1} us per scrape = {:.3}% of one core at one scrape \
             per {SCRAPE_EVERY:?} (goal: the whole cost under 2%)",
            per.as_secs_f64() * 1e6,
            100.0 * share
        );
        node.shutdown().await.expect("shutdown");
    });
}
