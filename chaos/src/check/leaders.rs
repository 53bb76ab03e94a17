//! No two leaders in one term: a poller asks every member for its Status
//! (the etcd Maintenance response carries `leader` and `raft_term`) many
//! times a second during the run; two different leaders reported for the
//! same term is a split brain. The observations also give the timeline its
//! leader changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::status_of;
use keel_proto::pki::Credentials;

/// One member's answer at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Microseconds since the start of the run.
    pub at: u64,
    /// Index of the member asked, and its member id.
    pub member: usize,
    pub id: u64,
    pub term: u64,
    /// The leader's member id (0: none known).
    pub leader: u64,
}

/// A term in which members named different leaders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TwoLeaders {
    pub term: u64,
    /// Each leader named in that term, with the first observation naming it.
    pub leaders: Vec<Observation>,
}

/// Every term with more than one leader named.
pub fn check(obs: &[Observation]) -> Vec<TwoLeaders> {
    let mut by_term: BTreeMap<u64, BTreeMap<u64, Observation>> = BTreeMap::new();
    for o in obs.iter().filter(|o| o.leader != 0) {
        by_term
            .entry(o.term)
            .or_default()
            .entry(o.leader)
            .or_insert_with(|| o.clone());
    }
    by_term
        .into_iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(term, l)| TwoLeaders {
            term,
            leaders: l.into_values().collect(),
        })
        .collect()
}

/// The moments the cluster's leader changed, as first reported by any
/// member: (at, term, leader id), in time order.
pub fn changes(obs: &[Observation]) -> Vec<(u64, u64, u64)> {
    let mut sorted: Vec<&Observation> = obs.iter().filter(|o| o.leader != 0).collect();
    sorted.sort_by_key(|o| o.at);
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    let mut newest = (0u64, 0u64);
    for o in sorted {
        if (o.term, o.leader) != newest && o.term >= newest.0 {
            newest = (o.term, o.leader);
            out.push((o.at, o.term, o.leader));
        }
    }
    out
}

/// Polls every member's status every `every` until `stop` turns true.
/// Members are asked concurrently, so a paused one does not hold up the rest.
pub async fn poll(
    creds: Credentials,
    endpoints: Vec<String>,
    start: Instant,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<Observation> {
    let mut out = Vec::new();
    loop {
        let creds = &creds;
        let asks = endpoints.iter().enumerate().map(|(member, ep)| async move {
            status_of(creds, ep)
                .await
                .map(|(id, leader, term)| Observation {
                    at: start.elapsed().as_micros() as u64,
                    member,
                    id,
                    term,
                    leader,
                })
        });
        out.extend(futures::future::join_all(asks).await.into_iter().flatten());
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(at: u64, member: usize, term: u64, leader: u64) -> Observation {
        Observation {
            at,
            member,
            id: member as u64,
            term,
            leader,
        }
    }

    #[test]
    fn one_leader_per_term_passes_and_changes_are_listed() {
        let obs = vec![
            o(0, 0, 1, 0),
            o(1, 0, 1, 11),
            o(1, 1, 1, 11),
            o(5, 1, 2, 0),
            o(6, 1, 2, 22),
            o(7, 0, 1, 11), // a member that has not heard of term 2 yet
            o(8, 0, 2, 22),
        ];
        assert_eq!(check(&obs), vec![]);
        assert_eq!(changes(&obs), vec![(1, 1, 11), (6, 2, 22)]);
    }

    #[test]
    fn two_leaders_in_one_term_are_reported() {
        let obs = vec![
            o(1, 0, 3, 11),
            o(2, 1, 3, 11),
            o(3, 2, 3, 22),
            o(4, 0, 4, 22),
        ];
        let v = check(&obs);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].term, 3);
        assert_eq!(
            v[0].leaders.iter().map(|o| o.leader).collect::<Vec<_>>(),
            vec![11, 22]
        );
    }
}
