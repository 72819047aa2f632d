//! NATS server configuration of a region in a local deployment.

use std::path::Path;

use super::nats_auth::NatsAuth;
use super::tls::TlsFiles;

/// The largest message a region's NATS accepts: the default value limit (1 MiB) plus
/// batching room. NATS warns above 8 MiB.
pub const MAX_PAYLOAD_BYTES: usize = 8 << 20;

/// The shape of a local deployment, and every port it uses (all shifted by `offset`).
/// Region number `i` (in `--regions` order) has its NATS server on 4301 + 10i (with
/// three servers, the others on 4305 + 10i and 4306 + 10i, and their cluster routes on
/// 4307..4309 + 10i) and its backbone server on 4302..4304 + 10i; its nodes' HTTP on
/// 8301 + 10i, 8302 + 10i, ...; node j's link to server k of its region on
/// 6000 + 100i + 10(k - 1) + j; and the proxy of the link from region i to region j on
/// 5001 + 100i + 10j (routes) and 5002 + 100i + 10j (leaf connections).
#[derive(Debug, Clone)]
pub struct Layout {
    pub regions: Vec<String>,
    /// Followers per region.
    pub followers: u16,
    /// NATS servers per region: 1, or 3 (a JetStream cluster; streams and buckets in
    /// three copies).
    pub servers: u16,
    pub offset: u16,
}

/// The NATS ports of one region.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub client: u16,
    pub backbone_client: u16,
    pub backbone_cluster: u16,
    pub backbone_leaf: u16,
}

impl Layout {
    /// Whether the port layout has room for this deployment.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.followers > 8 {
            anyhow::bail!("--followers: at most 8 per region (the port layout has room for no more)");
        }
        if !matches!(self.servers, 1 | 3) {
            anyhow::bail!("--nats-servers: 1 or 3");
        }
        if self.regions.len() > 9 {
            anyhow::bail!("--regions: at most 9 regions (the port layout has room for no more)");
        }
        for r in &self.regions {
            concord_core::ids::RegionId::new(r.as_str()).map_err(|e| anyhow::anyhow!("--regions: {e}"))?;
        }
        Ok(())
    }

    pub fn ports(&self, i: usize) -> Ports {
        let base = 4301 + 10 * i as u16 + self.offset;
        Ports { client: base, backbone_client: base + 1, backbone_cluster: base + 2, backbone_leaf: base + 3 }
    }

    /// The HTTP port of node number `j` (1 the configured leader) of region `i`.
    pub fn http_port(&self, i: usize, j: u16) -> u16 {
        8300 + 10 * i as u16 + j + self.offset
    }

    /// The client port of NATS server `k` (1, 2, 3) of region `i`.
    pub fn server_port(&self, i: usize, k: u16) -> u16 {
        let p = self.ports(i);
        if k == 1 { p.client } else { p.client + 2 + k }
    }

    /// The cluster-route port of NATS server `k` of region `i` (three servers only).
    pub fn server_route_port(&self, i: usize, k: u16) -> u16 {
        self.ports(i).client + 5 + k
    }

    /// The name of NATS server `k` of `region`: `nats-REGION`, or with three servers
    /// `nats-REGION-1`, `-2`, `-3`.
    pub fn server_name(&self, region: &str, k: u16) -> String {
        if self.servers == 1 { format!("nats-{region}") } else { format!("nats-{region}-{k}") }
    }

    /// The proxy port between node number `j` of region `i` and its region's NATS
    /// server `k`.
    pub fn node_port(&self, i: usize, j: u16, k: u16) -> u16 {
        6000 + 100 * i as u16 + 10 * (k - 1) + j + self.offset
    }

    /// The proxy port of the link from region `i` to region `j`: `kind` 1 for the
    /// backbone route, 2 for the region server's fallback leaf connection.
    pub fn proxy_port(&self, i: usize, j: usize, kind: u16) -> u16 {
        5000 + 100 * i as u16 + 10 * j as u16 + kind + self.offset
    }

    /// Where such a proxy forwards to: region `j`'s backbone route or leaf port.
    pub fn proxy_target(&self, j: usize, kind: u16) -> u16 {
        let p = self.ports(j);
        if kind == 1 { p.backbone_cluster } else { p.backbone_leaf }
    }

    /// Every port of the deployment, with its region.
    pub fn all_ports(&self) -> Vec<(&str, u16)> {
        let n = self.regions.len();
        let mut out = Vec::new();
        for (i, region) in self.regions.iter().enumerate() {
            let p = self.ports(i);
            let mut ports = vec![p.backbone_client, p.backbone_cluster, p.backbone_leaf];
            for k in 1..=self.servers {
                ports.push(self.server_port(i, k));
                if self.servers > 1 {
                    ports.push(self.server_route_port(i, k));
                }
            }
            for j in 1..=1 + self.followers {
                ports.push(self.http_port(i, j));
                ports.extend((1..=self.servers).map(|k| self.node_port(i, j, k)));
            }
            ports.extend((0..n).filter(|&j| j != i).flat_map(|j| [1, 2].map(|k| self.proxy_port(i, j, k))));
            out.extend(ports.into_iter().map(|port| (region.as_str(), port)));
        }
        out
    }
}

