// What the Node client tests share: where the mesh under test listens (set
// by tests/node_clients.rs, which starts it), the contract loaded from
// proto/ as any Node team would load it, and helpers to read events.

import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, "..", "..");
const PROTO = join(ROOT, "proto");
const THIRD_PARTY = join(ROOT, "third_party", "proto");

export const OBJECTIVE = "What is 17 * 23 + sqrt(144)?";

/** An environment variable the Rust driver sets; a clear failure without it. */
export function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: these tests run from the Rust suite ` +
        "(cargo nextest run -p agentmesh-tests -E 'binary(node_clients)'), which starts the mesh",
    );
  }
  return value;
}

function protoFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return protoFiles(path);
    return name.endsWith(".proto") ? [relative(PROTO, path)] : [];
  });
}

/** The orchestrator's gRPC service constructor, from the .proto files. */
export function orchestratorService() {
  const definition = protoLoader.loadSync(protoFiles(PROTO), {
    includeDirs: [PROTO, THIRD_PARTY],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition);
  return loaded.agentmesh.orchestrator.v1.OrchestratorService;
}

/** A grpc-js client of the orchestrator at `address` (plain text). */
export function orchestratorClient(address) {
  const Service = orchestratorService();
  return new Service(address, grpc.credentials.createInsecure());
}

/** Metadata presenting `key` as a bearer credential (none when empty). */
export function bearer(key) {
  const metadata = new grpc.Metadata();
  if (key) metadata.set("authorization", `Bearer ${key}`);
  return metadata;
}

/** Calls a unary method; resolves with the response or rejects with the error. */
export function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolvePromise, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolvePromise(response),
    );
  });
}

/** Every response of a server stream until it ends (rejects on an error). */
export function collect(call) {
  return new Promise((resolvePromise, reject) => {
    const responses = [];
    call.on("data", (response) => responses.push(response));
    call.on("error", reject);
    call.on("end", () => resolvePromise(responses));
  });
}

/** google.rpc.Status and google.rpc.BadRequest, from third_party/proto. */
function richErrorTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    target.startsWith("google/protobuf/") ? target : join(THIRD_PARTY, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], {
    keepCase: true,
  });
  return {
    Status: root.lookupType("google.rpc.Status"),
    BadRequest: root.lookupType("google.rpc.BadRequest"),
  };
}

/** The fields a gRPC error's `grpc-status-details-bin` names as violated. */
export function fieldViolations(error) {
  const [details] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!details) return [];
  const { Status, BadRequest } = richErrorTypes();
  const status = Status.decode(details);
  return status.details
    .filter((any) => any.type_url === "type.googleapis.com/google.rpc.BadRequest")
    .flatMap((any) => BadRequest.decode(any.value).field_violations.map((v) => v.field));
}

/** The contract's descriptor set, as the Rust driver wrote it. */
export function descriptorSetBytes() {
  return readFileSync(env("AGENTMESH_DESCRIPTOR_SET"));
}
