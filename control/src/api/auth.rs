//! Who may call what, over mutual TLS: each client certificate's names
//! (its subject's common name and its DNS subject alternative names) map
//! to a [`Role`] from the configuration's `[roles]` table; a call the role
//! does not allow is `PERMISSION_DENIED`, naming the call and the client.
//!
//! - `viewer`: reads only (`GetChain`, `ListChains`, `WatchEvents`,
//!   `GetStats`, `ListHosts`, `GetVersion`, health, reflection).
//! - `operator`: everything (creating a chain runs its VNFs' commands as
//!   root).
//!
//! The decision ([`Roles::decide`]) is pure; [`Authorize`] is the thin
//! tower layer around the API's services that reads the certificate the
//! TLS handshake verified and the method's path. Over the Unix socket
//! there is no certificate: its file mode (0660, root and the configured
//! group) is the authorization, and every caller is an operator.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::error::ControlError;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Everything.
    Operator,
}

/// The calls a viewer may make (full gRPC paths, or a service's prefix
/// ending in `/`).
const VIEWER_CALLS: &[&str] = &[
    "/nham.v1.ChainService/GetChain",
    "/nham.v1.ChainService/ListChains",
    "/nham.v1.EventService/WatchEvents",
    "/nham.v1.EventService/GetStats",
    "/nham.v1.HostService/ListHosts",
    "/nham.v1.HostService/GetVersion",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
];

/// The role call `path` (`/package.Service/Method`) needs.
pub fn role_needed(path: &str) -> Role {
    let read = VIEWER_CALLS.iter().any(|c| match c.strip_suffix('/') {
        Some(service) => path
            .strip_prefix(service)
            .is_some_and(|m| m.starts_with('/')),
        None => path == *c,
    });
    if read {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// The `[roles]` table: client certificate names per role.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Names that may do everything.
    #[serde(default)]
    pub operators: BTreeSet<String>,
    /// Names that may read.
    #[serde(default)]
    pub viewers: BTreeSet<String>,
}

impl Roles {
    /// The role of a client whose certificate carries `names` (the
    /// highest any of them has), if any.
    pub fn role_of<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        names
            .into_iter()
            .filter_map(|n| {
                if self.operators.contains(n) {
                    Some(Role::Operator)
                } else if self.viewers.contains(n) {
                    Some(Role::Viewer)
                } else {
                    None
                }
            })
            .max()
    }

    /// Whether a client with certificate names `names` may make call
    /// `path`; if not, why (for `PERMISSION_DENIED`).
    pub fn decide(&self, path: &str, names: &[String]) -> Result<(), ControlError> {
        let needed = role_needed(path);
        let who = if names.is_empty() {
            "a client without a certificate name".to_string()
        } else {
            format!("client {}", names.join("/"))
        };
        match self.role_of(names.iter().map(String::as_str)) {
            Some(role) if role >= needed => Ok(()),
            Some(_) => Err(ControlError::PermissionDenied(format!(
                "{path} needs the operator role; {who} is a viewer"
            ))),
            None => Err(ControlError::PermissionDenied(format!(
                "{who} has no role (add its certificate's name to [roles] operators or viewers)"
            ))),
        }
    }
}

/// The names a client certificate (DER) carries: its subject's common
/// names, then its DNS subject alternative names.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = (cert.subject().iter_common_name())
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// The tower layer of [`Authorize`]: with roles (mutual TLS and a
/// `[roles]` table), each call is checked; without, every call the
/// transport let in (the Unix socket's file mode, or a certificate the
/// client CA signed) is allowed.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeLayer(pub Option<Arc<Roles>>);

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            roles: self.0.clone(),
        }
    }
}

/// Refuses a call its client's role does not allow (see the module's
/// doc), before it reaches a service.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    roles: Option<Arc<Roles>>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(roles) = &self.roles else {
            return Box::pin(self.inner.call(request));
        };
        // (The client's own certificate comes first in its chain.)
        let names = (request.extensions())
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().map(|c| certificate_names(c)))
            .unwrap_or_default();
        match roles.decide(request.uri().path(), &names) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(e) => {
                tracing::warn!("refused: {e}");
                let status = tonic::Status::from(e);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles {
            operators: ["orchestrator".to_string()].into(),
            viewers: ["grafana".to_string(), "both".to_string()].into(),
        }
    }

    #[test]
    fn viewers_read_and_operators_do_everything() {
        let r = roles();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for path in [
            "/nham.v1.ChainService/ListChains",
            "/nham.v1.EventService/WatchEvents",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(r.decide(path, &names(&["grafana"])).is_ok(), "{path}");
            assert!(r.decide(path, &names(&["orchestrator"])).is_ok(), "{path}");
        }
        for path in [
            "/nham.v1.ChainService/CreateChain",
            "/nham.v1.VnfService/InjectFault",
            "/nham.v1.ChainService/GetChainX",
            "/grpc.health.v1.HealthX/Check",
        ] {
            let e = r.decide(path, &names(&["grafana"])).unwrap_err();
            assert_eq!(tonic::Status::from(e).code(), tonic::Code::PermissionDenied);
            assert!(r.decide(path, &names(&["orchestrator"])).is_ok(), "{path}");
        }
        // The highest role of any name; no name known: nothing.
        assert!(r
            .decide(
                "/nham.v1.ChainService/DeleteChain",
                &names(&["both", "orchestrator"])
            )
            .is_ok());
        let e = r
            .decide("/nham.v1.ChainService/ListChains", &names(&["stranger"]))
            .unwrap_err();
        assert!(e.to_string().contains("client stranger has no role"), "{e}");
        assert!(r.decide("/nham.v1.ChainService/ListChains", &[]).is_err());
    }
}
