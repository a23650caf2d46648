//! The control plane's errors, and the one place they become gRPC statuses.

use thiserror::Error;

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
    /// A VNF process could not be started or signalled.
    #[error("VNF process: {0}")]
    Process(String),
}

impl From<ControlError> for tonic::Status {
    fn from(e: ControlError) -> Self {
        let msg = e.to_string();
        match e {
            ControlError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            ControlError::NotFound(_) => tonic::Status::not_found(msg),
            ControlError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            ControlError::Unimplemented(_) => tonic::Status::unimplemented(msg),
            ControlError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            ControlError::Netns(_) | ControlError::Sff(_) | ControlError::Process(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}
