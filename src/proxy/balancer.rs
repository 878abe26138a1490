//! An upstream at run time: its nodes, how traffic is spread over them,
//! and how to reach them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::model::upstream::NodeAddr;
use crate::model::{Timeout, Upstream};

/// nginx's default proxy timeouts, which APISIX inherits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest round-robin schedule kept; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassHost {
    Pass,
    Node,
    Rewrite,
}

/// One upstream, built once per configuration change and shared by every
/// route that uses it.
#[derive(Debug)]
pub struct Balancer {
    /// Nodes with weight > 0.
    pub nodes: Vec<NodeAddr>,
    /// Node indices in smooth weighted round-robin order.
    schedule: Vec<usize>,
    /// Position in `schedule`; bumped by every request on every worker.
    next: AtomicUsize,
    pub https: bool,
    pub pass_host: PassHost,
    pub upstream_host: Option<String>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    /// Further nodes to try after a connection failure.
    pub retries: usize,
    /// Cap on the time spent retrying; `None` = no cap.
    pub retry_timeout: Option<Duration>,
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(DEFAULT_TIMEOUT)
}

impl Balancer {
    pub fn new(up: &Upstream) -> Balancer {
        let nodes: Vec<NodeAddr> = up
            .node_addrs()
            .into_iter()
            .filter(|n| n.weight > 0)
            .collect();
        let timeout = up.timeout.unwrap_or(Timeout {
            connect: DEFAULT_TIMEOUT.as_secs_f64(),
            send: DEFAULT_TIMEOUT.as_secs_f64(),
            read: DEFAULT_TIMEOUT.as_secs_f64(),
        });
        Balancer {
            schedule: smooth_schedule(&nodes.iter().map(|n| n.weight).collect::<Vec<_>>()),
            retries: up
                .retries
                .map_or(nodes.len().saturating_sub(1), |r| r as usize),
            nodes,
            next: AtomicUsize::new(0),
            https: up.scheme.as_deref() == Some("https"),
            pass_host: match up.pass_host.as_deref() {
                Some("node") => PassHost::Node,
                Some("rewrite") => PassHost::Rewrite,
                _ => PassHost::Pass,
            },
            upstream_host: up.upstream_host.clone(),
            connect_timeout: secs(timeout.connect),
            send_timeout: secs(timeout.send),
            read_timeout: secs(timeout.read),
            retry_timeout: up.retry_timeout.filter(|t| *t > 0.0).map(secs),
        }
    }

    /// The nodes to try for one request: the scheduled one first, then the
    /// others in turn, at most `1 + retries` in all.
    pub fn attempts(&self) -> impl Iterator<Item = &NodeAddr> {
        let n = self.nodes.len();
        let first = if self.schedule.is_empty() {
            0
        } else {
            self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len()]
        };
        (0..n.min(self.retries + 1)).map(move |i| &self.nodes[(first + i) % n])
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: with
/// weights 5,1,1 it yields a a b a c a a, never a long run of one node.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x / g)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    (0..total)
        .map(|_| {
            for (c, &x) in current.iter_mut().zip(&w) {
                *c += x as i64;
            }
            let best = (0..w.len())
                .max_by_key(|&i| (current[i], -(i as i64)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_weights_smoothly() {
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[300, 100]);
        assert_eq!(s, vec![0, 0, 1, 0]);
        assert!(smooth_schedule(&[]).is_empty());
        let big = smooth_schedule(&[1_000_000, 1]);
        assert!(big.len() <= 4097 && big.contains(&1));
    }

    #[test]
    fn attempts_rotate_and_respect_retries() {
        let up: Upstream = serde_json::from_value(serde_json::json!({
            "nodes": {"a:1": 1, "b:1": 1, "c:1": 0}, "retries": 1
        }))
        .unwrap();
        let b = Balancer::new(&up);
        assert_eq!(b.nodes.len(), 2);
        let first: Vec<_> = b.attempts().map(|n| n.authority.clone()).collect();
        let second: Vec<_> = b.attempts().map(|n| n.authority.clone()).collect();
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], second[0]);
    }
}
