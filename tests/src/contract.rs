//! The compiled contract as tests see it: every RPC of a service (from the
//! descriptors, so a new RPC cannot escape a test that walks them), the
//! message types of its requests, and a codec that sends raw bytes.

use std::collections::HashMap;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Status;

/// One RPC as the descriptors declare it.
#[derive(Debug, Clone)]
pub struct Rpc {
    /// The gRPC service, e.g. `agentmesh.audit.v1.AuditService`.
    pub service: String,
    /// The method name.
    pub method: String,
    /// The request type's full name, with a leading dot.
    pub input_type: String,
    /// Whether the server answers with a stream.
    pub server_streaming: bool,
}

impl Rpc {
    /// The HTTP/2 path of the method.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptors decode")
}

/// Every RPC of `service` in the compiled contract.
///
/// # Panics
/// On a client-streaming RPC: no test here knows how to call one.
pub fn rpcs_of(service: &str) -> Vec<Rpc> {
    let mut rpcs = Vec::new();
    for file in &descriptors().file {
        for declared in &file.service {
            let name = format!("{}.{}", file.package(), declared.name());
            if name != service {
                continue;
            }
            for method in &declared.method {
                assert!(
                    !method.client_streaming(),
                    "{name}/{} streams from the client: teach the tests to call it",
                    method.name()
                );
                rpcs.push(Rpc {
                    service: name.clone(),
                    method: method.name().to_owned(),
                    input_type: method.input_type().to_owned(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    rpcs
}

/// Every message type of the contract by full name (leading dot), nested
/// ones included.
pub fn message_types() -> HashMap<String, DescriptorProto> {
    fn add(prefix: &str, message: &DescriptorProto, into: &mut HashMap<String, DescriptorProto>) {
        let name = format!("{prefix}.{}", message.name());
        for nested in &message.nested_type {
            add(&name, nested, into);
        }
        into.insert(name, message.clone());
    }
    let mut types = HashMap::new();
    for file in &descriptors().file {
        for message in &file.message_type {
            add(&format!(".{}", file.package()), message, &mut types);
        }
    }
    types
}

/// Sends and receives raw message bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}
