//! Fuzzing every RPC of every service through real gRPC, in process.
//!
//! Two properties per service, over every method the compiled contract
//! declares (so a new RPC is fuzzed the day it is added):
//!
//! * `fuzz_rpc_raw_bytes_*`: arbitrary bytes as the request message. Bytes
//!   that are not even valid protobuf wire format must answer
//!   INVALID_ARGUMENT; anything else must not answer INTERNAL, UNKNOWN or
//!   DATA_LOSS (a caller's mistake is never the service's fault).
//! * `fuzz_rpc_structured_*`: well-formed messages of the method's request
//!   type, built from its descriptor with arbitrary field values (empty,
//!   huge, control characters, `..`, negative and out-of-range numbers,
//!   unknown enum values, nested messages, repeated fields): the same rule
//!   on codes.
//!
//! After each property the service must still answer its health check. The
//! case count comes from `PROPTEST_CASES` (proptest's own variable; 256 when
//! unset, which keeps CI short); `make fuzz` raises it.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    reason = "tests fail loudly and say how much they tried"
)]

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_tests::contract::{RawCodec, Rpc, message_types, rpcs_of};
use agentmesh_tests::{InProcess, SERVICES, wait_serving};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_types::DescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use tonic::Code;
use tonic::transport::Channel;

/// How long one call may take before it counts as answered (a valid
/// request to a streaming method may stream for ever).
const CALL_DEADLINE: Duration = Duration::from_secs(5);

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The code of one call of `rpc` with `message` (None: it was let in and
/// answered, or is still streaming).
async fn call(channel: &Channel, rpc: &Rpc, message: Vec<u8>) -> Option<tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    let path = rpc.path().parse().unwrap();
    if rpc.server_streaming {
        match grpc.server_streaming(request, path, RawCodec).await {
            Err(status) => Some(status),
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                    Ok(Err(status)) => Some(status),
                    _ => None,
                }
            }
        }
    } else {
        grpc.unary(request, path, RawCodec).await.err()
    }
}

/// Codes that blame the service: a caller's input must never produce them.
fn blames_the_service(code: Code) -> bool {
    matches!(code, Code::Internal | Code::Unknown | Code::DataLoss)
}

/// Builds well-formed messages of any contract type from a seed.
struct Builder<'a> {
    types: &'a HashMap<String, DescriptorProto>,
    rng: fastrand::Rng,
}

impl Builder<'_> {
    fn message(&mut self, type_name: &str, depth: usize, out: &mut Vec<u8>) {
        match type_name {
            // Well-known types are not in the contract's descriptors.
            ".google.protobuf.Duration" | ".google.protobuf.Timestamp" => {
                encode_key(1, WireType::Varint, out);
                encode_varint(self.number(), out);
                encode_key(2, WireType::Varint, out);
                encode_varint(self.number(), out);
                return;
            }
            _ => {}
        }
        let Some(message) = self.types.get(type_name) else {
            return;
        };
        for field in &message.field {
            if !self.rng.bool() {
                continue;
            }
            let values = if field.label() == Label::Repeated {
                *self.pick(&[0, 1, 2, 5, 40])
            } else {
                1
            };
            for _ in 0..values {
                self.field(field, depth, out);
            }
        }
    }

    fn field(
        &mut self,
        field: &prost_types::FieldDescriptorProto,
        depth: usize,
        out: &mut Vec<u8>,
    ) {
        let tag = u32::try_from(field.number()).unwrap();
        match field.r#type() {
            Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                encode_key(tag, WireType::SixtyFourBit, out);
                out.extend_from_slice(&self.rng.u64(..).to_le_bytes());
            }
            Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                encode_key(tag, WireType::ThirtyTwoBit, out);
                out.extend_from_slice(&self.rng.u32(..).to_le_bytes());
            }
            Type::String => {
                let text = self.text();
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(text.len() as u64, out);
                out.extend_from_slice(text.as_bytes());
            }
            Type::Bytes => {
                let bytes: Vec<u8> = (0..self.rng.usize(..64)).map(|_| self.rng.u8(..)).collect();
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(bytes.len() as u64, out);
                out.extend_from_slice(&bytes);
            }
            Type::Message => {
                let mut nested = Vec::new();
                if depth < 4 {
                    self.message(field.type_name(), depth + 1, &mut nested);
                }
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(nested.len() as u64, out);
                out.extend_from_slice(&nested);
            }
            Type::Group => {}
            _ => {
                encode_key(tag, WireType::Varint, out);
                encode_varint(self.number(), out);
            }
        }
    }

    fn pick<'v, T>(&mut self, values: &'v [T]) -> &'v T {
        &values[self.rng.usize(..values.len())]
    }

    fn number(&mut self) -> u64 {
        match self.rng.u8(..6) {
            0 => 0,
            1 => u64::MAX, // -1 as int32/int64
            2 => u64::from(u32::MAX),
            3 => 2_000_000_000,
            4 => self.rng.u64(..10),
            _ => self.rng.u64(..),
        }
    }

    fn text(&mut self) -> String {
        match self.rng.u8(..9) {
            0 => String::new(),
            1 => "acme".to_owned(),
            2 => "../../etc/passwd".to_owned(),
            3 => "a\nb\0c\u{7}".to_owned(),
            4 => "x".repeat(100_000),
            5 => "scripted/default".to_owned(),
            6 => "\u{1F600}\u{202E}é".to_owned(),
            7 => "01890000-0000-7000-8000-000000000000".to_owned(),
            _ => (0..self.rng.usize(..24))
                .map(|_| self.rng.char(' '..='~'))
                .collect(),
        }
    }
}

