//! The codec of the generated servers: tonic's prost codec, except that a
//! request that does not decode (bad wire data, invalid UTF-8 in a string
//! field) answers INVALID_ARGUMENT.
//!
//! tonic maps every protobuf decode error to INTERNAL, which gRPC reserves
//! for the server's own broken invariants; a caller's undecodable request
//! is its own mistake and must not count as the server's errors. Clients
//! ([`ResponseCodec`]) keep tonic's errors: a response they cannot decode
//! is the server's fault.
//!
//! Responses are encoded, and clients decode them, in buffers that start at
//! [`BUFFER_BYTES`] instead of tonic's 8 KiB. tonic allocates them for every
//! call, up front, and a stream holds them while it is open: a run streams
//! its events to its caller and its model's tokens from the gateway, so
//! 10,000 open runs held 160 MiB of buffers in the orchestrator alone for
//! messages of a few hundred bytes. A larger message grows its buffer as
//! it needs. Servers decode requests in tonic's buffers.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The longest part of a decode error kept in the message.
const MAX_ERROR_BYTES: usize = 256;

/// Each call's encoding and decoding buffers start this large. Most
/// messages (events, tokens, tool calls) fit.
pub const BUFFER_BYTES: usize = 1024;

/// Encoded messages of a stream sent together when ready at once: tonic's.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// A server's codec: encodes responses `T` as tonic does, decodes requests
/// `U` with INVALID_ARGUMENT on failure.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// A client's codec: tonic's prost codec (a response that does not decode
/// is INTERNAL), with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct ResponseCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ResponseCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ResponseCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffer_settings())
    }
}

/// Decodes a request message `U`.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|err| invalid_request(&err))
    }

    // tonic's: a server decodes a call's request once (a streaming request
    // aside) and drops its buffer then, so a small one would save nothing
    // while the call stays open, and a large request would grow it more often.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// INVALID_ARGUMENT for a request that does not decode.
pub fn invalid_request(err: &prost::DecodeError) -> Status {
    let mut reason = err.to_string();
    if reason.len() > MAX_ERROR_BYTES {
        let end = (0..=MAX_ERROR_BYTES)
            .rev()
            .find(|at| reason.is_char_boundary(*at))
            .unwrap_or(0);
        reason.truncate(end);
    }
    Status::invalid_argument(format!(
        "the request is not a valid protobuf message of this method: {reason}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_invalid_argument() {
        // Field 1 (string) of length 2 holding invalid UTF-8.
        let bytes = [0x0a, 0x02, 0xff, 0xfe];
        let err = crate::orchestrator::v1::GetRunRequest::decode(&bytes[..]).unwrap_err();
        let status = invalid_request(&err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("the request is not a valid protobuf")
        );
    }
}
