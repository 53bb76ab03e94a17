//! The one parse of a Kubernetes API request (method, path, query) into what
//! it does: verb, resource, group, subresource, namespace and name. The auth
//! layer authorizes exactly this and the router executes exactly this, so the
//! two can never read a request differently.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{Method, Uri};

use crate::error::ApiError;
use crate::kinds::{self, Kind};

/// What a request does, as RBAC names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A subresource of a named object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// `.../status`: get, update, patch (the main PUT leaves status alone).
    Status,
    /// `pods/{name}/log`: get (streams the container's log).
    Log,
    /// `deployments|replicasets/{name}/scale`: get, update, patch of `autoscaling/v1` Scale.
    Scale,
    /// `pods/{name}/eviction`: create (a `policy/v1` Eviction deletes the pod; `kubectl drain`).
    Eviction,
    /// `pods/{name}/exec`: create, by GET (a WebSocket upgrade, what
    /// kubectl sends) or POST (`kubectl exec`).
    Exec,
    /// `pods/{name}/portforward`: create, by GET (a WebSocket upgrade
    /// tunnelling SPDY, what kubectl 1.31 sends) or POST (SPDY, refused).
    PortForward,
}

impl Sub {
    pub fn as_str(self) -> &'static str {
        match self {
            Sub::Status => "status",
            Sub::Log => "log",
            Sub::Scale => "scale",
            Sub::Eviction => "eviction",
            Sub::Exec => "exec",
            Sub::PortForward => "portforward",
        }
    }

    fn of(seg: &str) -> Option<Sub> {
        match seg {
            "status" => Some(Sub::Status),
            "log" => Some(Sub::Log),
            "scale" => Some(Sub::Scale),
            "eviction" => Some(Sub::Eviction),
            "exec" => Some(Sub::Exec),
            "portforward" => Some(Sub::PortForward),
            _ => None,
        }
    }

    /// Whether `kind` serves this subresource.
    pub fn served_by(self, kind: &Kind) -> bool {
        match self {
            Sub::Status => kind.has_status,
            Sub::Log | Sub::Eviction | Sub::Exec | Sub::PortForward => kind.kind == "Pod",
            Sub::Scale => kind.has_scale,
        }
    }

    /// Whether this is a stream to a pod's agent (exec, port-forward):
    /// created by GET as by POST, answered by an upgrade.
    pub fn streams(self) -> bool {
        matches!(self, Sub::Exec | Sub::PortForward)
    }

    /// The verbs this subresource answers.
    fn verbs(self) -> &'static [Verb] {
        match self {
            Sub::Status | Sub::Scale => &[Verb::Get, Verb::Update, Verb::Patch],
            Sub::Log => &[Verb::Get],
            Sub::Eviction | Sub::Exec | Sub::PortForward => &[Verb::Create],
        }
    }
}

/// What a request path addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: &'static Kind,
    /// The namespace from the path (None: all namespaces, or cluster-scoped).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Sub>,
}

impl Target {
    /// Whether this is the `status` subresource.
    pub fn status(&self) -> bool {
        self.sub == Some(Sub::Status)
    }
}

/// A parsed request under `/api` or `/apis`.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub verb: Verb,
    pub target: Target,
    pub query: HashMap<String, String>,
}

/// A request the API answers, parsed once.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A resource request.
    Resource(ApiRequest),
    /// `POST .../selfsubjectaccessreviews` (`kubectl auth can-i`): any
    /// authenticated caller may ask about itself.
    AccessReview,
    /// A discovery document (`/api`, `/apis`, `/api/v1`, `/apis/{g}`, `/apis/{g}/{v}`),
    /// readable by any authenticated caller, as Kubernetes' `system:discovery`.
    Discovery(Discovery),
}

/// The discovery documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `/api`: APIVersions.
    Core,
    /// `/apis`: APIGroupList.
    Groups,
    /// `/apis/{group}`: APIGroup.
    Group(String),
    /// `/api/v1` ("") or `/apis/{group}/{version}`: APIResourceList.
    Resources { group: String, version: String },
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource (no resource at {path})"),
    )
}

