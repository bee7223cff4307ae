//! The agentmesh public contract, compiled from `proto/agentmesh/<area>/v1`.
//!
//! `build.rs` compiles the `.proto` files with protox (no system `protoc`) and
//! tonic-prost-build, so each area below holds the prost messages plus the tonic
//! client (`*_client`) and server (`*_server`) for its service. Servers
//! decode requests with [`codec::RequestCodec`] (an undecodable request is
//! INVALID_ARGUMENT); clients with tonic's prost codec. The same build
//! writes [`FILE_DESCRIPTOR_SET`], which the service kit registers with gRPC
//! reflection so `grpcurl list` and `describe` work without proto files.
//!
//! Modules mirror the proto packages without the leading `agentmesh`:
//! `agentmesh.orchestrator.v1` is [`orchestrator::v1`], and so on.
//!
//! The crate follows the workspace lints; each generated module expects only
//! the lints that fire on code we do not write (tonic's `#[allow]`s, and a
//! oneof whose variant sizes the contract decides).

/// `agentmesh.orchestrator.v1`: runs, their events, agent profiles.
pub mod orchestrator {
    /// Version 1 of the orchestrator API.
    #[expect(clippy::allow_attributes, reason = "generated code")]
    pub mod v1 {
        tonic::include_proto!("agentmesh.orchestrator.v1");
        include!(concat!(
            env!("OUT_DIR"),
            "/clients/agentmesh.orchestrator.v1.rs"
        ));
    }
}

/// `agentmesh.llm.v1`: the LLM gateway (generation, streaming, model routes).
pub mod llm {
    /// Version 1 of the LLM gateway API.
    #[expect(clippy::allow_attributes, reason = "generated code")]
    pub mod v1 {
        tonic::include_proto!("agentmesh.llm.v1");
        include!(concat!(env!("OUT_DIR"), "/clients/agentmesh.llm.v1.rs"));
    }
}

/// `agentmesh.tools.v1`: the tool runner (registry and execution).
pub mod tools {
    /// Version 1 of the tool runner API.
    #[expect(clippy::allow_attributes, reason = "generated code")]
    pub mod v1 {
        tonic::include_proto!("agentmesh.tools.v1");
        include!(concat!(env!("OUT_DIR"), "/clients/agentmesh.tools.v1.rs"));
    }
}

/// `agentmesh.audit.v1`: the append-only, tamper-evident audit log.
pub mod audit {
    /// Version 1 of the audit API.
    #[expect(
        clippy::allow_attributes,
        clippy::large_enum_variant,
        reason = "generated code"
    )]
    pub mod v1 {
        tonic::include_proto!("agentmesh.audit.v1");
        include!(concat!(env!("OUT_DIR"), "/clients/agentmesh.audit.v1.rs"));
    }
}

/// `agentmesh.alerting.v1`: alert rules, alerts, silences and receivers.
pub mod alerting {
    /// Version 1 of the alerting API.
    #[expect(clippy::allow_attributes, reason = "generated code")]
    pub mod v1 {
        tonic::include_proto!("agentmesh.alerting.v1");
        include!(concat!(
            env!("OUT_DIR"),
            "/clients/agentmesh.alerting.v1.rs"
        ));
    }
}

pub mod codec;

/// The encoded `google.protobuf.FileDescriptorSet` of every agentmesh proto file
/// and its imports, with source info (comments), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agentmesh_descriptor.bin"));