/// A port on this machine's loopback interface.
fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The backbone server of region `i`: core NATS only, one per region, all in one
/// cluster whose routes to other regions pass through the proxies. Its routes and
/// leaf connections (the links between regions) are mutual TLS.
pub fn backbone_server(layout: &Layout, i: usize, auth: &NatsAuth, tls: &TlsFiles) -> String {
    let region = &layout.regions[i];
    let p = layout.ports(i);
    let routes: Vec<String> = (0..layout.regions.len())
        .filter(|&j| j != i)
        .map(|j| format!("    \"{}\"", auth.route_url(&local(layout.proxy_port(i, j, 1)))))
        .collect();
    let (clients, route_auth) = auth.backbone_blocks(&layout.regions);
    format!(
        r#"# Generated by `concord cluster up`: the backbone server of region {region}.
server_name: "backbone-{region}"
listen: "127.0.0.1:{client}"
ping_interval: "2s"
ping_max: 3
cluster {{
  name: "concord-backbone"
  listen: "127.0.0.1:{cluster}"
  # Unusable on purpose: peers must reach this server through the proxies only, or a
  # partition would be bypassed by gossiped addresses.
  advertise: "127.0.0.1:1"
  no_advertise: true
{route_auth}{tls}  routes: [
{routes}
  ]
}}
leafnodes {{
  listen: "127.0.0.1:{leaf}"
{tls}}}
{clients}"#,
        tls = tls.nats_block("  "),
        client = p.backbone_client,
        cluster = p.backbone_cluster,
        leaf = p.backbone_leaf,
        routes = routes.join("\n"),
    )
}

/// Region `i`'s NATS server `k`: JetStream in the region's domain (with three servers,
/// one JetStream cluster of them), a leaf node of its own backbone server first, then
/// (through the proxies) of the others, over mutual TLS.
pub fn region_server(layout: &Layout, i: usize, k: u16, store_dir: &Path, auth: &NatsAuth, tls: &TlsFiles) -> String {
    let region = &layout.regions[i];
    let p = layout.ports(i);
    let mut urls = vec![format!("\"{}\"", auth.leaf_url(region, &local(p.backbone_leaf)))];
    urls.extend(
        (0..layout.regions.len())
            .filter(|&j| j != i)
            .map(|j| format!("\"{}\"", auth.leaf_url(region, &local(layout.proxy_port(i, j, 2))))),
    );
    let client_port = layout.server_port(i, k);
    let name = layout.server_name(region, k);
    let leaf = format!(
        "leafnodes {{\n  remotes: [{{\n    urls: [{}]\n    dont_randomize: true\n    ignore_discovered_servers: true\n{}  }}]\n}}\n",
        urls.join(", "),
        tls.nats_block("    ")
    );
    let text = format!(
        r#"# Generated by `concord cluster up`: a NATS server of region {region}.
server_name: "{name}"
listen: "127.0.0.1:{client_port}"
max_payload: {MAX_PAYLOAD_BYTES}
# Notice a silent partition quickly (the default is 2 minutes).
ping_interval: "5s"
jetstream {{
  store_dir: "{store}"
  domain: "{region}"
  # fsync every message before acknowledging it: an acknowledged write is on disk.
  sync_interval: always
}}
"#,
        store = store_dir.display()
    );
    text + &leaf + &region_cluster(layout, i, k, auth) + &auth.region_authorization(region)
}

/// With three servers: the region's JetStream cluster. Its servers do not advertise
/// their client addresses, so a node reaches them only through its own proxied links
/// (and `partition NODE` cannot be bypassed).
fn region_cluster(layout: &Layout, i: usize, k: u16, auth: &NatsAuth) -> String {
    if layout.servers == 1 {
        return String::new();
    }
    let routes: Vec<String> = (1..=layout.servers)
        .filter(|&o| o != k)
        .map(|o| format!("\"{}\"", auth.route_url(&local(layout.server_route_port(i, o)))))
        .collect();
    let route_auth = auth.route_authorization();
    format!(
        "cluster {{\n  name: \"concord-{region}\"\n  listen: \"127.0.0.1:{port}\"\n  no_advertise: true\n{route_auth}  routes: [{routes}]\n}}\n",
        region = layout.regions[i],
        port = layout.server_route_port(i, k),
        routes = routes.join(", ")
    )
}
