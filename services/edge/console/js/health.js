// The mesh's deep health at a glance: each service, each of its
// components (start-up, peers, databases, tools), from /v1/health.

import { html } from "../vendor/preact-htm.js";
import { usePolled } from "./poll.js";
import { time } from "./format.js";

export function HealthPage() {
  const [health, error] = usePolled("/v1/health", {}, 5000);
  return html`<h1>Health</h1>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${health &&
    html`<p class=${health.ready ? "ok" : "error"} data-testid="mesh-ready">${health.ready ? "Every service is ready." : "Not every service is ready."}</p>
      <div class="services">
        ${health.services.map((service) => {
          const report = service.report;
          const ready = report && report.ready;
          return html`<section class=${`service ${ready ? "ready" : "not-ready"}`} aria-label=${service.service} data-service=${service.service}>
            <h2>${service.service} <span class="badge">${report ? (report.draining ? "draining" : ready ? "ready" : "not ready") : "unreachable"}</span></h2>
            ${service.admin_address && html`<p class="muted">${service.admin_address}</p>`}
            ${service.error && html`<p class="error">${service.error}</p>`}
            ${report &&
            html`<ul class="components">
              ${report.components.map(
                (component) => html`<li class=${component.ok ? "ok" : "failing"}>
                  <span aria-hidden="true">${component.ok ? "●" : "○"}</span> ${component.name}
                  <span class="muted">${component.required ? "required" : "optional"}${component.checked_at ? ` · checked ${time(component.checked_at)}` : ""}</span>
                  ${component.reason && html`<div class="reason">${component.reason}</div>`}
                </li>`,
              )}
            </ul>`}
          </section>`;
        })}
      </div>`}`;
}
