//! Calls to an RPC known only by its descriptor: a tonic codec over
//! prost-reflect's `DynamicMessage`, so a route read from the contract needs
//! no code of its own.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::state::Edge;

/// Encodes requests as they are; decodes responses as `output`.
#[derive(Debug, Clone)]
struct DynamicCodec {
    output: MessageDescriptor,
}

#[derive(Debug)]
struct DynamicEncoder;

#[derive(Debug)]
struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|err| Status::internal(format!("cannot encode the request: {err}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|err| Status::internal(format!("cannot decode the answer: {err}")))
    }
}

/// The gRPC path of `method`.
fn path_of(method: &MethodDescriptor) -> Result<http::uri::PathAndQuery, Status> {
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    http::uri::PathAndQuery::try_from(path)
        .map_err(|err| Status::internal(format!("bad method path: {err}")))
}

/// Calls the unary `method` on the service that serves it.
pub(crate) async fn unary(
    edge: &Edge,
    method: &MethodDescriptor,
    request: tonic::Request<DynamicMessage>,
) -> Result<tonic::Response<DynamicMessage>, Status> {
    let limit = edge.config.server.max_message_bytes;
    let service = method.parent_service();
    let (name, channel) = edge.peers.channel_of(service.full_name()).ok_or_else(|| {
        Status::unimplemented(format!("{} is not served over HTTP", service.full_name()))
    })?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    grpc.ready().await.map_err(|err| {
        Status::unavailable(format!("the {name} service cannot be reached: {err}"))
    })?;
    let codec = DynamicCodec {
        output: method.output(),
    };
    grpc.unary(request, path_of(method)?, codec).await
}