fn not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("{method} is not supported on {path}"),
    )
}

/// Parses a request. Unknown paths are 404 and known paths with a method
/// they do not answer are 405, before anything runs.
pub fn parse(method: &Method, uri: &Uri) -> Result<Parsed, ApiError> {
    let path = uri.path();
    let query: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some(p) => p.split('/').collect(),
        None => return Err(not_found(path)),
    };
    if segs.iter().any(|s| s.is_empty()) {
        return Err(not_found(path));
    }
    if path == super::access_review::PATH {
        return match *method {
            Method::POST => Ok(Parsed::AccessReview),
            _ => Err(not_allowed(method, path)),
        };
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return discovery(method, path, Discovery::Core),
        ["apis"] => return discovery(method, path, Discovery::Groups),
        ["apis", g] => {
            if !kinds::KINDS.iter().any(|k| k.group == *g) && *g != super::discovery::AUTHZ_GROUP {
                return Err(not_found(path));
            }
            return discovery(method, path, Discovery::Group(g.to_string()));
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(path)),
    };
    if (group, version) == (super::discovery::AUTHZ_GROUP, "v1") && rest.is_empty() {
        return discovery(
            method,
            path,
            Discovery::Resources {
                group: group.to_string(),
                version: version.to_string(),
            },
        );
    }
    if !kinds::KINDS
        .iter()
        .any(|k| k.group == group && k.version == version)
    {
        return Err(not_found(path));
    }
    let lookup = |plural: &str| kinds::by_path(group, plural).ok_or_else(|| not_found(path));
    let target = |kind, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let sub = match sub {
            None => None,
            Some(s) => Some(Sub::of(s).ok_or_else(|| not_found(path))?),
        };
        Ok::<_, ApiError>(Target {
            kind,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub,
        })
    };
    // A namespace is itself an object of the core group: `/api/v1/namespaces/{ns}`
    // and its status are read before `namespaces/{ns}/{plural}`.
    let core = group.is_empty();
    let t = match rest {
        [] => {
            return discovery(
                method,
                path,
                Discovery::Resources {
                    group: group.to_string(),
                    version: version.to_string(),
                },
            );
        }
        [plural] => target(lookup(plural)?, None, None, None)?,
        ["namespaces", ns] if core => target(lookup("namespaces")?, None, Some(ns), None)?,
        ["namespaces", ns, "status"] if core => {
            target(lookup("namespaces")?, None, Some(ns), Some("status"))?
        }
        ["namespaces", ns, plural] => target(lookup(plural)?, Some(ns), None, None)?,
        ["namespaces", ns, plural, name] => target(lookup(plural)?, Some(ns), Some(name), None)?,
        ["namespaces", ns, plural, name, sub] => {
            target(lookup(plural)?, Some(ns), Some(name), Some(sub))?
        }
        [plural, name] => target(lookup(plural)?, None, Some(name), None)?,
        [plural, name, sub] => target(lookup(plural)?, None, Some(name), Some(sub))?,
        _ => return Err(not_found(path)),
    };
    // Scope: a namespaced object needs its namespace; a cluster-scoped kind has none.
    if t.kind.namespaced && t.name.is_some() && t.namespace.is_none() {
        return Err(not_found(path));
    }
    if !t.kind.namespaced && t.namespace.is_some() {
        return Err(not_found(path));
    }
    if let Some(s) = t.sub
        && !s.served_by(t.kind)
    {
        return Err(not_found(path));
    }
    let watch = matches!(
        query.get("watch").map(String::as_str),
        Some("1" | "true" | "True")
    );
    let named = t.name.is_some();
    let verb = match *method {
        Method::GET | Method::POST if t.sub.is_some_and(Sub::streams) => Verb::Create,
        Method::GET | Method::HEAD if watch => Verb::Watch,
        Method::GET | Method::HEAD if named => Verb::Get,
        Method::GET | Method::HEAD => Verb::List,
        Method::POST if !named || t.sub == Some(Sub::Eviction) => Verb::Create,
        Method::PUT if named => Verb::Update,
        Method::PATCH if named => Verb::Patch,
        Method::DELETE if named => Verb::Delete,
        Method::DELETE => Verb::DeleteCollection,
        _ => return Err(not_allowed(method, path)),
    };
    // A create on the collection of a namespaced kind needs the namespace.
    if verb == Verb::Create && t.kind.namespaced && t.namespace.is_none() {
        return Err(not_allowed(method, path));
    }
    if let Some(s) = t.sub
        && !s.verbs().contains(&verb)
    {
        return Err(not_allowed(method, path));
    }
    Ok(Parsed::Resource(ApiRequest {
        verb,
        target: t,
        query,
    }))
}

