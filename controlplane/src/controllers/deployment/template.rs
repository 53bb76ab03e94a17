//! A Deployment's pod template as ReplicaSets carry it: the template hash
//! that names each ReplicaSet (`<deployment>-<hash>`) and labels its
//! selector, template and pods, and the new ReplicaSet made from it.

use keel_proto::api::apps::{PodTemplateSpec, REVISION_ANNOTATION, TEMPLATE_HASH_LABEL};
use keel_proto::api::{Deployment, ReplicaSet};

use crate::controllers::controller_ref;

/// A stable hash of a pod template (FNV-1a over its JSON), spelled with
/// Kubernetes' safe alphabet.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    t.metadata.labels.remove(TEMPLATE_HASH_LABEL);
    let json = serde_json::to_vec(&t).expect("a template serialises");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Whether `rs` runs the template whose hash is `hash`.
pub fn runs_template(rs: &ReplicaSet, hash: &str) -> bool {
    rs.spec
        .template
        .metadata
        .labels
        .get(TEMPLATE_HASH_LABEL)
        .is_some_and(|h| h == hash)
        || template_hash(&rs.spec.template) == hash
}

/// The new ReplicaSet for `d`'s current template.
pub fn new_replicaset(d: &Deployment, hash: &str, revision: i64, replicas: i64) -> ReplicaSet {
    let mut rs = ReplicaSet::new(
        &d.metadata.namespace,
        &format!("{}-{hash}", d.metadata.name),
    );
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    rs.metadata.labels = template.metadata.labels.clone();
    rs.metadata
        .annotations
        .insert(REVISION_ANNOTATION.into(), revision.to_string());
    rs.metadata.owner_references = vec![controller_ref(d)];
    rs.spec.selector = d.spec.selector.clone();
    rs.spec
        .selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    rs.spec.template = template;
    rs.spec.replicas = Some(replicas);
    rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
    rs
}