/// Runs `property` over every RPC of `service`, each case one call.
fn fuzz_service(service: &str, structured: bool) {
    let (_, grpc_name) = SERVICES
        .iter()
        .find(|(name, _)| *name == service)
        .expect("a service of the mesh");
    let rpcs = rpcs_of(grpc_name);
    assert!(!rpcs.is_empty(), "{grpc_name} has no RPCs in the contract");
    let types = message_types();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = runtime.block_on(async {
        let running = InProcess::start(service).await;
        wait_serving(running.channel(), "").await;
        running
    });
    // A channel spawns its connection task on the runtime it is made in.
    let _entered = runtime.enter();
    let channel = running.channel();
    let strategy = (
        0..rpcs.len(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..256),
    );
    let mut runner = TestRunner::new(config());
    let started = std::time::Instant::now();
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let outcome = runner.run(&strategy, |(index, seed, raw)| {
        let rpc = &rpcs[index];
        let message = if structured {
            let mut builder = Builder {
                types: &types,
                rng: fastrand::Rng::with_seed(seed),
            };
            let mut message = Vec::new();
            builder.message(&rpc.input_type, 0, &mut message);
            message
        } else {
            raw
        };
        let malformed = <() as prost::Message>::decode(message.as_slice()).is_err();
        let status = runtime.block_on(call(&channel, rpc, message.clone()));
        let code = status.as_ref().map_or(Code::Ok, tonic::Status::code);
        *codes
            .lock()
            .unwrap()
            .entry(format!("{code:?}"))
            .or_default() += 1;
        prop_assert!(
            !blames_the_service(code),
            "{}: {code:?} {status:?} for {} bytes (seed {seed})",
            rpc.path(),
            message.len()
        );
        if malformed {
            prop_assert_eq!(
                code,
                Code::InvalidArgument,
                "{}: undecodable bytes {:?}: {:?}",
                rpc.path(),
                message,
                status
            );
        }
        Ok(())
    });
    // The line `make fuzz` collects, as the testkit's runner prints it.
    let kind = if structured {
        "structured"
    } else {
        "raw_bytes"
    };
    let codes = codes.into_inner().unwrap();
    eprintln!(
        "fuzz rpc_{kind}_{service}: {} executions in {:.1} s, {} findings (over {} RPCs; answered {codes:?})",
        codes.values().sum::<usize>(),
        started.elapsed().as_secs_f64(),
        usize::from(outcome.is_err()),
        rpcs.len(),
    );
    runtime.block_on(async {
        wait_serving(running.channel(), "").await;
        running.stop().await.expect("the service stops cleanly");
    });
    if let Err(failure) = outcome {
        panic!("{service}: {failure}");
    }
}

macro_rules! fuzz_targets {
    ($($service:literal => $raw:ident, $structured:ident;)*) => {$(
        #[test]
        fn $raw() {
            fuzz_service($service, false);
        }

        #[test]
        fn $structured() {
            fuzz_service($service, true);
        }
    )*};
}

fuzz_targets! {
    "orchestrator" => fuzz_rpc_raw_bytes_orchestrator, fuzz_rpc_structured_orchestrator;
    "llm-gateway" => fuzz_rpc_raw_bytes_llm_gateway, fuzz_rpc_structured_llm_gateway;
    "tool-runner" => fuzz_rpc_raw_bytes_tool_runner, fuzz_rpc_structured_tool_runner;
    "audit" => fuzz_rpc_raw_bytes_audit, fuzz_rpc_structured_audit;
    "alerting" => fuzz_rpc_raw_bytes_alerting, fuzz_rpc_structured_alerting;
}
