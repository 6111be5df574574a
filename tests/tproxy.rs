//! Node traffic under a transparent proxy, for real (issue 25, point 2):
//! runs `examples/tproxy.rs` in a network and mount namespace made for it
//! (`unshare --net --mount`), where it builds one namespace per node with
//! consul-k8s's iptables rules redirecting every TCP connection into a
//! real HAProxy except the excluded cluster port, and checks that the
//! nodes (Consul observe mode, in-process mTLS) join and route calls on
//! that port with none of it through the proxy, while their Consul
//! traffic goes through it, and that a SIGKILLed node's actors move.
//!
//! Needs root, `unshare`, `ip`, `iptables`, `ss` and HAProxy (with its
//! `haproxy` user): `scripts/test.sh` installs them. The examples must be
//! built (`cargo test` builds them).

use std::time::Duration;

use mesh_testkit::procs::example_binary;
use mesh_testkit::{require, require_haproxy, within};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_traffic_bypasses_a_transparent_proxy_on_the_excluded_port() {
    require("unshare", "util-linux");
    require("ip", "iproute2");
    require("ss", "iproute2");
    require("iptables", "iptables");
    require_haproxy();
    let tproxy = example_binary("tproxy");
    // consul_mesh runs in the pods: built beside it.
    example_binary("consul_mesh");
    let script = format!(
        "mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns && ip link set lo up \
         && MESH_TPROXY_NETNS=1 exec {}",
        tproxy.display()
    );
    let out = within(
        Duration::from_secs(300),
        Command::new("unshare")
            .args(["--net", "--mount", "--", "sh", "-c", &script])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("run the example in its own namespaces");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the transparent proxy run failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("transparent proxy: every check holds"),
        "{stdout}"
    );
    // Every pod row: Consul traffic through the proxy, none of the
    // cluster's (the example checks the same; this keeps the table honest).
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| mesh-"))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells[2].parse::<u32>().is_ok_and(|n| n > 0), "{row}");
        assert_eq!((cells[3], cells[4]), ("0", "0"), "{row}");
    }
}
