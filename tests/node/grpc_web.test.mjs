// A browser's view of the orchestrator: gRPC-Web (@connectrpc/connect-node's
// gRPC-Web transport, over HTTP/1.1 as a browser without HTTP/2 would call),
// the message types built at run time from the contract's descriptor set
// (@bufbuild/protobuf; nothing generated); and the CORS answers a browser
// gets before it may call at all.

import assert from "node:assert/strict";
import http from "node:http";
import { before, describe, test } from "node:test";

import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

import grpc from "@grpc/grpc-js";

import {
  OBJECTIVE,
  bearer,
  descriptorSetBytes,
  env,
  orchestratorClient,
  unary,
} from "./mesh.mjs";

const SERVICE = "agentmesh.orchestrator.v1.OrchestratorService";

let service;
before(() => {
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptorSetBytes()));
  service = registry.getService(SERVICE);
  assert.ok(service, `${SERVICE} in the descriptor set`);
});

/** A gRPC-Web client of the orchestrator at `address`. */
function webClient(address) {
  const transport = createGrpcWebTransport({ baseUrl: `http://${address}`, httpVersion: "1.1" });
  return createClient(service, transport);
}

/** A CORS preflight for a gRPC-Web call from `origin`: status and headers. */
function preflight(address, origin) {
  const [host, port] = address.split(":");
  return new Promise((resolvePromise, reject) => {
    const request = http.request(
      {
        host,
        port,
        method: "OPTIONS",
        path: `/${SERVICE}/ListAgents`,
        headers: {
          origin,
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,authorization",
        },
      },
      (response) => {
        response.resume();
        response.on("end", () =>
          resolvePromise({ status: response.statusCode, headers: response.headers }),
        );
      },
    );
    request.on("error", reject);
    request.end();
  });
}

function corsHeaders(headers) {
  return Object.keys(headers).filter((name) => name.startsWith("access-control-"));
}

describe("gRPC-Web (@connectrpc/connect-node) on the embedded mesh", () => {
  test("ListAgents answers over HTTP/1.1", async () => {
    const client = webClient(env("AGENTMESH_ORCHESTRATOR"));
    const response = await client.listAgents({}, { timeoutMs: 10_000 });
    assert.ok(response.agents.length > 0, "the demo profiles are listed");
    assert.ok(response.agents.every((agent) => agent.name));
  });

  test("a run streams to its end: the calculator call and the answer 403", async () => {
    const client = webClient(env("AGENTMESH_ORCHESTRATOR"));
    const { runId } = await client.startRun({ objective: OBJECTIVE }, { timeoutMs: 10_000 });
    const seen = [];
    for await (const response of client.streamRun({ runId }, { timeoutMs: 60_000 })) {
      if (response.event.sequence !== 0) seen.push(response.event);
    }
    assert.equal(seen[0].event.case, "runStarted");
    assert.deepEqual(
      seen.map((e) => e.sequence),
      seen.map((_, i) => i + 1),
    );
    assert.ok(
      seen.some((e) => e.event.case === "toolCallStarted" && e.event.value.tool === "calculator"),
    );
    const last = seen.at(-1);
    assert.equal(last.event.case, "runFinished");
    assert.match(last.event.value.output, /403/);

    // Resumed after half of it over gRPC-Web too: exactly the rest.
    const half = Math.floor(seen.length / 2);
    const rest = [];
    for await (const response of client.streamRun({ runId, afterSequence: half })) {
      if (response.event.sequence !== 0) rest.push(response.event.sequence);
    }
    assert.deepEqual(
      rest,
      seen.slice(half).map((e) => e.sequence),
    );
  });

  test("errors carry the same codes as over gRPC", async () => {
    const client = webClient(env("AGENTMESH_ORCHESTRATOR"));
    const empty = await client.startRun({ objective: "" }).then(
      () => assert.fail("an empty objective was accepted"),
      (e) => e,
    );
    assert.ok(empty instanceof ConnectError);
    assert.equal(empty.code, Code.InvalidArgument, empty.message);
    const unknown = await client.getRun({ runId: "no-such-run" }).then(
      () => assert.fail("an unknown run was found"),
      (e) => e,
    );
    assert.equal(unknown.code, Code.NotFound, unknown.message);
  });

  test("CORS is closed by default: a preflight gets no allow header", async () => {
    const { status, headers } = await preflight(
      env("AGENTMESH_ORCHESTRATOR"),
      "http://localhost:5173",
    );
    assert.equal(status, 403);
    assert.deepEqual(corsHeaders(headers), []);
  });
});

describe("gRPC-Web with CORS opened to one origin, and auth on", () => {
  test("the allowed origin's preflight is answered; another origin's is not", async () => {
    const address = env("AGENTMESH_CORS_ORCHESTRATOR");
    const origin = env("AGENTMESH_CORS_ORIGIN");
    const allowed = await preflight(address, origin);
    assert.ok(allowed.status >= 200 && allowed.status < 300, `status ${allowed.status}`);
    assert.equal(allowed.headers["access-control-allow-origin"], origin);
    const allowedHeaders = allowed.headers["access-control-allow-headers"];
    for (const name of ["content-type", "x-grpc-web", "x-user-agent", "authorization"]) {
      assert.ok(allowedHeaders.includes(name), `${name} in ${allowedHeaders}`);
    }
    assert.ok(Number(allowed.headers["access-control-max-age"]) > 0);

    const other = await preflight(address, "https://elsewhere.example");
    assert.equal(other.status, 403);
    assert.deepEqual(corsHeaders(other.headers), []);
  });

  test("a call without a credential is refused exactly as over gRPC", async () => {
    const address = env("AGENTMESH_CORS_ORCHESTRATOR");
    const web = await webClient(address)
      .listAgents({}, { headers: { origin: env("AGENTMESH_CORS_ORIGIN") } })
      .then(
        () => assert.fail("gRPC-Web without a credential was served"),
        (e) => e,
      );
    const grpcClient = orchestratorClient(address);
    try {
      const plain = await unary(grpcClient, "ListAgents", {}).then(
        () => assert.fail("gRPC without a credential was served"),
        (e) => e,
      );
      assert.equal(plain.code, grpc.status.UNAUTHENTICATED);
      assert.equal(web.code, Code.Unauthenticated, web.message);
      assert.equal(web.rawMessage, plain.details, "the same refusal");
    } finally {
      grpcClient.close();
    }
  });

  test("with the API key both protocols are served, CORS headers on the browser's answer", async () => {
    const address = env("AGENTMESH_CORS_ORCHESTRATOR");
    const key = env("AGENTMESH_CORS_API_KEY");
    const origin = env("AGENTMESH_CORS_ORIGIN");
    let allowOrigin;
    let exposed;
    const response = await webClient(address).listAgents(
      {},
      {
        headers: { origin, authorization: `Bearer ${key}` },
        onHeader: (headers) => {
          allowOrigin = headers.get("access-control-allow-origin");
          exposed = headers.get("access-control-expose-headers");
        },
      },
    );
    assert.ok(response.agents.length > 0);
    assert.equal(allowOrigin, origin);
    assert.match(exposed, /grpc-status-details-bin/);

    const grpcClient = orchestratorClient(address);
    try {
      const plain = await unary(grpcClient, "ListAgents", {}, bearer(key));
      assert.deepEqual(
        plain.agents.map((a) => a.name),
        response.agents.map((a) => a.name),
      );
    } finally {
      grpcClient.close();
    }
  });
});
