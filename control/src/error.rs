//! The control plane's errors, and the one place they become gRPC statuses.
//!
//! Errors keep their type up to [`tonic::Status`]: a corrupt checkpoint
//! reaches a client as `DATA_LOSS`, a missing one or a refusal by the SFF
//! as `FAILED_PRECONDITION`, each with the reason; `INTERNAL` is left for
//! what no caller can act on (a failed system call, a panicked task).

use std::sync::Arc;

use nham_sff::remote::RemoteError;
use thiserror::Error;
use tonic::Code;

use crate::runtime::RuntimeError;
use crate::vsm::database::StoreError;
use crate::vsm::SyncError;

/// Everything that can go wrong in the control plane.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The request is malformed or inconsistent; the string says why.
    #[error("{0}")]
    InvalidArgument(String),
    /// No chain (or VNF) of that name.
    #[error("{0}")]
    NotFound(String),
    /// A chain of that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but asks for something not built yet.
    #[error("{0}")]
    Unimplemented(String),
    /// The operation does not apply in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Namespaces or links could not be made.
    #[error("network setup: {0}")]
    Netns(#[from] nham_netns::NetnsError),
    /// The SFF could not start.
    #[error("SFF: {0}")]
    Sff(#[from] nham_sff::SffError),
    /// The SFF process refused a command, or could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The checkpoint protocol or a recovery failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The state database failed, or a checkpoint is corrupt or missing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file or system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The ground floor (processes, namespaces, the SFF process) failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A task of the daemon panicked (a bug: its log says more).
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// A VNF's recovery failed: why.
    #[error("the VNF could not be brought back: {0}")]
    NotRecovered(Arc<ControlError>),
    /// Something did not happen in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Asked for what is no longer kept (events to resume from).
    #[error("{0}")]
    OutOfRange(String),
    /// A VNF process could not be started or signalled.
    #[error("VNF process: {0}")]
    Process(String),
    /// A peer's request without the cluster's token.
    #[error("{0}")]
    Unauthenticated(String),
    /// A client's role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// Hosting a VNF for another host, or on another host.
    #[error(transparent)]
    Hosting(#[from] crate::cluster::hosting::HostingError),
    /// A request about a chain another host of the cluster owns: ask its
    /// `nhamd` (`FAILED_PRECONDITION`, with the owner in the status's
    /// metadata: [`OWNER_API_KEY`], [`OWNER_KEY`]).
    #[error("chain {chain:?} is owned by host {owner}: ask its nhamd at {api}")]
    OwnedElsewhere {
        /// The chain.
        chain: String,
        /// Its owner host.
        owner: String,
        /// Where the owner's API listens.
        api: String,
    },
}

/// The metadata key of a redirect (`FAILED_PRECONDITION`): where the API
/// of the host that owns the chain asked about listens (a client asks it
/// again there, with its own credentials: see [`owner_api`]).
pub const OWNER_API_KEY: &str = "nham-owner-api";
/// The metadata key of a redirect: the name of the host that owns the
/// chain.
pub const OWNER_KEY: &str = "nham-owner";

/// Where to ask again, if `status` is a redirect to a chain's owner: the
/// owner's API address.
pub fn owner_api(status: &tonic::Status) -> Option<String> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let api = status.metadata().get(OWNER_API_KEY)?.to_str().ok()?;
    (!api.is_empty()).then(|| api.to_string())
}

impl ControlError {
    /// An I/O error while doing `what`.
    pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |source| Self::Io { what, source }
    }

    /// The gRPC code a client acts on.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::FailedPrecondition(_) | Self::OwnedElsewhere { .. } => Code::FailedPrecondition,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Remote(e) => remote_code(e),
            Self::Sync(e) => sync_code(e),
            Self::Store(e) => store_code(e),
            Self::Runtime(e) => runtime_code(e),
            Self::NotRecovered(e) => e.code(),
            Self::Hosting(e) => hosting_code(e),
            Self::Netns(_)
            | Self::Sff(_)
            | Self::Io { .. }
            | Self::Panicked(_)
            | Self::Process(_) => Code::Internal,
        }
    }
}

fn remote_code(e: &RemoteError) -> Code {
    match e {
        RemoteError::Refused(_) | RemoteError::Version { .. } => Code::FailedPrecondition,
        // Ends by itself: the caller may try again.
        RemoteError::Busy(_) => Code::Unavailable,
        RemoteError::Io { .. } => Code::Unavailable,
        RemoteError::Protocol { .. } => Code::Internal,
    }
}

fn hosting_code(e: &crate::cluster::hosting::HostingError) -> Code {
    use crate::cluster::hosting::HostingError as H;
    match e {
        H::Invalid(_) => Code::InvalidArgument,
        H::Exists(_) => Code::AlreadyExists,
        H::Missing(_) => Code::NotFound,
        H::NotStaged { .. } | H::Stopped(_) => Code::FailedPrecondition,
        H::Netns { .. } | H::Checkpoint(_) => Code::Internal,
        H::Restore(e) => sync_code(e),
        H::Runtime(r) => runtime_code(r),
        H::Peer { code, .. } => *code,
        H::HostDown(_) => Code::Unavailable,
    }
}

