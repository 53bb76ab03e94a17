//! A container's environment as Kubernetes builds it: the pod's identity
//! (`POD_NAME`, `POD_NAMESPACE`, `POD_IP`, `NODE_NAME`), Docker-links-style
//! `<SVC>_SERVICE_HOST`/`<SVC>_SERVICE_PORT` for every Service of the pod's
//! namespace, then the container's own `env` with `$(VAR)` references
//! expanded and `valueFrom.fieldRef` resolved. The same expansion applies
//! to command and args, so `--bind $(POD_IP)` works as on Kubernetes. Also
//! the image pull policy's defaults by tag.

use keel_proto::api::core::{Container, Pod, Service};
use keel_proto::api::meta::IntOrString;

/// The environment of `c` in `pod`.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    node_name: &str,
    host_ip: &str,
    services: &[Service],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    fn set_in(env: &mut Vec<(String, String)>, k: String, v: String) {
        env.retain(|(x, _)| *x != k);
        env.push((k, v));
    }
    let mut set = |k: String, v: String| set_in(&mut env, k, v);
    set(
        "PATH".into(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    set("HOSTNAME".into(), pod.metadata.name.clone());
    for s in services {
        if s.metadata.namespace != pod.metadata.namespace
            || s.spec.cluster_ip.is_empty()
            || s.spec.cluster_ip == "None"
        {
            continue;
        }
        let base = s.metadata.name.to_uppercase().replace('-', "_");
        set(format!("{base}_SERVICE_HOST"), s.spec.cluster_ip.clone());
        if let Some(p) = s.spec.ports.first() {
            set(format!("{base}_SERVICE_PORT"), p.port.to_string());
        }
        for p in &s.spec.ports {
            if !p.name.is_empty() {
                set(
                    format!(
                        "{base}_SERVICE_PORT_{}",
                        p.name.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                );
            }
        }
    }
    set("POD_NAME".into(), pod.metadata.name.clone());
    set("POD_NAMESPACE".into(), pod.metadata.namespace.clone());
    set("POD_IP".into(), pod_ip.to_string());
    set("NODE_NAME".into(), node_name.to_string());
    for e in &c.env {
        let v = match e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            Some(f) => match f.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone(),
                "metadata.namespace" => pod.metadata.namespace.clone(),
                "metadata.uid" => pod.metadata.uid.clone(),
                "spec.nodeName" => node_name.to_string(),
                "status.podIP" => pod_ip.to_string(),
                "status.hostIP" => host_ip.to_string(),
                other => {
                    tracing::warn!(var = %e.name, field = other, "unsupported fieldRef; empty value");
                    String::new()
                }
            },
            None => expand(&e.value, &env),
        };
        set_in(&mut env, e.name.clone(), v);
    }
    env
}

/// The container's `imagePullPolicy`, defaulted as Kubernetes does: an
/// image tagged `:latest` or untagged is pulled `Always`, any other
/// `IfNotPresent` (a digest counts as a tag).
pub fn pull_policy(c: &Container) -> String {
    if !c.image_pull_policy.is_empty() {
        return c.image_pull_policy.clone();
    }
    let last = c.image.rsplit('/').next().unwrap_or("");
    let tagged = c.image.contains('@') || last.split_once(':').is_some_and(|(_, t)| t != "latest");
    if tagged { "IfNotPresent" } else { "Always" }.to_string()
}

/// The container's command line: `command` then `args`, with `$(VAR)` expanded.
pub fn argv(c: &Container, env: &[(String, String)]) -> Vec<String> {
    c.command
        .iter()
        .chain(c.args.iter())
        .map(|a| expand(a, env))
        .collect()
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined reference is left as written, `$$` is a literal `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container port by name or number (probes and targetPorts).
pub fn resolve_port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::Str(s) => match s.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => c
                .ports
                .iter()
                .find(|cp| cp.name == *s)
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::api::core::{EnvVar, EnvVarSource, ObjectFieldSelector, ServicePort};

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("POD_IP".to_string(), "127.9.0.2".to_string())];
        assert_eq!(expand("--bind=$(POD_IP)", &env), "--bind=127.9.0.2");
        assert_eq!(
            expand("$(NOPE) $$(POD_IP) $x", &env),
            "$(NOPE) $(POD_IP) $x"
        );
    }

    #[test]
    fn env_has_identity_services_and_own_vars() {
        let mut pod = Pod::new("default", "web-1");
        pod.metadata.namespace = "default".into();
        let mut svc = Service::new("default", "my-web");
        svc.spec.cluster_ip = "127.96.0.7".into();
        svc.spec.ports = vec![ServicePort {
            name: "http".into(),
            port: 8080,
            ..Default::default()
        }];
        let other = Service::new("prod", "db");
        let c = Container {
            name: "c".into(),
            env: vec![
                EnvVar {
                    name: "URL".into(),
                    value: "http://$(MY_WEB_SERVICE_HOST):$(MY_WEB_SERVICE_PORT)/$(POD_NAME)"
                        .into(),
                    ..Default::default()
                },
                EnvVar {
                    name: "MY_IP".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let env = container_env(&pod, &c, "127.9.0.2", "n1", "127.9.0.1", &[svc, other]);
        let get = |k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("POD_IP"), Some("127.9.0.2"));
        assert_eq!(get("NODE_NAME"), Some("n1"));
        assert_eq!(get("MY_WEB_SERVICE_PORT_HTTP"), Some("8080"));
        assert_eq!(get("DB_SERVICE_HOST"), None);
        assert_eq!(get("URL"), Some("http://127.96.0.7:8080/web-1"));
        assert_eq!(get("MY_IP"), Some("127.9.0.2"));
    }

    #[test]
    fn pull_policy_defaults_by_tag() {
        let c = |image: &str, policy: &str| Container {
            name: "c".into(),
            image: image.into(),
            image_pull_policy: policy.into(),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("busybox", "")), "Always");
        assert_eq!(pull_policy(&c("busybox:latest", "")), "Always");
        assert_eq!(pull_policy(&c("localhost:5000/busybox", "")), "Always");
        assert_eq!(pull_policy(&c("busybox:1.36", "")), "IfNotPresent");
        assert_eq!(pull_policy(&c("localhost:5000/b:1", "")), "IfNotPresent");
        assert_eq!(pull_policy(&c("b@sha256:abc", "")), "IfNotPresent");
        assert_eq!(pull_policy(&c("busybox:latest", "Never")), "Never");
    }
}
