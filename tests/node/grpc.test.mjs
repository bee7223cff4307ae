// A Node.js team's view of the orchestrator over gRPC: @grpc/grpc-js with
// the contract loaded from proto/ by @grpc/proto-loader (nothing generated),
// against the embedded mesh (the scripted demo model, no API key).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import grpc from "@grpc/grpc-js";

import {
  OBJECTIVE,
  collect,
  env,
  fieldViolations,
  orchestratorClient,
  unary,
} from "./mesh.mjs";

/** The run's events without heartbeats (sequence 0). */
function events(responses) {
  return responses.map((r) => r.event).filter((e) => e.sequence !== 0);
}

describe("gRPC (@grpc/grpc-js)", () => {
  let client;
  before(() => {
    client = orchestratorClient(env("AGENTMESH_ORCHESTRATOR"));
  });
  after(() => client?.close());

  test("Run streams the calculator call and the answer 403", async () => {
    const call = client.Run({ objective: OBJECTIVE }, new grpc.Metadata(), {
      deadline: new Date(Date.now() + 60_000),
    });
    const run = events(await collect(call));
    assert.equal(run[0].event, "run_started");
    const sequences = run.map((e) => e.sequence);
    assert.deepEqual(
      sequences,
      sequences.map((_, i) => i + 1),
      "sequences 1, 2, 3 … without gaps",
    );
    const started = run.filter((e) => e.event === "tool_call_started");
    assert.ok(
      started.some((e) => e.tool_call_started.tool === "calculator"),
      `a calculator call in ${JSON.stringify(started)}`,
    );
    const finished = run.filter((e) => e.event === "tool_call_finished");
    assert.ok(finished.length >= 1 && finished.every((e) => !e.tool_call_finished.is_error));
    const last = run.at(-1);
    assert.equal(last.event, "run_finished");
    assert.match(last.run_finished.output, /403/);
  });

  test("StreamRun resumed after_sequence sends the rest, none repeated, none missing", async () => {
    const { run_id } = await unary(client, "StartRun", { objective: OBJECTIVE });
    assert.ok(run_id);
    const full = events(await collect(client.StreamRun({ run_id })));
    assert.equal(full.at(-1).event, "run_finished");
    assert.ok(full.length > 4, `enough events to resume within: ${full.length}`);

    const n = Math.floor(full.length / 2);
    const rest = events(await collect(client.StreamRun({ run_id, after_sequence: n })));
    assert.deepEqual(
      rest.map((e) => e.sequence),
      full.filter((e) => e.sequence > n).map((e) => e.sequence),
    );
    assert.deepEqual(rest, full.slice(n), "the same events, field for field");
  });

  test("an empty objective is INVALID_ARGUMENT with a BadRequest naming the field", async () => {
    const error = await unary(client, "StartRun", { objective: "" }).then(
      () => assert.fail("an empty objective was accepted"),
      (e) => e,
    );
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT, error.details);
    assert.deepEqual(fieldViolations(error), ["objective"]);
  });

  test("an unknown run id is NOT_FOUND, unary and streaming", async () => {
    const get = await unary(client, "GetRun", { run_id: "no-such-run" }).then(
      () => assert.fail("an unknown run was found"),
      (e) => e,
    );
    assert.equal(get.code, grpc.status.NOT_FOUND, get.details);
    const stream = await collect(client.StreamRun({ run_id: "no-such-run" })).then(
      () => assert.fail("an unknown run streamed"),
      (e) => e,
    );
    assert.equal(stream.code, grpc.status.NOT_FOUND, stream.details);
  });
});