fn runtime_code(e: &RuntimeError) -> Code {
    match e {
        // The VNF's command or the chain's interfaces: the caller's to fix.
        RuntimeError::NotStarted { .. } | RuntimeError::Interface { .. } => {
            Code::FailedPrecondition
        }
        RuntimeError::NoPid
        | RuntimeError::Netns(_)
        | RuntimeError::Io { .. }
        | RuntimeError::Signal { .. }
        | RuntimeError::Sff(_) => Code::Internal,
    }
}

fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::Corrupt { .. } => Code::DataLoss,
        StoreError::Missing { .. } => Code::FailedPrecondition,
        // A read or write that failed may work when tried again (the
        // checkpoint is kept).
        StoreError::Io { .. } => Code::Unavailable,
        StoreError::Db(_) => Code::Internal,
    }
}

fn sync_code(e: &SyncError) -> Code {
    match e {
        SyncError::Store(s) => store_code(s),
        SyncError::Sff(r) => remote_code(r),
        SyncError::Runtime(r) => runtime_code(r),
        // The newest checkpoint was unusable (corrupt or missing), and so
        // was the older one: the state is gone.
        SyncError::FallbackFailed { .. } => Code::DataLoss,
        SyncError::NotDrained { .. }
        | SyncError::LinkLoss { .. }
        | SyncError::InputDropped { .. }
        | SyncError::Retired
        | SyncError::Stopped(_)
        | SyncError::HostDown(_)
        | SyncError::Unready(_) => Code::FailedPrecondition,
        // No other host could take the copy now: try again.
        SyncError::NotCopied { .. }
        | SyncError::LandedDuringDump { .. }
        | SyncError::InTransit { .. } => Code::Unavailable,
        SyncError::Criu(_) | SyncError::Process(_) | SyncError::Ring(_) => Code::Internal,
    }
}

impl From<tokio::task::JoinError> for ControlError {
    fn from(_: tokio::task::JoinError) -> Self {
        Self::Panicked("a blocking task of the daemon")
    }
}

/// The domain of NHAM's `google.rpc.ErrorInfo` reasons.
pub const ERROR_DOMAIN: &str = "nham.v1";

impl ControlError {
    /// Why, for a program (`google.rpc.ErrorInfo.reason`, in
    /// [`ERROR_DOMAIN`]): finer than the code where a client acts
    /// differently (a corrupt checkpoint, a host down, a chain owned
    /// elsewhere).
    pub fn reason(&self) -> &'static str {
        use crate::cluster::hosting::HostingError as H;
        match self {
            Self::OwnedElsewhere { .. } => "OWNED_ELSEWHERE",
            Self::OutOfRange(_) => "EVENTS_NO_LONGER_KEPT",
            Self::NotRecovered(e) => e.reason(),
            Self::Store(StoreError::Corrupt { .. })
            | Self::Sync(SyncError::Store(StoreError::Corrupt { .. })) => "CHECKPOINT_CORRUPT",
            Self::Sync(SyncError::FallbackFailed { .. }) => "CHECKPOINTS_UNUSABLE",
            Self::Store(StoreError::Missing { .. })
            | Self::Sync(SyncError::Store(StoreError::Missing { .. })) => "CHECKPOINT_MISSING",
            Self::Runtime(RuntimeError::NotStarted { .. })
            | Self::Sync(SyncError::Runtime(RuntimeError::NotStarted { .. })) => "VNF_NOT_STARTED",
            Self::Runtime(RuntimeError::Interface { .. }) => "INTERFACE_UNUSABLE",
            Self::Remote(RemoteError::Busy(_)) => "SFF_BUSY",
            Self::Sync(SyncError::HostDown(_)) | Self::Hosting(H::HostDown(_)) => "HOST_DOWN",
            Self::Sync(SyncError::NotCopied { .. }) => "NO_CHECKPOINT_COPY",
            e => match e.code() {
                Code::InvalidArgument => "INVALID_ARGUMENT",
                Code::NotFound => "NOT_FOUND",
                Code::AlreadyExists => "ALREADY_EXISTS",
                Code::Unimplemented => "UNIMPLEMENTED",
                Code::FailedPrecondition => "FAILED_PRECONDITION",
                Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
                Code::Unauthenticated => "UNAUTHENTICATED",
                Code::PermissionDenied => "PERMISSION_DENIED",
                Code::Unavailable => "UNAVAILABLE",
                Code::DataLoss => "DATA_LOSS",
                _ => "INTERNAL",
            },
        }
    }
}

