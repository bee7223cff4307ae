#!/usr/bin/env python3
"""Writes the CRD schemas of this directory from the upstream CRD files.

    python3 deploy/schemas/vendor.py ISTIO_CRDS PROM_DIR

ISTIO_CRDS is istio/istio's manifests/charts/base/files/crd-all.gen.yaml;
PROM_DIR is prometheus-operator's example/prometheus-operator-crd/. Keeps
only the kinds and versions the manifests use (KEEP) and drops the
`description` texts and printer columns, which do not take part in
validation: the files stay small enough to review. tools/deploy/check.py
validates custom resources against `openAPIV3Schema` of these files.
"""

import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent

# (group, kind) -> versions kept. Istio objects are written against the
# stable v1 APIs only; a manifest on v1beta1/v1alpha3 is then reported as an
# unknown kind instead of being validated against an older schema.
KEEP = {
    ("networking.istio.io", "DestinationRule"): {"v1"},
    ("networking.istio.io", "Gateway"): {"v1"},
    ("networking.istio.io", "ServiceEntry"): {"v1"},
    ("networking.istio.io", "Sidecar"): {"v1"},
    ("networking.istio.io", "VirtualService"): {"v1"},
    ("security.istio.io", "AuthorizationPolicy"): {"v1"},
    ("security.istio.io", "PeerAuthentication"): {"v1"},
    ("security.istio.io", "RequestAuthentication"): {"v1"},
    ("telemetry.istio.io", "Telemetry"): {"v1"},
    ("monitoring.coreos.com", "ServiceMonitor"): {"v1"},
    ("monitoring.coreos.com", "PodMonitor"): {"v1"},
    ("monitoring.coreos.com", "PrometheusRule"): {"v1"},
}


def _strip(node, names=False):
    """`node` without `description` texts; under `properties` (names=True)
    the keys are field names, and a field may be called `description`."""
    if isinstance(node, dict):
        return {
            k: _strip(v, names=(k == "properties" and not names))
            for k, v in node.items()
            if names or k != "description"
        }
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _trim(crds):
    kept = []
    for crd in crds:
        spec = crd["spec"]
        versions = KEEP.get((spec["group"], spec["names"]["kind"]))
        if not versions:
            continue
        spec["versions"] = [
            {k: (_strip(v) if k == "schema" else v) for k, v in version.items() if k != "additionalPrinterColumns"}
            for version in spec["versions"]
            if version["name"] in versions
        ]
        kept.append(crd)
    return kept


def _load(path):
    return [doc for doc in yaml.safe_load_all(pathlib.Path(path).read_text()) if doc]


def _write(name, source, crds):
    header = f"# Trimmed by deploy/schemas/vendor.py from {source}: edit that, not this.\n"
    text = yaml.safe_dump_all(crds, sort_keys=False, width=100)
    (HERE / name).write_text(header + text)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    istio, prom = sys.argv[1], pathlib.Path(sys.argv[2])
    _write("istio-crds.yaml", "istio/istio manifests/charts/base/files/crd-all.gen.yaml", _trim(_load(istio)))
    for kind in ("servicemonitors", "podmonitors", "prometheusrules"):
        name = f"prometheus-operator-{kind}.yaml"
        source = f"prometheus-operator/prometheus-operator example/prometheus-operator-crd/monitoring.coreos.com_{kind}.yaml"
        _write(name, source, _trim(_load(prom / name)))


if __name__ == "__main__":
    main()
