#!/usr/bin/env python3
"""Writes deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

The PrometheusRule's spec.groups are alerts.yml's groups, unchanged: edit
alerts.yml, then run `python3 deploy/k8s/gen-prometheusrule.py` (needs PyYAML,
which the .venv-deploy of scripts/check-deploy has). `--check` exits 1 if
the committed file differs from what would be generated.
"""
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
OUT = HERE / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/gen-prometheusrule.py:
# do not edit; edit alerts.yml and regenerate (scripts/check-deploy checks it).
# The rules are unit-tested with `promtool test rules deploy/prometheus/alerts_test.yml`.
"""


class Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "callbridge",
            "labels": {"app.kubernetes.io/name": "callbridge"},
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER + body


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python3 deploy/k8s/gen-prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