/// The request field an invalid-argument message is about: its first
/// word when that is a field path (`spec.vnfs[0].name ...`, `mechanism
/// ...`), for `google.rpc.BadRequest`.
fn field_of(message: &str) -> Option<&str> {
    /// Top-level fields a message may begin with on their own.
    const FIELDS: &[&str] = &[
        "spec",
        "name",
        "chain",
        "vnf",
        "mechanism",
        "cause",
        "fault",
        "member",
        "replicas",
        "request_id",
    ];
    let first = message.split([' ', ':']).next()?;
    let path = first
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._[]".contains(c));
    let named = first.contains(['.', '[']) || FIELDS.contains(&first);
    (path && named && first.starts_with(|c: char| c.is_ascii_lowercase())).then_some(first)
}

impl From<ControlError> for tonic::Status {
    /// The one conversion of the daemon's errors to gRPC: the code, the
    /// message, and `google.rpc` details (`tonic-types`): an `ErrorInfo`
    /// with [`ControlError::reason`], and for an invalid argument a
    /// `BadRequest` naming the field.
    fn from(e: ControlError) -> Self {
        use tonic_types::StatusExt;
        let message = e.to_string();
        let mut metadata = std::collections::HashMap::new();
        if let ControlError::OwnedElsewhere { owner, api, chain } = &e {
            metadata.insert("owner".to_string(), owner.clone());
            metadata.insert("owner_api".to_string(), api.clone());
            metadata.insert("chain".to_string(), chain.clone());
        }
        let mut details =
            tonic_types::ErrorDetails::with_error_info(e.reason(), ERROR_DOMAIN, metadata);
        if e.code() == Code::InvalidArgument {
            if let Some(field) = field_of(&message) {
                details.add_bad_request_violation(field, message.clone());
            }
        }
        let mut status = tonic::Status::with_error_details(e.code(), message, details);
        if let ControlError::OwnedElsewhere { owner, api, .. } = &e {
            // (A value that is no valid header is left out: the message
            // still names it.)
            let metadata = status.metadata_mut();
            if let Ok(v) = api.parse() {
                metadata.insert(OWNER_API_KEY, v);
            }
            if let Ok(v) = owner.parse() {
                metadata.insert(OWNER_KEY, v);
            }
        }
        status
    }
}

impl From<Arc<ControlError>> for ControlError {
    fn from(e: Arc<ControlError>) -> Self {
        Self::NotRecovered(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_a_reason_and_the_field_they_are_about() {
        use tonic_types::StatusExt;
        let s = tonic::Status::from(ControlError::InvalidArgument(
            "spec.vnfs[1].name \"A\" is not a valid name".into(),
        ));
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", ERROR_DOMAIN)
        );
        let bad = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "spec.vnfs[1].name");
        let s = tonic::Status::from(ControlError::InvalidArgument("spec is required".into()));
        assert_eq!(
            s.get_details_bad_request().unwrap().field_violations[0].field,
            "spec"
        );
        let s = tonic::Status::from(ControlError::InvalidArgument("A chain has 9 VNFs".into()));
        assert!(s.get_details_bad_request().is_none());
        let corrupt = StoreError::Corrupt {
            chain: "c".into(),
            vnf: "v".into(),
            id: 3,
            why: "checksum".into(),
        };
        let s = tonic::Status::from(ControlError::NotRecovered(Arc::new(ControlError::Store(
            corrupt,
        ))));
        assert_eq!(
            s.get_details_error_info().unwrap().reason,
            "CHECKPOINT_CORRUPT"
        );
    }

    #[test]
    fn a_corrupt_checkpoint_is_data_loss_and_a_missing_one_a_precondition() {
        let corrupt = StoreError::Corrupt {
            chain: "c".into(),
            vnf: "v".into(),
            id: 3,
            why: "checksum".into(),
        };
        let s = tonic::Status::from(ControlError::Sync(SyncError::Store(corrupt)));
        assert_eq!(s.code(), Code::DataLoss);
        assert!(
            s.message().contains("checkpoint 3 of c/v is corrupt"),
            "{s:?}"
        );
        let missing = StoreError::Missing {
            chain: "c".into(),
            vnf: "v".into(),
            id: 4,
        };
        let recovery = ControlError::NotRecovered(Arc::new(ControlError::Store(missing)));
        let s = tonic::Status::from(recovery);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("no checkpoint 4 of c/v"), "{s:?}");
        let elsewhere = tonic::Status::from(ControlError::OwnedElsewhere {
            chain: "c".into(),
            owner: "h2".into(),
            api: "https://10.0.0.2:50051".into(),
        });
        assert_eq!(elsewhere.code(), Code::FailedPrecondition);
        assert_eq!(
            owner_api(&elsewhere).as_deref(),
            Some("https://10.0.0.2:50051")
        );
        assert_eq!(elsewhere.metadata().get(OWNER_KEY).unwrap(), "h2");
        assert!(elsewhere.message().contains("owned by host h2"));
        assert_eq!(owner_api(&tonic::Status::failed_precondition("x")), None);
        let refused = ControlError::Remote(RemoteError::Refused("no hop 9".into()));
        assert_eq!(
            tonic::Status::from(refused).code(),
            Code::FailedPrecondition
        );
    }
}
