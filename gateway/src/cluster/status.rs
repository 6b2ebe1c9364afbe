//! The readable form of `/api/v1/status` (`?format=text`), for an operator at a terminal.

use std::fmt::Write;

use super::View;

/// Renders `view` as aligned text.
pub fn render_text(view: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {}", view.node);
    if view.members.is_empty() {
        let _ = writeln!(out, "\nmembers: gossip off (no cluster.gossip_listen)");
    } else {
        let _ = writeln!(out, "\nmembers ({}):", view.members.len());
        for m in &view.members {
            let me = if m.is_self { "  (this node)" } else { "" };
            let _ = writeln!(out, "  {:<24} {}{me}", m.node, m.addr);
        }
    }
    let _ = writeln!(out, "\nroutes:");
    for (region, upstream) in &view.routes {
        let _ = writeln!(out, "  {region:<16} -> {upstream}");
    }
    let _ = writeln!(out, "\nupstreams:");
    let _ = writeln!(
        out,
        "  {:<20} {:<12} {:<12} {:<9} {:<9} peers",
        "upstream", "region", "kind", "local", "fleet"
    );
    for u in &view.upstreams {
        let peers: Vec<String> = u
            .peers
            .iter()
            .map(|(n, h)| format!("{n}={}", h.as_str()))
            .collect();
        let _ = writeln!(
            out,
            "  {:<20} {:<12} {:<12} {:<9} {:<9} {}",
            u.id,
            u.region,
            u.kind,
            u.local.as_str(),
            u.fleet.as_str(),
            if peers.is_empty() {
                "-".to_string()
            } else {
                peers.join(" ")
            }
        );
        if let Some(e) = &u.last_error {
            let _ = writeln!(out, "  {:<20} last probe: {e}", "");
        }
    }
    let _ = writeln!(out, "\nlast failovers (newest last):");
    if view.failovers.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for f in &view.failovers {
        let at = chrono::DateTime::from_timestamp_millis(f.at_ms as i64)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| f.at_ms.to_string());
        let _ = writeln!(out, "  {at}  {}: {} -> {}", f.region, f.from, f.to);
    }
    out
}
