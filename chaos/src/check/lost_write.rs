//! No acknowledged write is lost: every put the cluster acknowledged must be
//! in every member's final state (after healing) with its value, and no read
//! invoked after a put's acknowledgement may miss it. A put that definitely
//! failed must not appear. Puts with unknown outcomes may go either way.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::workload::kv::{KvKind, KvOp, KvOutcome};

/// One lost or phantom write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostWrite {
    pub key: String,
    /// Where it was missed: `final state of <member>` or `read at <µs>`.
    pub seen_by: String,
    pub expected: Option<String>,
    pub found: Option<String>,
}

/// Checks `ops` against each member's final state (`(member, key → value)`),
/// considering only keys under `prefix` in the final states.
pub fn check(ops: &[KvOp], finals: &[(String, BTreeMap<String, String>)]) -> Vec<LostWrite> {
    let mut out = Vec::new();
    // key → (value, acknowledged at) of acknowledged puts; failed puts.
    let mut acked: HashMap<&str, (&str, u64)> = HashMap::new();
    let mut failed: HashMap<&str, &str> = HashMap::new();
    for o in ops.iter().filter(|o| o.kind == KvKind::Put) {
        let v = o.value.as_deref().unwrap_or("");
        match o.outcome {
            KvOutcome::Ok(_) => {
                acked.insert(&o.key, (v, o.ret));
            }
            KvOutcome::Fail => {
                failed.insert(&o.key, v);
            }
            KvOutcome::Unknown => {}
        }
    }
    for (member, state) in finals {
        let mut keys: Vec<&&str> = acked.keys().collect();
        keys.sort();
        for key in keys {
            let (v, _) = acked[*key];
            if state.get(*key).map(String::as_str) != Some(v) {
                out.push(LostWrite {
                    key: key.to_string(),
                    seen_by: format!("final state of {member}"),
                    expected: Some(v.to_string()),
                    found: state.get(*key).cloned(),
                });
            }
        }
        for (key, v) in &failed {
            if state.get(*key).map(String::as_str) == Some(*v) {
                out.push(LostWrite {
                    key: key.to_string(),
                    seen_by: format!("final state of {member} (the put had failed)"),
                    expected: None,
                    found: Some(v.to_string()),
                });
            }
        }
    }
    for o in ops.iter().filter(|o| o.kind == KvKind::Get) {
        let KvOutcome::Ok(found) = &o.outcome else {
            continue;
        };
        if let Some((v, at)) = acked.get(o.key.as_str())
            && *at < o.call
            && found.as_deref() != Some(*v)
        {
            out.push(LostWrite {
                key: o.key.clone(),
                seen_by: format!("read at {}µs by client {}", o.call, o.client),
                expected: Some(v.to_string()),
                found: found.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, v: &str, ret: u64, outcome: KvOutcome) -> KvOp {
        KvOp {
            client: 1,
            kind: KvKind::Put,
            key: key.into(),
            value: Some(v.into()),
            call: ret.saturating_sub(5),
            ret,
            outcome,
        }
    }

    fn get(key: &str, call: u64, found: Option<&str>) -> KvOp {
        KvOp {
            client: 2,
            kind: KvKind::Get,
            key: key.into(),
            value: None,
            call,
            ret: call + 5,
            outcome: KvOutcome::Ok(found.map(str::to_string)),
        }
    }

    fn state(kvs: &[(&str, &str)]) -> BTreeMap<String, String> {
        kvs.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn acknowledged_writes_everywhere_pass() {
        let ops = vec![
            put("a", "1", 10, KvOutcome::Ok(None)),
            put("b", "2", 20, KvOutcome::Unknown),
            get("a", 30, Some("1")),
            // A read overlapping the put may miss it.
            get("c", 35, None),
            put("c", "3", 40, KvOutcome::Ok(None)),
        ];
        let finals = vec![
            ("m1".to_string(), state(&[("a", "1"), ("c", "3")])),
            (
                "m2".to_string(),
                state(&[("a", "1"), ("b", "2"), ("c", "3")]),
            ),
        ];
        assert_eq!(check(&ops, &finals), vec![]);
    }

    #[test]
    fn a_missing_write_a_stale_read_and_a_failed_write_that_applied_are_caught() {
        let ops = vec![
            put("a", "1", 10, KvOutcome::Ok(None)),
            put("b", "2", 20, KvOutcome::Fail),
            get("a", 30, None),
        ];
        let finals = vec![
            ("m1".to_string(), state(&[("a", "1")])),
            ("m2".to_string(), state(&[("b", "2")])),
        ];
        let v = check(&ops, &finals);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(
            v.iter()
                .any(|l| l.key == "a" && l.seen_by == "final state of m2")
        );
        assert!(
            v.iter()
                .any(|l| l.key == "b" && l.found.as_deref() == Some("2"))
        );
        assert!(
            v.iter()
                .any(|l| l.key == "a" && l.seen_by.starts_with("read at 30"))
        );
    }
}
