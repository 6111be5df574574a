//! Seeds from a DNS name (`mesh::discovery::DnsSeeds`, feature `dns`),
//! against a DNS server in this process on loopback: nodes on distinct
//! loopback addresses with one port, as pods behind a headless Service.
//! The name is resolved again every period: a node whose name answers
//! nobody yet joins once the answer names a live node.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use mesh::discovery::DnsSeeds;
use mesh::prelude::*;
use mesh_testkit::fixture::{fast, member, wait_members};
use mesh_testkit::soon;

/// A DNS server answering every A question with the addresses it holds
/// now (TTL 1 s), AAAA with none.
struct Dns {
    addr: SocketAddr,
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    queries: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    async fn start(answer: Vec<Ipv4Addr>) -> Dns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (held, count) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(query.op_code())
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true)
                    .set_response_code(ResponseCode::NoError);
                for q in query.queries() {
                    reply.add_query(q.clone());
                    if q.query_type() == RecordType::A {
                        for ip in held.lock().unwrap().iter() {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                1,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Dns {
            addr,
            answer,
            queries,
            task,
        }
    }

    fn answer(&self, ips: Vec<Ipv4Addr>) {
        *self.answer.lock().unwrap() = ips;
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const NAME: &str = "seeds.mesh.test.";

async fn node(name: &str, ip: Ipv4Addr, port: u16, dns: &Dns) -> Node {
    fast(member("dns", name))
        .capabilities(["game"])
        .listen(format!("{ip}:{port}"))
        .dns_seeds(
            DnsSeeds::new(NAME, port)
                .nameserver(dns.addr)
                .every(Duration::from_millis(100)),
        )
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_through_a_dns_name_resolved_again_every_period() {
    let (a_ip, b_ip, c_ip) = (
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    );
    // The name answers nobody who listens yet.
    let dns = Dns::start(vec![Ipv4Addr::new(127, 0, 0, 9)]).await;
    // One port for every node, as pods of one Service: the first node's.
    let probe = std::net::TcpListener::bind((a_ip, 0)).unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let a = node("a", a_ip, port, &dns).await;
    let b = node("b", b_ip, port, &dns).await;
    // Alone, both keep resolving (several queries each).
    soon(async {
        while dns.queries.load(std::sync::atomic::Ordering::SeqCst) < 6 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(a.membership().len(), 1);
    assert_eq!(b.membership().len(), 1);
    // The answer now names a: b dials it at its next resolution.
    dns.answer(vec![a_ip]);
    wait_members(&[&a, &b], 2).await;
    // A third node, when the name has moved on to b only (a's pod gone
    // from the answer, still running): it joins through b and meets a by
    // gossip.
    dns.answer(vec![b_ip]);
    let c = node("c", c_ip, port, &dns).await;
    wait_members(&[&a, &b, &c], 3).await;
    for n in [&c, &b, &a] {
        n.shutdown().await.unwrap();
    }
}

/// DNS seeds and an authoritative discovery at once are refused before
/// anything starts, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_seeds_with_a_discovery_are_refused() {
    let dns = Dns::start(Vec::new()).await;
    let err = member("dns-refused", "x")
        .capabilities(["game"])
        .listen("127.0.0.1:0")
        .discovery(mesh_testkit::fixture::Counting::default())
        .dns_seeds(DnsSeeds::new(NAME, 1).nameserver(dns.addr))
        .start()
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, StartError::InvalidSetting { setting, .. } if *setting == "NodeBuilder::dns_seeds"),
        "{err}"
    );
    assert!(err.to_string().contains("one or the other"), "{err}");
}

/// Without `nameserver`, DNS seeds read the system's configuration, and
/// hickory reads `/etc/hosts` itself: in a mount namespace of its own
/// (`unshare --mount`, as root), this test binds a hosts file naming the
/// first node over `/etc/hosts` (and a `resolv.conf` naming only
/// loopback, so no query leaves the machine), and the second node joins
/// through the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_seeds_read_the_hosts_file_through_the_system_configuration() {
    const NAME: &str = "seeds.mesh-hosts.test";
    const INSIDE: &str = "MESH_DNS_HOSTS_NS";
    const MARKER: &str = "joined through /etc/hosts";
    if std::env::var(INSIDE).is_err() {
        mesh_testkit::require("unshare", "util-linux");
        let dir = mesh_testkit::scratch("dns-hosts");
        let (hosts, resolv) = (dir.join("hosts"), dir.join("resolv.conf"));
        std::fs::write(&hosts, format!("127.0.0.1 localhost\n127.0.0.2 {NAME}\n")).unwrap();
        std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && exec {} --exact dns::dns_seeds_read_the_hosts_file_through_the_system_configuration --nocapture --test-threads 1",
            hosts.display(),
            resolv.display(),
            exe.display()
        );
        let out = mesh_testkit::within(
            Duration::from_secs(120),
            tokio::process::Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .env(INSIDE, "1")
                .output(),
        )
        .await
        .expect("run the test in a mount namespace");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "in its namespace:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains(MARKER), "{stdout}");
        return;
    }
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let probe = std::net::TcpListener::bind((a_ip, 0)).unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let start = |name: &'static str, ip: Ipv4Addr| {
        fast(member("dns-hosts", name))
            .capabilities(["game"])
            .listen(format!("{ip}:{port}"))
            .dns_seeds(DnsSeeds::new(NAME, port).every(Duration::from_millis(100)))
            .start()
    };
    let a = start("a", a_ip).await.expect("a starts");
    let b = start("b", b_ip).await.expect("b starts");
    wait_members(&[&a, &b], 2).await;
    println!("{MARKER}");
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}