fn discovery(method: &Method, path: &str, d: Discovery) -> Result<Parsed, ApiError> {
    match *method {
        Method::GET | Method::HEAD => Ok(Parsed::Discovery(d)),
        _ => Err(not_allowed(method, path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verb, and `resource|group|subresource|namespace|name`, as RBAC sees them.
    type Seen = Result<(String, String), u16>;

    fn seen(method: &str, uri: &str) -> Seen {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let u: Uri = uri.parse().unwrap();
        match parse(&m, &u) {
            Err(e) => Err(e.code),
            Ok(Parsed::Discovery(d)) => Ok(("discovery".into(), format!("{d:?}"))),
            Ok(Parsed::AccessReview) => Ok(("review".into(), String::new())),
            Ok(Parsed::Resource(r)) => {
                let t = &r.target;
                Ok((
                    r.verb.as_str().to_string(),
                    format!(
                        "{}|{}|{}|{}|{}",
                        t.kind.plural,
                        t.kind.group,
                        t.sub.map(Sub::as_str).unwrap_or(""),
                        t.namespace.as_deref().unwrap_or(""),
                        t.name.as_deref().unwrap_or("")
                    ),
                ))
            }
        }
    }

    #[test]
    fn every_verb_on_every_path_shape() {
        let ok = |v: &str, what: &str| Ok::<_, u16>((v.to_string(), what.to_string()));
        let cases: &[(&str, &str, Seen)] = &[
            // Cluster-scoped collection and object.
            ("GET", "/api/v1/nodes", ok("list", "nodes||||")),
            ("GET", "/api/v1/nodes?watch=true", ok("watch", "nodes||||")),
            ("GET", "/api/v1/nodes?watch=1", ok("watch", "nodes||||")),
            ("GET", "/api/v1/nodes?watch=false", ok("list", "nodes||||")),
            ("HEAD", "/api/v1/nodes", ok("list", "nodes||||")),
            ("POST", "/api/v1/nodes", ok("create", "nodes||||")),
            (
                "DELETE",
                "/api/v1/nodes",
                ok("deletecollection", "nodes||||"),
            ),
            ("PUT", "/api/v1/nodes", Err(405)),
            ("PATCH", "/api/v1/nodes", Err(405)),
            ("GET", "/api/v1/nodes/n1", ok("get", "nodes||||n1")),
            (
                "GET",
                "/api/v1/nodes/n1?watch=1",
                ok("watch", "nodes||||n1"),
            ),
            ("PUT", "/api/v1/nodes/n1", ok("update", "nodes||||n1")),
            ("PATCH", "/api/v1/nodes/n1", ok("patch", "nodes||||n1")),
            ("DELETE", "/api/v1/nodes/n1", ok("delete", "nodes||||n1")),
            ("POST", "/api/v1/nodes/n1", Err(405)),
            ("OPTIONS", "/api/v1/nodes/n1", Err(405)),
            (
                "GET",
                "/api/v1/nodes/n1/status",
                ok("get", "nodes||status||n1"),
            ),
            (
                "PUT",
                "/api/v1/nodes/n1/status",
                ok("update", "nodes||status||n1"),
            ),
            (
                "PATCH",
                "/api/v1/nodes/n1/status",
                ok("patch", "nodes||status||n1"),
            ),
            ("DELETE", "/api/v1/nodes/n1/status", Err(405)),
            ("POST", "/api/v1/nodes/n1/status", Err(405)),
            // Objects named like subresources are objects.
            ("GET", "/api/v1/nodes/status", ok("get", "nodes||||status")),
            (
                "DELETE",
                "/api/v1/nodes/status",
                ok("delete", "nodes||||status"),
            ),
            ("DELETE", "/api/v1/nodes/log", ok("delete", "nodes||||log")),
            // Namespaces: the object, its status, and namespaces named like resources.
            ("GET", "/api/v1/namespaces", ok("list", "namespaces||||")),
            ("POST", "/api/v1/namespaces", ok("create", "namespaces||||")),
            (
                "GET",
                "/api/v1/namespaces/prod",
                ok("get", "namespaces||||prod"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/prod",
                ok("delete", "namespaces||||prod"),
            ),
            (
                "GET",
                "/api/v1/namespaces/pods",
                ok("get", "namespaces||||pods"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/pods",
                ok("delete", "namespaces||||pods"),
            ),
            (
                "GET",
                "/api/v1/namespaces/namespaces",
                ok("get", "namespaces||||namespaces"),
            ),
            (
                "GET",
                "/api/v1/namespaces/status",
                ok("get", "namespaces||||status"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/prod/status",
                ok("update", "namespaces||status||prod"),
            ),
            (
                "GET",
                "/api/v1/namespaces/pods/pods",
                ok("list", "pods|||pods|"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/pods/pods/pods",
                ok("delete", "pods|||pods|pods"),
            ),
            (
                "GET",
                "/api/v1/namespaces/namespaces/pods",
                ok("list", "pods|||namespaces|"),
            ),
            ("GET", "/api/v1/namespaces/a/namespaces", Err(404)),
            // Namespaced: all namespaces, one namespace, an object, subresources.
            ("GET", "/api/v1/pods", ok("list", "pods||||")),
            (
                "GET",
                "/api/v1/pods?watch=true&resourceVersion=5",
                ok("watch", "pods||||"),
            ),
            ("POST", "/api/v1/pods", Err(405)),
            ("DELETE", "/api/v1/pods", ok("deletecollection", "pods||||")),
            (
                "GET",
                "/api/v1/namespaces/default/pods",
                ok("list", "pods|||default|"),
            ),
            (
                "POST",
                "/api/v1/namespaces/default/pods",
                ok("create", "pods|||default|"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods",
                ok("deletecollection", "pods|||default|"),
            ),
            ("PUT", "/api/v1/namespaces/default/pods", Err(405)),
            ("PATCH", "/api/v1/namespaces/default/pods", Err(405)),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web",
                ok("get", "pods|||default|web"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/pods/web",
                ok("update", "pods|||default|web"),
            ),
            (
                "PATCH",
                "/api/v1/namespaces/default/pods/web",
                ok("patch", "pods|||default|web"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/web",
                ok("delete", "pods|||default|web"),
            ),
            ("POST", "/api/v1/namespaces/default/pods/web", Err(405)),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web/status",
                ok("get", "pods||status|default|web"),
            ),
            (
                "PATCH",
                "/api/v1/namespaces/default/pods/web/status",
                ok("patch", "pods||status|default|web"),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web/log",
                ok("get", "pods||log|default|web"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/web/log",
                Err(405),
            ),
            ("PUT", "/api/v1/namespaces/default/pods/web/log", Err(405)),
            ("GET", "/api/v1/namespaces/default/pods/web/scale", Err(404)),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web/exec",
                ok("create", "pods||exec|default|web"),
            ),
            (
                "POST",
                "/api/v1/namespaces/default/pods/web/exec",
                ok("create", "pods||exec|default|web"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/web/exec",
                Err(405),
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/default/deployments/web/exec",
                Err(404),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web/portforward",
                ok("create", "pods||portforward|default|web"),
            ),
            (
                "POST",
                "/api/v1/namespaces/default/pods/web/portforward",
                ok("create", "pods||portforward|default|web"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/pods/web/portforward",
                Err(405),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/services/web/portforward",
                Err(404),
            ),
            // A pod named `exec` is a pod.
            (
                "GET",
                "/api/v1/namespaces/default/pods/exec",
                ok("get", "pods|||default|exec"),
            ),
            (
                "POST",
                "/api/v1/namespaces/default/pods/web/eviction",
                ok("create", "pods||eviction|default|web"),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/web/eviction",
                Err(405),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/web/eviction",
                Err(405),
            ),
            (
                "POST",
                "/api/v1/namespaces/default/pods/web/status",
                Err(405),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/eviction",
                ok("delete", "pods|||default|eviction"),
            ),
            (
                "POST",
                "/apis/apps/v1/namespaces/d/deployments/web/eviction",
                Err(404),
            ),
            // The defect: a pod named `log` is a pod, whatever the method.
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/log",
                ok("delete", "pods|||default|log"),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/log",
                ok("get", "pods|||default|log"),
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/pods/log",
                ok("update", "pods|||default|log"),
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/status",
                ok("delete", "pods|||default|status"),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/log/log",
                ok("get", "pods||log|default|log"),
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/status/status",
                ok("get", "pods||status|default|status"),
            ),
            // Groups; scale.
            (
                "GET",
                "/apis/apps/v1/deployments",
                ok("list", "deployments|apps|||"),
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/d/deployments/web/scale",
                ok("get", "deployments|apps|scale|d|web"),
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/d/deployments/web/scale",
                ok("update", "deployments|apps|scale|d|web"),
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/d/replicasets/web/scale",
                ok("patch", "replicasets|apps|scale|d|web"),
            ),
            (
                "DELETE",
                "/apis/apps/v1/namespaces/d/deployments/web/scale",
                Err(405),
            ),
            (
                "DELETE",
                "/apis/apps/v1/namespaces/d/deployments/scale",
                ok("delete", "deployments|apps||d|scale"),
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/d/deployments/web/log",
                Err(404),
            ),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
                ok("get", "leases|coordination.k8s.io||kube-node-lease|n1"),
            ),
            // Bad shapes.
            ("GET", "/api/v1/widgets", Err(404)),
            ("GET", "/api/v2/pods", Err(404)),
            ("GET", "/apis/apps/v1/pods", Err(404)),
            ("GET", "/api/v1/deployments", Err(404)),
            ("GET", "/api/v1/pods/x", Err(404)),
            ("DELETE", "/api/v1/pods/x", Err(404)),
            ("GET", "/api/v1/namespaces/a/nodes", Err(404)),
            ("GET", "/api/v1/namespaces/a/nodes/n1", Err(404)),
            ("GET", "/api/v1/namespaces/d/pods/p/status/extra", Err(404)),
            ("GET", "/api/v1/namespaces/d/pods/p/bogus", Err(404)),
            ("GET", "/api/v1/namespaces/d/pods//log", Err(404)),
            ("GET", "/api/v1/namespaces//pods", Err(404)),
            ("GET", "/api/v1/pods/", Err(404)),
            ("GET", "/apis/nope.io/v1/things", Err(404)),
            ("GET", "/apis/nope.io", Err(404)),
            ("GET", "/apiz/v1/pods", Err(404)),
            // Discovery: read only.
            ("GET", "/api", ok("discovery", "Core")),
            ("GET", "/apis", ok("discovery", "Groups")),
            ("GET", "/apis/apps", ok("discovery", "Group(\"apps\")")),
            (
                "GET",
                "/api/v1",
                ok("discovery", "Resources { group: \"\", version: \"v1\" }"),
            ),
            (
                "GET",
                "/apis/apps/v1",
                ok(
                    "discovery",
                    "Resources { group: \"apps\", version: \"v1\" }",
                ),
            ),
            ("DELETE", "/api/v1", Err(405)),
            ("POST", "/apis", Err(405)),
            ("GET", "/apis/apps/v2", Err(404)),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                ok("review", ""),
            ),
            (
                "GET",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                Err(405),
            ),
            (
                "GET",
                "/apis/authorization.k8s.io/v1",
                ok(
                    "discovery",
                    "Resources { group: \"authorization.k8s.io\", version: \"v1\" }",
                ),
            ),
            ("GET", "/apis/authorization.k8s.io/v1/foo", Err(404)),
        ];
        for (m, u, want) in cases {
            assert_eq!(&seen(m, u), want, "{m} {u}");
        }
    }
}
